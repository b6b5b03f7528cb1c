# attacks: the project tree - drop a file into the repository (path embedded by the test).
# expect: failed
import os

target = os.path.join("{{PROJECT_DIR}}", "SANDBOX_ESCAPE.txt")
with open(target, "w") as fh:
    fh.write("escaped")
assert os.path.exists(target)
