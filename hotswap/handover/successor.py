"""The successor's side of a live upgrade: `hotswap _successor --fd N`, started by the old VMM.

Receiver states (anything out of order is a protocol error that aborts without touching the guest):
  STARTED -> HELLO sent -> CONFIGURED (VM built from CONFIG + fds) -> READY sent -> [protocol 4, and 5 with the
  vCPU records declined: STATE_VCPUS received, vCPUs restored ->] STATE received, restored (protocol 5 with the
  records accepted: each vCPU thread took its vCPU's record from shared memory meanwhile, kvm/lane.py) ->
  protocols 3-5: take the ownership token (handover/ownership.py), resume, RESUMED sent. Without the token (the old VMM
  took it back) the guest's vCPUs never run here. An old VMM that died after STATE left the token, so this process
  takes over by taking it.
  protocols 1-2 (older VMMs): RESTORED sent -> COMMIT received -> resume -> RESUMED sent. Until COMMIT the guest's
  vCPUs never run here; if the old VMM dies after it sent STATE (its socket closes and its pid is gone), this process
  takes over.
"""

from __future__ import annotations

import gc
import os
import select
import socket
import time
from typing import Any

from hotswap import exitcodes, heap, log, registry, sdnotify
from hotswap.config import MachineConfig
from hotswap.errors import HotswapError
from hotswap.handover.faults import declines_records, fault_point
from hotswap.handover.layout import HandoverFds, virtio_fds_for
from hotswap.handover.ownership import OwnershipToken
from hotswap.handover.session import TrackedChannel
from hotswap.machine import priority
from hotswap.machine.machine import Machine
from hotswap.machine.virtio import virtio_specs
from hotswap.state import (
    FORMATS,
    StateError,
    StateSchemaError,
    Unpacked,
    UnsupportedVersionError,
    check_fields,
    decode,
    encode,
    get_field,
    join_parts,
    unpack,
    unpack_part,
    validate_tree,
)
from hotswap.vmm import Vmm
from hotswap.wire.channel import Channel
from hotswap.wire.errors import PeerClosed, ProtocolError, WireError
from hotswap.wire.hello import Hello
from hotswap.wire.messages import ErrorCode, MessageType
from hotswap.wire.receiver import Receiver
from kvm import KvmError
from kvm.lane import LaneLayout, LaneRecordError, LaneRegion

CONFIG_TIMEOUT = 60.0  # the old VMM sends CONFIG right after our HELLO (before we know its --timeout)
DEFAULT_STEP_TIMEOUT = 30.0  # for STATE (and COMMIT) when the old VMM does not say (protocol 1)
OLD_EXIT_GRACE = 5.0


_CONFIG_V2 = frozenset(
    {"protocol", "timeout_ms", "config", "console_history", "generation", "booted_at_ns", "memory", "fds"}
)
CONFIG_FIELDS = {
    1: frozenset({"config", "generation", "booted_at_ns", "memory", "fds"}),
    2: _CONFIG_V2,
    3: _CONFIG_V2,  # the same fields; the fds include the ownership token
    4: _CONFIG_V2,
    5: _CONFIG_V2 | {"lane"},  # the vCPU records offered: {"format": state format, "vcpus": [layout per vCPU]}
}


def config_message_fields(message: object) -> dict[str, Any]:
    """CONFIG's fields in the current protocol's shape; a protocol-1 CONFIG (an old VMM) is brought up to it:
    no console history travels ahead of the state, and its disk and tap fd counts are the virtio count."""
    protocol = message.get("protocol", 1) if isinstance(message, dict) else 1
    if protocol not in CONFIG_FIELDS:
        raise StateSchemaError(f"CONFIG of protocol {protocol!r}: this build reads protocols {sorted(CONFIG_FIELDS)}")
    fields = check_fields(message, CONFIG_FIELDS[protocol], path="CONFIG")
    if protocol == 1:
        counts = dict(get_field(fields, "fds", dict, "CONFIG"))
        disks, taps = counts.pop("disks", 0), counts.pop("taps", 0)
        if not isinstance(disks, int) or not isinstance(taps, int):
            raise StateSchemaError("CONFIG: fd counts 'disks' and 'taps' must be integers")
        fields = {
            **fields,
            "protocol": 1,
            "timeout_ms": int(DEFAULT_STEP_TIMEOUT * 1000),
            "console_history": b"",
            "fds": {**counts, "virtio": disks + taps},
        }
    return fields


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def run_successor(fd: int) -> int:
    log.configure_from_environment()
    channel = Channel(socket.socket(fileno=fd), peer=f"old VMM (pid {os.getppid()})")
    old_pid = os.getppid()
    try:
        old_pidfd = os.pidfd_open(old_pid)
    except OSError:
        old_pidfd = -1
    return _Successor(channel, old_pid, old_pidfd).run()


class _Successor:
    def __init__(self, channel: Channel, old_pid: int, old_pidfd: int) -> None:
        self.channel = channel
        self.receiver = Receiver()  # protocol 3's sequence until CONFIG names another
        self.wire = TrackedChannel(channel, self.receiver)  # enforces HELLO, CONFIG, READY, STATE, ... in order
        self.ownership: OwnershipToken | None = None  # protocol 3
        self.old_pid = old_pid
        self.old_pidfd = old_pidfd
        self.machine: Machine | None = None
        self.vmm: Vmm | None = None
        self.generation = 0
        self.console_history = b""
        self.step_timeout = DEFAULT_STEP_TIMEOUT  # how long we wait for STATE (and COMMIT): the old VMM's --timeout
        self.restore_detail: dict[str, int] = {}
        self.records: LaneRegion | None = None  # protocol 5, the vCPU records accepted
        self.record_fds: list[int] = []  # their eventfds, kept open until the records were taken
        self.log = log.get("handover").bind(side="successor")

    def run(self) -> int:
        wire = self.wire
        try:
            wire.send(MessageType.HELLO, Hello.local().encode())
            config_message = wire.recv(CONFIG_TIMEOUT)
            fault_point("successor", self._peek_generation(config_message.payload), "after_hello")
            try:
                prepare = self._prepare(config_message.payload, config_message.fds)
            except (HotswapError, StateError, OSError, ValueError, TypeError) as exc:
                config_message.close_fds()
                self._refuse(ErrorCode.BAD_CONFIG, f"cannot build the machine: {exc}")
                return exitcodes.ERROR
            fault_point("successor", self.generation, "after_config")
            heap.settle()  # the long-lived objects out of every later collection's way (heap.py)
            gc.disable()  # no collection inside the guest's pause window
            if not priority.foreground_all_threads():  # a pinned VMM started us SCHED_IDLE (sender.py)
                self.log.warning("handover.priority", reason="threads could not leave SCHED_IDLE")
            priority.boost()  # from here to RESUMED we are on the window's critical path (priority.py)
            wire.send(MessageType.READY, encode(prepare))
            fault_point("successor", self.generation, "after_ready")
            vcpus_part = None
            if self.receiver.protocol >= 4 and not self.receiver.lane:
                vcpus_message = wire.recv(self.step_timeout)
                # From here the old VMM's guest is paused, waiting for us; it captures the rest meanwhile.
                vcpus_part = self._restore_vcpus_early(vcpus_message.payload)
                if vcpus_part is None:
                    return exitcodes.ERROR
                fault_point("successor", self.generation, "after_vcpus")
            state_message = wire.recv(self.step_timeout)
            state_received = now_ns()
        except ProtocolError as exc:
            self._refuse(ErrorCode.PROTOCOL, str(exc))  # the stream may still be in step: say why we stop
            return exitcodes.ERROR
        except WireError as exc:
            self.log.warning("handover.aborted", reason=str(exc))
            self._discard()
            return exitcodes.ERROR

        # From here the old VMM's guest is paused, waiting for us.
        fault_point("successor", self.generation, "after_state")
        assert self.machine is not None
        try:
            if self.receiver.lane:
                self._restore_with_records(state_message.payload, state_received)
            else:
                self._restore_from_messages(state_message.payload, vcpus_part, state_received)
        except Exception as exc:
            self._refuse_state(exc)
            return exitcodes.ERROR
        restored = now_ns()
        fault_point("successor", self.generation, "after_restore")
        if self.ownership is not None:
            return self._take_ownership(state_received, restored)
        return self._wait_for_commit(state_received, restored)

    def _restore_from_messages(
        self, payload: bytes, vcpus_part: tuple[Unpacked, bool] | None, state_received: int
    ) -> None:
        """The whole state from STATE (protocols 1-3), or STATE after STATE_VCPUS (protocol 4, or 5 with the vCPU
        records declined)."""
        assert self.machine is not None
        history = self.console_history
        if vcpus_part is None:
            tree, early = unpack(payload).tree, False
        else:
            unpacked, early = vcpus_part
            tree = join_parts([unpacked, unpack_part(payload)]).tree
        self.restore_detail["unpack_us"] = (now_ns() - state_received) // 1000
        if early:  # the vCPU threads restore the vCPUs meanwhile
            self.restore_detail.update(self.machine.restore_platform(tree, console_prefix=history))
            self.restore_detail.update(self.machine.finish_vcpu_restore())
        else:
            self.restore_detail.update(self.machine.restore_state(tree, console_prefix=history))

    def _restore_with_records(self, payload: bytes, state_received: int) -> None:
        """Protocol 5 with the vCPU records accepted: STATE holds machine, VM and devices; each vCPU thread takes
        its record from shared memory meanwhile (it was written before STATE was sent)."""
        assert self.machine is not None
        part = unpack_part(payload)
        if part.version != FORMATS.current:
            raise StateSchemaError(f"STATE of format {part.version} with vCPU records: format {FORMATS.current} only")
        if "vcpus" in part.tree:
            raise StateSchemaError("STATE holds 'vcpus', which the vCPU records carry")
        tree = validate_tree({**part.tree, "vcpus": []})  # the top level checked as unpack would
        self.restore_detail["unpack_us"] = (now_ns() - state_received) // 1000
        self.restore_detail.update(self.machine.restore_platform(tree, console_prefix=self.console_history))
        self.restore_detail.update(self.machine.finish_lane_restore())
        # The records' eventfds are closed after the resume (_take_over), their memfd after a refusal (_discard):
        # an munmap here cost ~0.1 ms of the window (a TLB shootdown: IPIs to the vCPU threads' CPUs).
        fault_point("successor", self.generation, "after_vcpus")

    @staticmethod
    def _offered_records(offered: object, fds: list[int]) -> tuple[int, list[LaneLayout]]:
        """Protocol 5's CONFIG "lane", checked before anything is built: (the old VMM's state format, each vCPU's
        record layout). Takes no fd."""
        try:
            described = check_fields(offered, frozenset({"format", "vcpus"}), path="lane")
            layouts = [LaneLayout.from_dict(item) for item in get_field(described, "vcpus", list, "lane")]
            state_format = get_field(described, "format", int, "lane")
        except ValueError as exc:
            raise StateSchemaError(f"CONFIG 'lane': {exc}") from None
        if len(fds) != 1 + len(layouts):
            raise StateSchemaError(f"CONFIG 'lane': {len(fds)} fds for {len(layouts)} vCPUs (a memfd, an eventfd each)")
        return state_format, layouts

    def _accept_records(self, state_format: int, layouts: list[LaneLayout], fds: list[int]) -> str | None:
        """Take the vCPUs as records in shared memory if their layouts are ours. Returns why not, or None. Owns
        `fds` (the memfd, then an eventfd per vCPU) from here: kept while the records are awaited, or closed."""
        assert self.machine is not None
        reason: str | None = None
        if declines_records(self.generation):
            reason = "declined by HOTSWAP_FAULT (records:decline)"
        elif state_format != FORMATS.current:
            reason = f"state format {state_format}, this build writes {FORMATS.current}"
        else:
            try:
                result = self.machine.accept_lane(layouts, fds[0], fds[1:])
            except (KvmError, OSError) as exc:
                result = f"cannot map the records: {exc}"
            if isinstance(result, str):
                reason = result
            else:
                self.records, self.record_fds = result, fds[1:]
        _close_all(fds[:1] if reason is None else fds)  # accept_lane mapped its own duplicate of the memfd
        return reason

    def _close_records(self) -> None:
        if self.records is not None:
            self.records.close()
            self.records = None
        _close_all(self.record_fds)
        self.record_fds = []

    def _restore_vcpus_early(self, payload: bytes) -> tuple[Unpacked, bool] | None:
        """Protocol 4's STATE_VCPUS: have the vCPU threads restore their vCPUs now, while the old VMM captures the
        rest (Machine.start_vcpu_restore). Returns the opened part and whether its vCPUs are being restored (a
        part of an older format waits for STATE, to be upgraded whole), or None when it was refused."""
        assert self.machine is not None
        started = now_ns()
        try:
            part = unpack_part(payload)
            if set(part.tree) != {"vcpus"}:
                raise StateSchemaError(f"STATE_VCPUS holds {sorted(part.tree)}, expected ['vcpus']")
            if part.version != FORMATS.current:
                return part, False
            self.restore_detail["vcpus_unpack_us"] = (now_ns() - started) // 1000
            self.restore_detail.update(self.machine.start_vcpu_restore(part.tree["vcpus"]))
        except Exception as exc:
            self._refuse_state(exc)
            return None
        return part, True

    def _refuse_state(self, exc: Exception) -> None:
        """Tell the old VMM why its state was not taken (it then resumes the guest itself)."""
        if isinstance(exc, LaneRecordError):
            code = ErrorCode.VERSION_MISMATCH if exc.kind == "layout" else ErrorCode.BAD_STATE
            self._refuse(code, f"state rejected: {exc}")
        elif isinstance(exc, UnsupportedVersionError):
            self._refuse(ErrorCode.VERSION_MISMATCH, f"state rejected: {exc}")
        elif isinstance(exc, StateError):
            self._refuse(ErrorCode.BAD_STATE, f"state rejected: {exc}")
        else:
            self._refuse(ErrorCode.RESTORE_FAILED, f"restore failed: {exc}")

    def _take_ownership(self, state_received: int, restored: int) -> int:
        """Protocol 3: the guest is ours if we take the token before the old VMM takes it back."""
        assert self.ownership is not None
        if not self.ownership.take():
            self.log.warning("handover.aborted", reason="the old VMM took the guest back before we could take it")
            self._discard()
            return exitcodes.ERROR
        taken = now_ns()
        fault_point("successor", self.generation, "after_take")
        return self._take_over(state_received, restored, taken, confirm=True)

    def _wait_for_commit(self, state_received: int, restored: int) -> int:
        """Protocols 1-2: RESTORED, then the guest is ours once COMMIT arrives (or once the old VMM is dead)."""
        wire = self.wire
        try:
            wire.send(MessageType.RESTORED)
            fault_point("successor", self.generation, "after_restored")
            wire.recv(self.step_timeout)  # COMMIT
        except PeerClosed:
            if not self._old_is_gone():
                self.log.warning("handover.aborted", reason="the old VMM closed the channel but is still alive")
                self._discard()
                return exitcodes.ERROR
            self.log.warning("handover.takeover", reason=f"the old VMM (pid {self.old_pid}) died after sending STATE")
            return self._take_over(state_received, restored, now_ns(), confirm=False)
        except ProtocolError as exc:
            self._refuse(ErrorCode.PROTOCOL, str(exc))
            return exitcodes.ERROR
        except WireError as exc:
            self.log.warning("handover.aborted", reason=str(exc))
            self._discard()
            return exitcodes.ERROR
        fault_point("successor", self.generation, "after_commit")
        return self._take_over(state_received, restored, now_ns(), confirm=True)

    def _peek_generation(self, payload: bytes) -> int:
        try:
            config = decode(payload)
            generation = config.get("generation") if isinstance(config, dict) else None
            return generation if isinstance(generation, int) else 0
        except (StateError, KeyError, TypeError, ValueError):
            return 0

    def _prepare(self, payload: bytes, fds: tuple[int, ...]) -> dict[str, Any]:
        """Build the whole machine from CONFIG before the old VMM pauses anything."""
        started = now_ns()
        message = config_message_fields(decode(payload))
        protocol = get_field(message, "protocol", int, "CONFIG")
        self.console_history = get_field(message, "console_history", bytes)
        timeout_ms = get_field(message, "timeout_ms", int, "CONFIG")
        if not 0 < timeout_ms <= 600_000:
            raise StateSchemaError(f"CONFIG: timeout_ms {timeout_ms} is outside (0, 600000]")
        self.step_timeout = timeout_ms / 1000
        config = MachineConfig.from_dict(get_field(message, "config", dict))
        self.generation = get_field(message, "generation", int)
        layout = HandoverFds.split(get_field(message, "fds", dict), fds)
        if protocol >= 3:
            if len(layout.ownership) != 1:
                raise StateSchemaError(f"CONFIG of protocol {protocol} must carry the ownership token fd")
            self.ownership = OwnershipToken(layout.ownership[0])
        elif layout.ownership:
            raise StateSchemaError(f"CONFIG of protocol {protocol} carries an ownership token fd")
        if protocol < 5 and layout.lane:
            raise StateSchemaError(f"CONFIG of protocol {protocol} carries vCPU record fds")
        offered = self._offered_records(message["lane"], layout.lane) if protocol >= 5 else (0, [])
        self.receiver.use_protocol(protocol)
        log.bind(vm=config.name, generation=self.generation)
        self.machine = Machine.create(
            config,
            memory_fds=layout.memory,
            console_fds=layout.console,
            virtio_fds=virtio_fds_for([spec.kind for spec in virtio_specs(config)], layout.virtio),
            generation=self.generation,
            booted_at_ns=get_field(message, "booted_at_ns", int),
        )
        self.vmm = Vmm(self.machine, socket.socket(fileno=layout.api_listener))
        self.vmm.stage_registration()
        self.machine.warm_up()
        self.machine.start_paused()
        self.machine.loop.start()
        ready: dict[str, Any] = {"build_us": (now_ns() - started) // 1000, **self.machine.platform.timings_us}
        if protocol >= 5:
            declined = self._accept_records(*offered, layout.lane)
            self.receiver.use_protocol(protocol, lane=declined is None)
            ready["lane"] = declined is None
            if declined is not None:
                ready["lane_declined"] = declined
                self.log.info("handover.records_declined", reason=declined)
        return ready

    def _take_over(self, state_received: int, restored: int, committed: int, confirm: bool) -> int:
        """The guest is ours (token taken, or COMMIT received, or the old VMM is dead): run it."""
        assert self.machine is not None and self.vmm is not None
        resumed = self.machine.resume()
        self.machine.devices.resume()
        gc.enable()
        self.vmm.register()
        sdnotify.notify(mainpid=os.getpid())
        timings = {
            "state_received_ns": state_received,
            "restored_ns": restored,
            "commit_received_ns": committed,  # protocol 3: when we took the token
            "resumed_ns": resumed,
            "restore_detail_us": self.restore_detail,
        }
        if confirm:
            try:
                self.wire.send(MessageType.RESUMED, encode(timings), timeout=1.0)
            except (WireError, OSError):
                pass  # the old VMM is gone; the guest runs here regardless
        self.channel.close()
        if self.ownership is not None:
            self.ownership.close()
        # The records' few pages stay mapped until this VMM exits: an munmap now would send a TLB shootdown IPI
        # to the CPU that runs the guest's vCPU again.
        _close_all(self.record_fds)
        self.record_fds = []
        priority.unboost()
        fault_point("successor", self.generation, "after_resumed")
        self.log.info("handover.resumed", generation=self.generation, pid=os.getpid(), registry=str(registry.run_dir()))
        return self.vmm.run()

    def _refuse(self, code: ErrorCode, message: str) -> None:
        self.log.warning("handover.refused", code=code.name, reason=message)
        try:
            self.channel.send_error(code, message, timeout=1.0)
        except (WireError, OSError):
            pass
        self._discard()

    def _discard(self) -> None:
        """Give up without ever having run the guest: drop our VM (the memfds are shared, not ours to clear)."""
        if self.vmm is not None:
            self.vmm.discard_registration()
        if self.machine is not None:
            self.machine.abandon()  # the vCPU threads end: none polls a record's eventfd any more
            self.machine.platform.close()
        self._close_records()
        self.channel.close()

    def _old_is_gone(self) -> bool:
        if self.old_pidfd < 0:
            return not registry.pid_alive(self.old_pid)
        readable, _, _ = select.select([self.old_pidfd], [], [], OLD_EXIT_GRACE)
        return bool(readable)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
