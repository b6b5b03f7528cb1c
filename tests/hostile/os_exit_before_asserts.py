# attacks: the pass criterion - os._exit(0) skips every handler and exits with status 0.
# expect: failed
import os

os._exit(0)
assert 1 == 2
