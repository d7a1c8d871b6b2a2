"""Benchmark a committed tree, not the working tree others are editing.

Other engineers change files in this checkout while a long benchmark runs, and every `hotswap upgrade` starts a
fresh successor that imports whatever the files say at that moment: a half-saved edit once failed an upgrade in
the middle of a run. `--snapshot` copies a commit with `git archive` (read-only for the repository), builds the C
extensions and the test guest inside the copy, makes the copy the working directory and puts it first on PYTHONPATH.
Every VMM, successor and CLI the benchmark starts inherits both: `python -m hotswap` looks in its working directory
first, then PYTHONPATH, and only then through the editable install's finder (which points at this checkout).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import report
from bench.report import REPO, BenchError


def add_option(parser: argparse.ArgumentParser) -> None:
    """The `--snapshot` option that run_measure() reads."""
    parser.add_argument(
        "--snapshot", action="store_true", help="run hotswap from a clean copy of HEAD (see bench/snapshot.py)"
    )


def run_measure(prog: str, args: argparse.Namespace, measure: Callable[[argparse.Namespace, Path], int]) -> int:
    """A benchmark's main(): `measure(args, root)` with root this checkout, or with --snapshot a clean copy of HEAD.

    With --snapshot a BenchError (making the copy, or measuring) is printed after `prog` and the exit status is 1.
    """
    if not args.snapshot:
        return measure(args, REPO)
    try:
        with snapshot() as root:
            return measure(args, root)
    except BenchError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1


def _run(argv: list[str], what: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    try:
        result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BenchError(f"snapshot: {what}: {exc}") from exc
    if result.returncode != 0:
        raise BenchError(f"snapshot: {what} failed: {result.stderr.strip()[-1000:]}")
    return result.stdout


@contextmanager
def snapshot(commit: str = "HEAD") -> Iterator[Path]:
    """A built copy of `commit`, first on PYTHONPATH for as long as the context lasts; removed afterwards."""
    rev = _run(["git", "-C", str(REPO), "rev-parse", "--short=12", commit], "git rev-parse").strip()
    root = Path(tempfile.mkdtemp(prefix=f"hotswap-bench-tree-{rev}-"))
    saved = os.environ.get("PYTHONPATH")
    saved_cwd = os.getcwd()
    try:
        archive = subprocess.Popen(["git", "-C", str(REPO), "archive", "--format=tar", rev], stdout=subprocess.PIPE)
        try:
            extract = subprocess.run(["tar", "-x", "-C", str(root)], stdin=archive.stdout, capture_output=True)
        finally:
            if archive.stdout is not None:
                archive.stdout.close()
            archive.wait(timeout=120)
        if archive.returncode != 0 or extract.returncode != 0:
            raise BenchError(f"snapshot: git archive {rev} | tar failed: {extract.stderr.decode(errors='replace')}")
        env = {**os.environ, "PYTHONPATH": str(root)}
        # setup.py builds every compiled module of that commit (the cffi extension; from 7df3ec1 the state codec's
        # C happy path too), in place.
        build = [sys.executable, "setup.py", "-q", "build_ext", "--inplace"]
        _run(build, "building the C extensions", cwd=root, env=env)
        _run([str(root / "guest" / "build-testguest.sh")], "building the test guest", cwd=root, env=env)
        probe = "import hotswap, kvm._kvm_cffi; print(hotswap.__file__)"
        if (root / "hotswap" / "state" / "_fastcodec.c").exists():
            probe = "import hotswap.state._fastcodec; " + probe
        where = _run([sys.executable, "-c", probe], "importing hotswap from the copy", cwd=root, env=env)
        if not where.strip().startswith(str(root)):
            raise BenchError(f"snapshot: hotswap still imports from {where.strip()}, not from {root}")
        os.environ["PYTHONPATH"] = str(root)
        os.chdir(root)
        report.set_tree(f"{rev}, a clean copy (git archive) that every hotswap process ran from")
        yield root
    finally:
        os.chdir(saved_cwd)
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
        report.set_tree(None)
        shutil.rmtree(root, ignore_errors=True)
