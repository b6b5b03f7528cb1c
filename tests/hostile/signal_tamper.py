# attacks: the timeout - ignore every catchable signal, re-arm timers, and spin.
# expect: timeout
import signal

for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM, signal.SIGXCPU, signal.SIGVTALRM):
    signal.signal(sig, signal.SIG_IGN)
signal.setitimer(signal.ITIMER_REAL, 0.01, 0.01)
signal.setitimer(signal.ITIMER_VIRTUAL, 0.01, 0.01)
while True:
    pass
