# attacks: every process it may signal - kill(-1) would hit other workers' programs if they shared its uid.
# expect: killed failed
import os
import signal

os.kill(-1, signal.SIGKILL)
os.kill(os.getpid(), signal.SIGKILL)
