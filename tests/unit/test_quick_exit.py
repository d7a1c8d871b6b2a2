"""quick_exit.leave_at_once: output written before it arrives, the status is the one given, and the interpreter's
teardown (atexit handlers, finalizers) does not run."""

from __future__ import annotations

import subprocess
import sys

PROGRAM = """
import atexit, sys
from hotswap.quick_exit import leave_at_once
atexit.register(lambda: print("teardown ran"))
print("reply", end="")  # buffered: stdout is a pipe
sys.stderr.write("log line")
leave_at_once(3)
"""


def test_leaves_with_its_status_after_flushing_and_without_teardown() -> None:
    result = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=30)
    assert result.returncode == 3
    assert result.stdout == "reply"
    assert result.stderr == "log line"
