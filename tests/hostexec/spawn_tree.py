"""Test helper: start a grandchild, print both process ids, then sleep well past any timeout."""

from __future__ import annotations

import os
import subprocess
import time

grandchild = subprocess.Popen(["sleep", "60"])
print(os.getpid(), grandchild.pid, flush=True)
time.sleep(60)
