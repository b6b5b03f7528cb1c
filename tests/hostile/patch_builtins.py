# attacks: the failure path - swap AssertionError, excepthooks and atexit so a failed assert exits 0.
# expect: failed
import atexit
import builtins
import os
import sys
import threading


class Harmless(Exception):
    pass


builtins.AssertionError = Harmless
builtins.Exception = Harmless
sys.excepthook = lambda *args: os._exit(0)
threading.excepthook = lambda *args: os._exit(0)
atexit.register(os._exit, 0)
os._exit = lambda code=0: None
sys.exit = lambda code=0: None
assert 1 == 2
