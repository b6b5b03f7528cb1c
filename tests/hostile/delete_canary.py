# attacks: files outside the sandbox dir - delete the harness's canary (path embedded by the test).
# expect: failed
import os
import shutil

canary = "{{CANARY}}"
try:
    os.chmod(canary, 0o777)
except OSError:
    pass
shutil.rmtree(os.path.dirname(canary), ignore_errors=True)
os.remove(canary)  # raises unless the canary is still there and deletable
