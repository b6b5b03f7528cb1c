# attacks: disk/shared state after the run - leave files in the world-writable temp dirs and /dev/shm.
# expect: failed
import os
import sys

for directory in ("/tmp", "/var/tmp", "/dev/shm"):
    try:
        path = os.path.join(directory, f"sandbox-litter-{os.getpid()}")
        os.makedirs(path)
        with open(os.path.join(path, "junk"), "wb") as fh:
            fh.write(b"x" * 4096)
        print(f"LITTER={path}")
    except OSError:
        pass
sys.stdout.flush()
os._exit(0)
