# attacks: the C stack / memory - unbounded recursion with the recursion limit lifted.
# expect: failed killed timeout
import sys

sys.setrecursionlimit(10**9)


def down(n):
    return down(n + 1) + 1


down(0)
assert True
