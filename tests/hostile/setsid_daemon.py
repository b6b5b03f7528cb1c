# attacks: containment after the run - leave a daemon in its own session that ignores SIGTERM/SIGHUP.
# expect: failed
import os
import signal
import time

if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        os.write(1, f"DAEMON_PID={os.getpid()}\n".encode())
        while True:
            time.sleep(0.05)
    os._exit(0)
time.sleep(0.3)
os._exit(0)
