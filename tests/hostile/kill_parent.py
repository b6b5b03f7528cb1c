# attacks: the harness - SIGKILL the parent process and its whole process group.
# expect: failed killed
import os
import signal

parent = os.getppid()
try:
    os.killpg(os.getpgid(parent), signal.SIGKILL)
except OSError:
    pass
os.kill(parent, signal.SIGKILL)
assert True
