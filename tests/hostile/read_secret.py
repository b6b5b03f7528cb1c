# attacks: the parent's secrets - the test puts a fake token into the harness env; seeing it would pass.
# expect: failed
import os

seen = os.environ.get("SCMOE_FAKE_SECRET", "")
pid = os.getppid()
while pid > 1:  # every ancestor's environment, up to the harness and beyond
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            seen += fh.read().decode("latin-1")
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            pid = int(fh.read().rsplit(b")", 1)[1].split()[1])
    except OSError:
        break
print(seen)  # the test checks the token never shows up in the captured output
assert "SCMOE_FAKE_SECRET" in seen
