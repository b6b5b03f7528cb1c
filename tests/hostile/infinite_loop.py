# attacks: the wall clock - a busy loop that never returns must be killed at the timeout.
# expect: timeout
while True:
    pass
