# attacks: the pass criterion - sys.exit(0) before the asserts gives exit status 0.
# expect: failed
import sys


def solution():
    return 1


sys.exit(0)
assert solution() == 2
