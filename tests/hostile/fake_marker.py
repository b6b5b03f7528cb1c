# attacks: the pass marker - read stdin, guess markers, print them and write them to every fd, exit 0.
# expect: failed
import os
import re
import sys

guesses = ["passed", "PASSED", "OK", "__PASS__", "SANDBOX_PASS", "R", "0" * 32]
stolen = sys.stdin.read()  # the launcher must have replaced stdin with /dev/null
for path in ("/proc/self/cmdline", "/proc/self/environ"):
    try:
        with open(path, "rb") as fh:
            stolen += fh.read().decode("latin-1")
    except OSError:
        pass
guesses += re.findall(r"[0-9a-f]{16,64}", stolen)
for guess in guesses:
    print(guess)
    print(guess, file=sys.stderr)
sys.stdout.flush()
for fd in range(3, 256):
    for guess in guesses:
        try:
            os.write(fd, guess.encode())
        except OSError:
            break
os._exit(0)
