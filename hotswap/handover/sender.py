"""The old VMM's side of a live upgrade (DESIGN.md "Same-host handover"), protocol 5.

    old VMM                                   successor (`hotswap _successor --fd N`)
      spawn ------------------------------->  starts Python, imports
      <------------------------------- HELLO  versions it speaks
      CONFIG + fds + ownership token ------>  builds VM, memslots, vCPUs, devices (guest still running here);
        + vCPU record memfd and eventfds      checks the vCPU record layouts against its own vCPUs
      <------------------------------- READY  "lane": true if it takes the vCPUs as records
      pause vCPUs; on the thread of the vCPU that stopped last: quiesce devices, then
      each vCPU's record (memfd, eventfd) ->  that vCPU's parked thread checks and restores it, in C
      (or, lane declined: STATE_VCPUS ----->  the main thread checks it; each vCPU thread restores its vCPU)
      capture VM, devices
      STATE ------------------------------->  restore VM, devices; wait for the vCPUs; take the token; resume
      <----------------------------- RESUMED  its timings
      reply to the user, exit 0

The vCPU records (kvm/lane.py) go from this VMM's vCPU thread to the successor's without passing through either
main thread or a socket. The phases of the report overlap: "capture" ends when STATE is ready, "transfer" ends
when the successor has it, "restore" is what remained to restore then (the vCPUs were restored meanwhile; the
successor's "restore_detail_us" has their times).

Whoever takes the ownership token (handover/ownership.py) runs the guest. On any failure (ERROR, a timeout, the
successor dying) the old VMM takes the token, kills the successor, waits for it to be gone, resumes the guest here
and reports why; if the token is already gone, the successor took the guest and the old VMM never runs it again.
"""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from hotswap import __version__, log, registry
from hotswap.api.actions import Upgrade
from hotswap.errors import ApiError, HotswapError, UpgradeError
from hotswap.handover.faults import consume, fault_point, mangle_state, record_fault
from hotswap.handover.layout import HandoverFds
from hotswap.handover.ownership import OwnershipToken
from hotswap.handover.session import TrackedChannel
from hotswap.handover.vcpu_records import OutgoingRecords
from hotswap.machine import priority
from hotswap.machine.machine import RunState
from hotswap.state import FORMATS, decode, encode, pack_part
from hotswap.wire.channel import Channel
from hotswap.wire.errors import RemoteError, WireError
from hotswap.wire.hello import Hello, negotiate
from hotswap.wire.messages import PROTOCOL_VERSION, ErrorCode, MessageType
from hotswap.wire.sender import Sender

if TYPE_CHECKING:
    from hotswap.vmm import Vmm

RESUME_TIMEOUT = 5.0  # seconds the paused guest waits for the successor to restore its state and resume it


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def successor_command(executable: str | None) -> list[str]:
    """The hotswap to start: --exec PATH, or this interpreter running the hotswap package installed now."""
    if executable is None:
        return [sys.executable, "-m", "hotswap"]
    if not (os.path.isfile(executable) and os.access(executable, os.X_OK)):
        raise ApiError(f"--exec {executable}: not an executable file", 400)
    return [executable]


def hand_over(vmm: Vmm, action: Upgrade) -> dict[str, Any]:
    machine = vmm.machine
    if action.mode == "exec":
        from hotswap.handover.exec_mode import exec_over

        exec_over(vmm, action)
    if machine.state is not RunState.RUNNING:
        raise ApiError(f"cannot upgrade: the VM is {machine.state.value} (resume it first)", 409)
    generation = machine.generation
    logger = log.get("handover").bind(side="sender", generation=generation)
    command = successor_command(action.executable)
    started = now_ns()
    deadline = time.monotonic() + action.timeout

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        process = subprocess.Popen(
            [*command, "_successor", "--fd", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            env={**os.environ, **log.environment()},
        )
    except OSError as exc:
        ours.close()
        theirs.close()
        raise UpgradeError(f"cannot start the successor {' '.join(command)}: {exc.strerror or exc}") from None
    theirs.close()
    # Its start-up and preparation are the upgrade's bulk of CPU time, none of it urgent: the guest goes first.
    if machine.vcpus_apart:
        priority.background_process(process.pid)
    consume("successor", generation + 1)  # that successor has its faults; a retry's successor runs clean
    channel = Channel(ours, peer=f"successor (pid {process.pid})")
    session = _Session(vmm, channel, process, logger)
    try:
        return session.run(started, deadline, generation, action.timeout)
    finally:
        channel.close()


@dataclass
class _Sent:
    """What the window's work did, and when (CLOCK_MONOTONIC ns)."""

    quiesced: int = 0
    captured: int = 0
    vcpus_bytes: int = 0
    platform: bytes = b""
    # when each step named in `names` ended (the last, the rest's packing: `captured`)
    steps: list[int] = field(default_factory=list)
    names: tuple[str, ...] = ()

    def detail_us(self) -> dict[str, int]:
        """How long each part of the capture took, for the upgrade report."""
        stamps = [self.quiesced, *self.steps, self.captured]
        pairs = zip(self.names, pairwise(stamps), strict=True)
        return {f"{name}_us": (end - begin) // 1000 for name, (begin, end) in pairs}


class _Session:
    """One handover attempt; knows how to roll back until it commits."""

    def __init__(self, vmm: Vmm, channel: Channel, process: subprocess.Popen[bytes], logger: Any) -> None:
        self.vmm = vmm
        self.machine = vmm.machine
        self.channel = channel
        self.sender = Sender()
        self.wire = TrackedChannel(channel, self.sender)  # enforces HELLO, CONFIG, READY, STATE, ... in order
        self.process = process
        self.log = logger
        self.paused = False
        self.console_stopped = False
        self.ownership = OwnershipToken.create()
        self.records: OutgoingRecords | None = None

    def close(self) -> None:
        """Release what the session made for the successor (it holds its own copies of the fds). Only after a
        rollback: a VMM that handed its guest over exits soon, and an munmap now would send a TLB shootdown IPI
        to the CPUs this process's vCPU threads ran on, where the guest's vCPUs now run in the successor."""
        if self.records is not None:
            self.records.close()
            self.records = None

    def remaining(self, deadline: float) -> float:
        return max(0.1, deadline - time.monotonic())

    def run(self, started: int, deadline: float, generation: int, action_timeout: float) -> dict[str, Any]:
        machine, wire = self.machine, self.wire
        try:
            hello = Hello.decode(wire.recv(self.remaining(deadline)).payload)
            # This build sends only the current protocol and state format; the successor must read both.
            negotiate(hello, protocol_versions=(PROTOCOL_VERSION,), state_format=FORMATS.current)
            hello_at = now_ns()
            fault_point("sender", generation, "after_hello")

            fds = HandoverFds(
                memory=machine.platform.memory.fds,
                console=machine.console.fds(),
                api_listener=self.vmm.api.listener_fd,
                virtio=[fd for fd in machine.devices.host_fds() if fd is not None],
                ownership=[self.ownership.fd],
            )
            self.records = OutgoingRecords(machine)
            fds.lane = self.records.fds()
            console_mark = machine.console.mark()
            config = {
                "protocol": PROTOCOL_VERSION,
                "timeout_ms": int(action_timeout * 1000),
                "config": machine.config.to_dict(),
                "console_history": machine.console.history(),
                "generation": generation + 1,
                "booted_at_ns": machine.booted_at_ns,
                "memory": [[spec.gpa, spec.size] for spec in machine.platform.memory.specs],
                "fds": fds.counts(),
                "lane": {"format": FORMATS.current, "vcpus": self.records.config()},
            }
            wire.send(MessageType.CONFIG, encode(config), fds.flat())
            fault_point("sender", generation, "after_config")
            ready = decode(wire.recv(self.remaining(deadline)).payload)
            ready_at = now_ns()
            if isinstance(ready, dict) and ready.get("lane") is True:
                self.sender.use_lane()  # no STATE_VCPUS: the vCPUs go as records
                self.records.arm(generation + 1)
            elif isinstance(ready, dict):
                self.log.info("upgrade.records_declined", reason=str(ready.get("lane_declined", "")))
            fault_point("sender", generation, "after_ready")

            # Not part of the pause: new API requests and console input wait in their sockets' queues for whoever
            # owns them next; guest output keeps flowing.
            self.vmm.api.stop_accepting()
            machine.console.stop_serving()
            self.console_stopped = True

            # ---- the pause window: only quiesce, capture, transfer, restore, resume ----
            gc.disable()  # a collection inside the window would add milliseconds for nothing
            sent = _Sent()

            def capture_and_send() -> None:
                """Run by the vCPU thread that stops last (Machine.pause): the window's work starts on the CPU
                that just ran the guest, with nobody to wake up first."""
                fault_point("sender", generation, "after_pause")
                machine.devices.quiesce()
                sent.quiesced = now_ns()
                # The vCPUs first: the successor's vCPU threads restore them while we capture the rest.
                if records is not None and records.armed:
                    sent.vcpus_bytes = records.send_all(record_fault(generation))
                    sent.steps.append(now_ns())
                    sent.names = ("vcpus", "platform", "platform_pack")
                else:
                    vcpus = pack_part({"vcpus": machine.capture_vcpus()})
                    sent.steps.append(now_ns())
                    sent.vcpus_bytes = len(vcpus)
                    wire.send(MessageType.STATE_VCPUS, mangle_state(vcpus, generation, "vcpus"))
                    sent.steps.append(now_ns())
                    sent.names = ("vcpus", "vcpus_send", "platform", "platform_pack")
                fault_point("sender", generation, "after_vcpus")
                platform = machine.capture_platform(console_since=console_mark)
                sent.steps.append(now_ns())
                sent.platform = pack_part(platform)
                sent.captured = now_ns()
                wire.send(MessageType.STATE, mangle_state(sent.platform, generation))
                fault_point("sender", generation, "after_state")

            records = self.records
            pause_requested = now_ns()
            self.paused = True  # from here a rollback resumes the guest
            window = machine.pause(then=capture_and_send)
            resumed = decode(wire.recv(RESUME_TIMEOUT).payload)  # RESUMED: the successor took the guest and runs it
        except (WireError, HotswapError, OSError, ValueError) as exc:
            reason = self._describe_failure(exc)
            if not self.ownership.take():  # the successor took the guest before we could take it back
                self._handed_over()
                raise UpgradeError(
                    f"the successor (pid {self.process.pid}) took the guest but did not confirm it runs: {reason}"
                ) from None
            self._roll_back(reason)
            raise UpgradeError(f"upgrade failed, the guest keeps running in pid {os.getpid()}: {reason}") from None

        # ---- the guest belongs to the successor now ----
        self._handed_over()
        fault_point("sender", generation, "after_resumed")
        result = _result(
            self,
            hello,
            started,
            hello_at,
            ready,
            ready_at,
            pause_requested,
            window,
            sent,
            resumed,
        )
        self.log.info("upgrade.done", **{k: v for k, v in result.items() if not isinstance(v, dict)})
        return result

    def _handed_over(self) -> None:
        """The successor owns the guest: stop our threads without touching it, and never resume it here."""
        if self.machine.vcpus_apart:  # what is left here (stopping threads, replying, exiting) can wait
            priority.background_all_threads()
        else:  # unpinned, the guest's new vCPU may share a CPU with ours: never preempt it
            priority.unboost_all_threads()
        self.machine.abandon()
        self.vmm.mark_handed_over()
        self.ownership.close()
        gc.enable()

    def _describe_failure(self, exc: BaseException) -> str:
        if isinstance(exc, RemoteError):
            return f"the successor refused: {exc}"
        if self.process.poll() is not None:
            return f"the successor exited with status {self.process.returncode} ({type(exc).__name__}: {exc})"
        return str(exc)

    def _roll_back(self, reason: str) -> None:
        """We hold the token again: make sure the successor is gone, then let the guest run here again."""
        self.log.warning("upgrade.rollback", reason=reason, paused=self.paused)
        try:
            self.channel.send_abort(ErrorCode.ABORTED, reason, timeout=0.5)
        except (WireError, OSError):
            pass
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.log.error("upgrade.successor_unkillable", pid=self.process.pid)
        if self.paused:
            self.machine.resume()
            self.machine.devices.resume()
        elif self.console_stopped:
            self.machine.console.start()
        self.ownership.close()
        self.close()
        gc.enable()
        self.vmm.api.start()
        registry.discard_staged(self.machine.config.name, self.process.pid)  # if it staged its record and died


def _timings(ready: Any) -> dict[str, int]:
    """READY's timings (us) for the report; its other fields ("lane", ...) are not timings."""
    if not isinstance(ready, dict):
        return {}
    return {k: v for k, v in ready.items() if isinstance(v, int) and not isinstance(v, bool)}


def _result(
    session: _Session,
    hello: Hello,
    started: int,
    hello_at: int,
    ready: Any,
    ready_at: int,
    pause_requested: int,
    window: Any,
    sent: _Sent,
    resumed: Any,
) -> dict[str, Any]:
    def us(a: int, b: int) -> int:
        return max(0, (b - a) // 1000)

    state_received = int(resumed["state_received_ns"])
    restored = int(resumed["restored_ns"])
    committed = int(resumed["commit_received_ns"])
    resumed_at = int(resumed["resumed_ns"])
    return {
        "name": session.machine.config.name,
        "old_pid": os.getpid(),
        "new_pid": session.process.pid,
        "old_version": __version__,
        "new_version": hello.package_version,
        "generation": session.machine.generation + 1,
        "mode": "transfer",
        "downtime_us": us(window.first_paused_ns, resumed_at),
        "state_bytes": sent.vcpus_bytes + len(sent.platform),
        "guest_memory_copied_bytes": 0,  # memfds are shared, never copied
        "phases_us": {
            "successor_start": us(started, hello_at),
            "prepare": us(hello_at, ready_at),
            "pause": us(pause_requested, window.last_paused_ns),
            "quiesce": us(window.last_paused_ns, sent.quiesced),
            "capture": us(sent.quiesced, sent.captured),
            "transfer": us(sent.captured, state_received),
            "restore": us(state_received, restored),
            "commit": us(restored, committed),
            "resume": us(committed, resumed_at),
        },
        "capture_detail_us": sent.detail_us(),
        "vcpu_records": session.records is not None and session.records.armed,
        "successor_prepare_us": _timings(ready),
        "restore_detail_us": dict(resumed.get("restore_detail_us", {})),
    }
