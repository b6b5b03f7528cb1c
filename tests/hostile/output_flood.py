# attacks: harness memory and disk - print gigabytes to stdout and stderr.
# expect: failed timeout killed
import sys

chunk = "x" * 2**20
for _ in range(8 * 1024):
    sys.stdout.write(chunk)
    sys.stderr.write(chunk)
