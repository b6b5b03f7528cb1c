# attacks: the pass criterion - SystemExit(0) (and the site builtins exit/quit) raised from nested code.
# expect: failed
def check(candidate):
    try:
        assert candidate() == 2
    finally:
        raise SystemExit(0)


check(lambda: 1)
