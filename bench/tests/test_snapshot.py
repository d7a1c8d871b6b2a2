"""The clean copy of HEAD that long benchmarks run hotswap from: no KVM needed (gcc and make are)."""

from __future__ import annotations

import os
import subprocess
import sys

from bench import report
from bench.snapshot import snapshot


def test_hotswap_imports_from_the_copy_while_it_lasts_and_the_copy_goes_away() -> None:
    before, cwd = os.environ.get("PYTHONPATH"), os.getcwd()
    with snapshot() as root:
        assert os.environ["PYTHONPATH"] == str(root) and os.getcwd() == str(root)
        assert (root / "guest" / "build" / "testguest.elf").is_file()
        where = subprocess.run(
            [sys.executable, "-c", "import hotswap; print(hotswap.__file__)"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert where.startswith(str(root))
        assert "clean copy" in report.render_record("t", report.Table(["x"]), [])
    assert os.environ.get("PYTHONPATH") == before and os.getcwd() == cwd
    assert not root.exists()
    assert "clean copy" not in report.render_record("t", report.Table(["x"]), [])
