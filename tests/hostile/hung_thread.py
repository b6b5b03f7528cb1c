# attacks: harness liveness - the asserts pass, but a non-daemon thread keeps the program from ending.
# expect: timeout
import threading

threading.Thread(target=threading.Event().wait).start()
assert 1 + 1 == 2
