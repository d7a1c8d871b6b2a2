"""The registry's records (hotswap/registry.py): a successor stages its record before the guest's pause and
publishes it with one rename when it takes over; what it staged and never published is never read as a record."""

from __future__ import annotations

from pathlib import Path

import pytest

from hotswap import registry


@pytest.fixture(autouse=True)
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOTSWAP_RUN_DIR", str(tmp_path))
    return tmp_path


def record(pid: int) -> registry.VmRecord:
    return registry.VmRecord("vm1", pid, "/run/vm1.sock", "/run/vm1.console")


def test_a_staged_record_is_not_read_until_published(run_dir: Path) -> None:
    registry.write_record(record(100))  # the old VMM's
    staged = registry.stage_record(record(200))
    assert staged.temporary.exists() and staged.temporary.stat().st_mode & 0o777 == 0o600
    assert registry.read_record("vm1") == record(100)
    assert [r.pid for r in registry.all_records()] == [100]
    registry.publish_record(staged)
    assert registry.read_record("vm1") == record(200)
    assert sorted(p.name for p in run_dir.iterdir()) == ["vm1.json"]


def test_discarding_removes_only_what_that_process_staged(run_dir: Path) -> None:
    registry.write_record(record(100))
    registry.stage_record(record(200))
    registry.stage_record(record(300))
    registry.discard_staged("vm1", 200)
    registry.discard_staged("vm1", 200)  # already gone: fine
    assert sorted(p.name for p in run_dir.iterdir()) == ["vm1.json", "vm1.json.300.tmp"]
    assert registry.read_record("vm1") == record(100)
