"""The clean copy of HEAD that long benchmarks run hotswap from: no KVM needed (gcc and make are)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench import report, snapshot
from bench.report import REPO, BenchError

PRINT_COMPILED_MODULES = "import hotswap.state._fastcodec as c, kvm._kvm_cffi as k; print(c.__file__, k.__file__)"


def test_hotswap_imports_from_the_copy_while_it_lasts_and_the_copy_goes_away() -> None:
    before, cwd = os.environ.get("PYTHONPATH"), os.getcwd()
    with snapshot.snapshot() as root:
        assert os.environ["PYTHONPATH"] == str(root) and os.getcwd() == str(root)
        assert (root / "guest" / "build" / "testguest.elf").is_file()
        where = subprocess.run(
            [sys.executable, "-c", PRINT_COMPILED_MODULES],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert all(path.startswith(str(root)) for path in where.split()), "the copy's compiled modules were not built"
        assert "clean copy" in report.render_record("t", report.Table(["x"]), [])
    assert os.environ.get("PYTHONPATH") == before and os.getcwd() == cwd
    assert not root.exists()
    assert "clean copy" not in report.render_record("t", report.Table(["x"]), [])


def test_run_measure_runs_here_or_in_the_copy_and_reports_a_failure_in_the_copy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    snapshot.add_option(parser)
    roots: list[Path] = []

    def measure(args: argparse.Namespace, root: Path) -> int:
        roots.append(root)
        if len(roots) == 3:
            raise BenchError("it broke")
        return 7

    @contextmanager
    def fake_snapshot(commit: str = "HEAD") -> Iterator[Path]:
        yield tmp_path

    monkeypatch.setattr(snapshot, "snapshot", fake_snapshot)
    assert snapshot.run_measure("bench.t", parser.parse_args([]), measure) == 7
    assert snapshot.run_measure("bench.t", parser.parse_args(["--snapshot"]), measure) == 7
    assert snapshot.run_measure("bench.t", parser.parse_args(["--snapshot"]), measure) == 1
    assert roots == [REPO, tmp_path, tmp_path]
    assert capsys.readouterr().err == "bench.t: it broke\n"
