# attacks: host memory - grab 64 GiB at once, then grow a list without bound.
# expect: failed killed
blob = bytearray(64 * 2**30)
hoard = []
while True:
    hoard.append(bytearray(2**26))
