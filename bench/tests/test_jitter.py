"""bench.jitter's loads: each runs where and how it says, and stopping it leaves nothing behind. No KVM needed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bench.jitter import parse_args, start_load, stop_load
from bench.placement import Placement

SCHED_IDLE = 5


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2 :].split()[1]) == pid:
                found.append(int(entry))
    return found


@pytest.mark.parametrize("load, policy", [("idle-loop", SCHED_IDLE), ("busy-loop", os.SCHED_OTHER)])
def test_a_loop_runs_on_the_vmm_cpus_at_its_policy(load: str, policy: int) -> None:
    placement = Placement(vcpu_cpus=(1,), vmm_cpus=(0,))
    process = start_load(load, placement)
    assert process is not None
    try:
        time.sleep(0.3)  # taskset and chrt have exec'd the loop by now
        assert os.sched_getaffinity(process.pid) == {0}
        assert os.sched_getscheduler(process.pid) == policy
    finally:
        stop_load(process)
    assert process.poll() is not None


def test_stopping_the_imports_loop_leaves_no_import_running() -> None:
    process = start_load("imports", Placement(vcpu_cpus=(1,), vmm_cpus=(0,)))
    assert process is not None
    deadline = time.monotonic() + 5
    while not children_of(process.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    children = children_of(process.pid)
    assert children, "the imports loop started no import"
    stop_load(process)
    time.sleep(0.2)
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)]


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return stat[stat.rfind(")") + 2]


def test_idle_starts_nothing_and_unknown_loads_are_refused() -> None:
    assert start_load("idle", Placement(vcpu_cpus=(1,), vmm_cpus=(0,))) is None
    assert parse_args(["--loads", "idle,busy-loop"]).load_list == ["idle", "busy-loop"]
    with pytest.raises(SystemExit):
        parse_args(["--loads", "spin"])
