"""Benchmarks: scripts that print a table, side by side with QEMU, and record it in docs/benchmarks.md.

Run them from the repository root as modules, e.g. `python -m bench.boot --reps 20`; /work/shared/BENCHMARKS.md has
the rules they follow.
"""

import sys
from pathlib import Path

# What the benchmarks share with the functional tests (status lines; processes found by tag, killed by pid) lives
# in tests/framework and is imported as `framework`, as the tests do (pytest puts tests/ on sys.path: pyproject.toml).
_TESTS = str(Path(__file__).resolve().parents[1] / "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
