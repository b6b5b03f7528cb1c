# attacks: the host's process table and CPUs - every process forks forever and never exits.
# expect: timeout
import os

while True:
    try:
        os.fork()
    except OSError:
        pass
