# attacks: the network - connect to a port the test listens on (loopback) and to a public resolver.
# expect: failed
import socket

reached = []
for host, port in (("127.0.0.1", {{PORT}}), ("1.1.1.1", 53)):
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        reached.append(host)
    except OSError:
        pass
assert reached
