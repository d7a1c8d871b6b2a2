"""Typed vCPU exits, decoded from struct kvm_run. Plain frozen dataclasses, so exit handling can be unit-tested
with hand-made exits and no /dev/kvm."""

from __future__ import annotations

from dataclasses import dataclass

from kvm._ffi import CData, ffi, lib


@dataclass(frozen=True, slots=True)
class IoIn:
    port: int
    size: int
    count: int


@dataclass(frozen=True, slots=True)
class IoOut:
    port: int
    size: int
    data: bytes  # size * count bytes


@dataclass(frozen=True, slots=True)
class MmioRead:
    addr: int
    size: int


@dataclass(frozen=True, slots=True)
class MmioWrite:
    addr: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Interrupted:
    """KVM_RUN returned EINTR (a kick) or KVM_EXIT_INTR: the vCPU stopped on request."""


@dataclass(frozen=True, slots=True)
class Halted:
    """KVM_EXIT_HLT (only without an in-kernel LAPIC)."""


@dataclass(frozen=True, slots=True)
class Shutdown:
    """KVM_EXIT_SHUTDOWN: a triple fault. Real hardware resets."""


@dataclass(frozen=True, slots=True)
class SystemEvent:
    kind: int  # KVM_SYSTEM_EVENT_*
    data: tuple[int, ...]

    @property
    def name(self) -> str:
        return {
            lib.KVM_SYSTEM_EVENT_SHUTDOWN: "shutdown",
            lib.KVM_SYSTEM_EVENT_RESET: "reset",
            lib.KVM_SYSTEM_EVENT_CRASH: "crash",
        }.get(self.kind, f"event {self.kind}")


@dataclass(frozen=True, slots=True)
class InternalError:
    """KVM_EXIT_INTERNAL_ERROR: KVM could not go on (e.g. an instruction its emulator does not handle)."""

    suberror: int
    data: tuple[int, ...]
    instruction: bytes  # bytes at RIP, when KVM reports them

    @property
    def reason(self) -> str:
        return {
            lib.KVM_INTERNAL_ERROR_EMULATION: "emulation failure",
            lib.KVM_INTERNAL_ERROR_SIMUL_EX: "exception while delivering an exception",
            lib.KVM_INTERNAL_ERROR_DELIVERY_EV: "event delivery failed",
            lib.KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: "unexpected hardware exit reason",
        }.get(self.suberror, f"suberror {self.suberror}")


@dataclass(frozen=True, slots=True)
class FailEntry:
    hardware_reason: int
    cpu: int


@dataclass(frozen=True, slots=True)
class Unhandled:
    """An exit reason hotswap does not expect (KVM_EXIT_UNKNOWN, DEBUG, EXCEPTION, ...)."""

    reason: int
    hardware_reason: int


VcpuExit = (
    IoIn
    | IoOut
    | MmioRead
    | MmioWrite
    | Interrupted
    | Halted
    | Shutdown
    | SystemEvent
    | InternalError
    | FailEntry
    | Unhandled
)

INTERRUPTED = Interrupted()
HALTED = Halted()
SHUTDOWN = Shutdown()
UNION_OFFSET = lib.hs_run_union_offset()


def decode_exit(run: CData, run_bytes: CData) -> VcpuExit:
    """Decode the exit in `run` (struct kvm_run *); `run_bytes` is the same mapping as uint8_t *."""
    reason = run.exit_reason
    union = run_bytes + UNION_OFFSET
    if reason == lib.KVM_EXIT_IO:
        io = ffi.cast("struct hs_exit_io *", union)
        if io.direction == lib.KVM_EXIT_IO_OUT:
            return IoOut(io.port, io.size, ffi.buffer(run_bytes + io.data_offset, io.size * io.count)[:])
        return IoIn(io.port, io.size, io.count)
    if reason == lib.KVM_EXIT_MMIO:
        mmio = ffi.cast("struct hs_exit_mmio *", union)
        if mmio.is_write:
            return MmioWrite(mmio.phys_addr, ffi.buffer(mmio.data, mmio.len)[:])
        return MmioRead(mmio.phys_addr, mmio.len)
    if reason == lib.KVM_EXIT_INTR:
        return INTERRUPTED
    if reason == lib.KVM_EXIT_HLT:
        return HALTED
    if reason == lib.KVM_EXIT_SHUTDOWN:
        return SHUTDOWN
    if reason == lib.KVM_EXIT_SYSTEM_EVENT:
        event = ffi.cast("struct hs_exit_system_event *", union)
        count = min(event.ndata, 16)
        return SystemEvent(event.type, tuple(int(event.data[i]) for i in range(count)))
    if reason == lib.KVM_EXIT_INTERNAL_ERROR:
        return _decode_internal_error(union)
    if reason == lib.KVM_EXIT_FAIL_ENTRY:
        fail = ffi.cast("struct hs_exit_fail_entry *", union)
        return FailEntry(int(fail.hardware_entry_failure_reason), int(fail.cpu))
    hardware = ffi.cast("struct hs_exit_hw *", union)
    return Unhandled(int(reason), int(hardware.hardware_exit_reason))


def _decode_internal_error(union: CData) -> InternalError:
    internal = ffi.cast("struct hs_exit_internal *", union)
    count = min(internal.ndata, 16)
    data = tuple(int(internal.data[i]) for i in range(count))
    instruction = b""
    if internal.suberror == lib.KVM_INTERNAL_ERROR_EMULATION:
        failure = ffi.cast("struct hs_exit_emulation_failure *", union)
        has_bytes = failure.ndata >= 3 and failure.flags & lib.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES
        if has_bytes:
            instruction = ffi.buffer(failure.insn_bytes, min(failure.insn_size, 15))[:]
    return InternalError(int(internal.suberror), data, instruction)
