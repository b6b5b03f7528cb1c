# attacks: the parent's secrets - the test puts a fake token into the harness env; seeing it would pass.
# expect: failed
import os

seen = os.environ.get("SCMOE_FAKE_SECRET", "")
for path in (f"/proc/{os.getppid()}/environ", "/proc/1/environ"):
    try:
        with open(path, "rb") as fh:
            seen += fh.read().decode("latin-1")
    except OSError:
        pass
print(seen)  # the test checks the token never shows up in the captured output
assert "SCMOE_FAKE_SECRET" in seen
