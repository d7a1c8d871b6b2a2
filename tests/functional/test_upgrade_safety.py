"""The live upgrade's safety rules (DESIGN.md "Same-host handover"), proved by a fault at every handover step.

Each case starts the test guest with HOTSWAP_FAULT="SIDE@GEN:STEP:ACTION" in the VMM's environment (successors
inherit it; hotswap/handover/faults.py), runs `hotswap upgrade`, and checks what must hold afterwards. After STATE,
whoever takes the ownership token runs the guest (hotswap/handover/ownership.py):

  rollback       a failure before the successor took the token: the old VMM (same pid) takes it, runs the guest on,
                 `hotswap upgrade` exits 1 with one line naming what happened, and a second upgrade succeeds (a
                 fault fires once: faults.py forgets it)
  old-died       the old VMM itself dies before it sent STATE: its guest dies with it (nobody has its state); the
                 successor gives up without running the guest and nothing is left behind
  takeover       the old VMM dies after it sent STATE: the successor takes the token and the guest (new pid)
  lost           the successor dies or hangs after it took the token, before it resumed the guest: the documented
                 loss; the old VMM finds the token gone and never runs the guest again, so no VMM runs it
  upgraded       the upgrade completed (the successor fails only after it resumed the guest: a hung one runs it on, one
                 that dies takes it along, like any VMM that crashes)
  sender-hung-*  the old VMM hangs: before STATE the successor waits out its own timeout and must not take over a
                 live peer; after STATE the successor takes the token and runs the guest while the old VMM hangs

Every case also checks the guest's console: one boot, status seq numbers without a gap or a repeat (two VMMs running
the guest would print twice), integrity=ok, counters rising while it runs and frozen when nobody runs it.

The default suite runs a kill at every step on both sides, every successor hang, the sender hangs after STATE and
the three state-data faults. HOTSWAP_UPGRADE_MATRIX=full adds `exit` at every step (the same abrupt end as a kill,
with status 1) and the sender hangs before STATE, which wait out the successor's timeouts (30 to 60 s each).
"""

from __future__ import annotations

import enum
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from framework.guest import Status, guest_cmdline, statuses
from framework.vmm import HOTSWAP, GuestVm, pids_with_tag
from test_upgrade import assert_continues, vmm_pids

from hotswap.handover.faults import SENDER_STEPS, SUCCESSOR_STEPS

pytestmark = pytest.mark.kvm

FULL_MATRIX = os.environ.get("HOTSWAP_UPGRADE_MATRIX") == "full"
MEM = "64M"
HANG_TIMEOUT = "8"  # `hotswap upgrade --timeout` where the successor hangs before READY (it starts in 1-3 s)
OLD_VMM_EXIT = 10.0  # a VMM whose upgrade committed waits up to 5 s for its API reply before it exits


class Outcome(enum.Enum):
    ROLLBACK = "rollback"
    OLD_DIED = "old-died"
    TAKEOVER = "takeover"
    LOST = "lost"
    UPGRADED = "upgraded"
    UPGRADED_THEN_DIED = "upgraded-then-died"
    SENDER_HUNG_GUEST_RUNS = "sender-hung-guest-runs"
    SENDER_HUNG_GUEST_PAUSED = "sender-hung-guest-paused"
    SENDER_HUNG_AFTER_STATE = "sender-hung-after-state"


@dataclass(frozen=True)
class Case:
    side: str  # "sender" (the old VMM) or "successor"
    step: str
    action: str
    outcome: Outcome
    reason: str = ""  # a regex the one-line error must match (rollback)
    cpus: int = 2
    full_only: bool = False

    @property
    def fault(self) -> str:
        generation = 1 if self.side == "sender" else 2  # the sender's own generation; the one the successor becomes
        return f"{self.side}@{generation}:{self.step}:{self.action}"

    @property
    def id(self) -> str:
        return f"{self.side}-{self.step}-{self.action}"


# What a successor that vanished looks like to the old VMM: it reaped the successor or saw its socket close.
SUCCESSOR_GONE = r"successor.*(exited with status|closed the connection|reset the connection)"
BEFORE_STATE = ("after_hello", "after_config", "after_ready", "after_pause", "after_vcpus")


def sender_case(step: str, action: str) -> Case:
    if action in ("kill", "exit"):
        # The old VMM is the only one with the guest's state until STATE is on the wire.
        outcome = Outcome.OLD_DIED if step in BEFORE_STATE else Outcome.TAKEOVER
        return Case("sender", step, action, outcome, cpus=1 if outcome is Outcome.OLD_DIED else 2)
    if step not in BEFORE_STATE:
        return Case("sender", step, action, Outcome.SENDER_HUNG_AFTER_STATE)
    # Only the successor's own timeouts apply: 60 s for CONFIG, the old VMM's --timeout (30 s) for STATE.
    runs = step in ("after_hello", "after_config", "after_ready")
    outcome = Outcome.SENDER_HUNG_GUEST_RUNS if runs else Outcome.SENDER_HUNG_GUEST_PAUSED
    return Case("sender", step, action, outcome, full_only=True)


def successor_case(step: str, action: str) -> Case:
    before_ready = step in ("after_hello", "after_config")
    if step in ("after_hello", "after_config", "after_ready", "after_vcpus", "after_state", "after_restore"):
        if action == "hang":
            waited = "READY" if before_ready else "RESUMED"
            return Case("successor", step, action, Outcome.ROLLBACK, rf"timed out .*waiting for {waited}")
        return Case("successor", step, action, Outcome.ROLLBACK, SUCCESSOR_GONE, cpus=1 if before_ready else 2)
    if step == "after_take":
        return Case("successor", step, action, Outcome.LOST, cpus=1)
    assert step == "after_resumed", f"no expected outcome for successor step {step}"
    return Case("successor", step, action, Outcome.UPGRADED if action == "hang" else Outcome.UPGRADED_THEN_DIED)


DATA_FAULTS = {
    "corrupt": r"BAD_STATE: .*bad checksum",
    "truncate": r"BAD_STATE: .*length mismatch",
    "badversion": r"VERSION_MISMATCH: .*format version 99 is not supported",
}

CASES = (
    [sender_case(step, action) for step in SENDER_STEPS for action in ("kill", "exit", "hang")]
    + [successor_case(step, action) for step in SUCCESSOR_STEPS for action in ("kill", "exit", "hang")]
    + [
        Case("sender", part, action, Outcome.ROLLBACK, reason)
        for part in ("vcpus", "state")
        for action, reason in DATA_FAULTS.items()
    ]
)


def _params() -> list[object]:
    """Every case; `exit` (the same abrupt end as `kill`, with status 1) and the slow sender hangs only in full."""
    skip = pytest.mark.skipif(
        not FULL_MATRIX,
        reason="full matrix only: set HOTSWAP_UPGRADE_MATRIX=full (exit cases; sender hangs before STATE wait 30-60 s)",
    )
    return [
        pytest.param(case, id=case.id, marks=[skip] if case.full_only or case.action == "exit" else [])
        for case in CASES
    ]


# -- helpers -----------------------------------------------------------------------------------------------------
@pytest.fixture
def faulty_vm(run_dir: Path) -> Iterator[Callable[[str], GuestVm]]:
    made: list[GuestVm] = []

    def make(fault: str) -> GuestVm:
        vm = GuestVm(run_dir, env={"HOTSWAP_FAULT": fault})
        made.append(vm)
        return vm

    try:
        yield make
    finally:
        for vm in made:
            vm.kill()


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, f"upgrade exited {result.returncode}: {result.stdout}{result.stderr}"
    text = result.stderr.strip()
    assert "Traceback" not in text and "\n" not in text, f"expected one line of error, got:\n{text}"
    assert text.startswith("hotswap: error: "), text
    return text.removeprefix("hotswap: error: ")


def wait_pids(vm: GuestVm, wanted: Callable[[list[int]], bool], what: str, timeout: float = OLD_VMM_EXIT) -> list[int]:
    deadline = time.monotonic() + timeout
    pids = pids_with_tag(vm.tag)
    while not wanted(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = pids_with_tag(vm.tag)
    assert wanted(pids), f"expected {what}, found VMM processes {pids}"
    return pids


def assert_consistent(vm: GuestVm) -> list[Status]:
    """One boot, status lines numbered without a gap or a repeat, memory intact: what one VMM at a time leaves."""
    output = vm.output()
    assert output.count("hsg: boot ") == 1, "the guest booted twice"
    seen = statuses(output)
    seqs = [s.seq for s in seen]
    assert seqs == list(range(1, len(seqs) + 1)), f"status lines lost or repeated: {seqs}"
    assert all(s.integrity == "ok" for s in seen), "guest memory was corrupted"
    assert "hsg: panic" not in output and "hsg: error" not in output
    return seen


def assert_no_staged_record(vm: GuestVm) -> None:
    """A successor stages its registry record before the pause; one that never took over leaves none behind."""
    staged = sorted(p.name for p in vm.run_dir.glob("*.tmp"))
    assert not staged, f"staged registry records left behind: {staged}"


def assert_guest_frozen(vm: GuestVm, seconds: float = 1.0) -> None:
    """No VMM runs the guest: its console stays silent (it prints every 50 ms while it runs)."""
    before = vm.output()
    time.sleep(seconds)
    assert vm.output() == before, "the guest is still running somewhere"
    assert_consistent(vm)


def successor_pid_in(error: str) -> int:
    match = re.search(r"successor \(pid (\d+)\)", error)
    assert match, f"the error does not name the successor: {error}"
    return int(match.group(1))


def upgrade(vm: GuestVm, *args: str) -> subprocess.CompletedProcess[str]:
    return vm.cli("upgrade", vm.name, "--json", *args, check=False, timeout=180)


# -- the matrix --------------------------------------------------------------------------------------------------
def test_every_step_has_cases() -> None:
    """A step added to faults.py must get an expected outcome here."""
    covered = {(c.side, c.step) for c in CASES}
    assert covered >= {("sender", s) for s in SENDER_STEPS} | {("successor", s) for s in SUCCESSOR_STEPS}


@pytest.mark.parametrize("case", _params())
def test_fault_during_upgrade(case: Case, faulty_vm: Callable[[str], GuestVm], guest_elf: Path) -> None:
    vm = faulty_vm(case.fault)
    vm.start(guest_elf, guest_cmdline(ws="8M", status_ms=50), case.cpus, MEM)
    old_pid = vm.pid
    assert old_pid is not None
    before = vm.wait_statuses(3)
    if case.outcome.name.startswith("SENDER_HUNG"):
        check_sender_hang(vm, case, old_pid, before)
        return
    # The sender's --timeout covers HELLO..READY; after STATE it waits for RESUMED for a fixed 5 s.
    short = case.action == "hang" and case.step in ("after_hello", "after_config")
    result = upgrade(vm, *(("--timeout", HANG_TIMEOUT) if short else ()))
    outcome = case.outcome

    if outcome is Outcome.ROLLBACK:
        error = one_line_error(result)
        assert error.startswith(f"upgrade failed, the guest keeps running in pid {old_pid}: "), error
        assert re.search(case.reason, error), f"the reason does not say what happened ({case.reason!r}): {error}"
        assert vmm_pids(vm) == [old_pid], "the old VMM must be the only one left"
        assert_no_staged_record(vm)  # what the dead or refused successor staged, the old VMM removed
        assert_no_vcpu_records(old_pid)  # nor does it keep what it made for that successor
        seen = assert_continues(vm, before)
        # The same VMM, the same environment: the retry succeeds only because the fault fired once (the old VMM
        # forgot its own fault once used, and its successor's when it started that successor: faults.consume).
        retry = vm.upgrade()
        assert retry["old_pid"] == old_pid and retry["new_pid"] != old_pid and retry["generation"] == 2
        assert vmm_pids(vm) == [retry["new_pid"]]
        assert_continues(vm, seen)

    elif outcome is Outcome.OLD_DIED:
        one_line_error(result)
        wait_pids(vm, lambda pids: not pids, "no VMM left: the successor must give up once its peer is gone")
        assert_no_staged_record(vm)  # the successor removed what it staged when it gave up
        assert_guest_frozen(vm)

    elif outcome is Outcome.TAKEOVER:
        one_line_error(result)  # the VMM it talked to died mid-request
        (new_pid,) = wait_pids(vm, lambda pids: len(pids) == 1 and old_pid not in pids, "only the successor")
        assert_continues(vm, before)
        info = vm.info()
        assert (info["pid"], info["generation"], info["state"]) == (new_pid, 2, "running")

    elif outcome is Outcome.LOST:
        error = one_line_error(result)
        assert "took the guest but did not confirm it runs" in error, error
        successor = successor_pid_in(error)
        if case.action == "hang":  # it hangs with the guest, never resumed; the old VMM has exited
            wait_pids(vm, lambda pids: pids == [successor], f"only the hung successor {successor}")
        else:
            wait_pids(vm, lambda pids: not pids, "no VMM left (the documented loss after the successor took over)")
        assert_guest_frozen(vm)

    elif outcome is Outcome.UPGRADED:
        assert result.returncode == 0, result.stderr
        new_pid = json.loads(result.stdout)["new_pid"]
        assert vmm_pids(vm) == [new_pid]
        assert_no_staged_record(vm)
        assert_continues(vm, before)

    elif outcome is Outcome.UPGRADED_THEN_DIED:
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["new_pid"] != old_pid
        wait_pids(vm, lambda pids: not pids, "no VMM left: the new one died after taking over")
        assert_guest_frozen(vm)

    else:
        raise AssertionError(f"unhandled outcome {outcome}")


def assert_no_vcpu_records(pid: int) -> None:
    """A VMM that rolled back released the vCPU records' memfd (kvm/lane.py): neither mapped nor open."""
    name = "hotswap-vcpu-records"
    assert name not in Path(f"/proc/{pid}/maps").read_text(), "the vCPU records are still mapped"
    links = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            links.append(os.readlink(fd))
        except OSError:
            continue  # closed meanwhile
    assert not [link for link in links if name in link], "the vCPU records' memfd is still open"


def check_sender_hang(vm: GuestVm, case: Case, old_pid: int, before: list[Status]) -> None:
    """The old VMM hangs at a step, so `hotswap upgrade` waits for an answer that never comes: run it in the
    background and watch the processes and the guest."""
    cli = subprocess.Popen(
        [*HOTSWAP, "upgrade", vm.name, "--json", "--timeout", HANG_TIMEOUT],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **vm.env},
    )
    try:

        def vmms(pids: list[int]) -> list[int]:
            return [p for p in pids if p != cli.pid]

        wait_pids(vm, lambda pids: len(vmms(pids)) == 2, "the old VMM and its successor", timeout=30)
        if case.outcome is Outcome.SENDER_HUNG_AFTER_STATE:
            # The successor runs the guest (it rewrote the registry record); the old VMM, still alive and hung,
            # stopped its vCPUs before it hung: two running copies would print every status line twice.
            record = vm.run_dir / f"{vm.name}.json"
            deadline = time.monotonic() + 30
            while json.loads(record.read_text())["pid"] == old_pid and time.monotonic() < deadline:
                time.sleep(0.05)
            new_pid = json.loads(record.read_text())["pid"]
            assert new_pid != old_pid, "the successor never took over"
            seen = assert_continues(vm, before, count=10)
            assert sorted(vmms(pids_with_tag(vm.tag))) == sorted([old_pid, new_pid])
            assert_continues(vm, seen, count=10)
            return
        # The successor gives up at its own timeout and must not take over from a live (hung) peer.
        wait_pids(vm, lambda pids: vmms(pids) == [old_pid], "only the hung old VMM", timeout=150)
        if case.outcome is Outcome.SENDER_HUNG_GUEST_RUNS:
            assert_continues(vm, before)
        else:
            assert_guest_frozen(vm)
    finally:
        cli.kill()
        cli.wait()
