"""Test helper: leave a sleeper outside the process group, holding stdout and stderr open.

The sleeper calls setsid (a new session), so killing the command's process group misses it.
Prints the sleeper's pid, then sleeps past any timeout, or exits at once with `exit`.
"""

from __future__ import annotations

import subprocess
import sys
import time

sleeper = subprocess.Popen(["sleep", "20"], start_new_session=True)  # inherits stdout/stderr
print(sleeper.pid, flush=True)
if sys.argv[1:] != ["exit"]:
    time.sleep(20)
