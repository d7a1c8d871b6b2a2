"""What the VMM does with each vCPU exit. A pure function of the exit and the buses, so it is unit-tested with
hand-made exits and no /dev/kvm (kvm.exits are plain dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kvm.exits import (
    FailEntry,
    Halted,
    InternalError,
    Interrupted,
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    Shutdown,
    SystemEvent,
    Unhandled,
    VcpuExit,
)


class ExitBus(Protocol):
    def read(self, addr: int, size: int) -> bytes | None: ...

    def write(self, addr: int, data: bytes) -> bool: ...


class ExitCompletion(Protocol):
    def complete_io_in(self, data: bytes) -> None: ...

    def complete_mmio_read(self, data: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class Continue:
    """Run the vCPU again."""


@dataclass(frozen=True, slots=True)
class Stop:
    """The machine must stop: `kind` is 'reset', 'poweroff' or 'failure'; `detail` says what happened."""

    kind: str
    detail: str


CONTINUE = Continue()


def handle_exit(exit: VcpuExit, pio: ExitBus, mmio: ExitBus, vcpu: ExitCompletion) -> Continue | Stop:
    # Most frequent first: the guest's MMIO traffic, then port I/O.
    if isinstance(exit, MmioWrite):
        mmio.write(exit.addr, exit.data)
        return CONTINUE
    if isinstance(exit, MmioRead):
        vcpu.complete_mmio_read(mmio.read(exit.addr, exit.size) or b"\xff" * exit.size)
        return CONTINUE
    if isinstance(exit, IoOut):
        size = exit.size
        for offset in range(0, len(exit.data), size):  # `rep outs` delivers several items in one exit
            pio.write(exit.port, exit.data[offset : offset + size])
        return CONTINUE
    if isinstance(exit, IoIn):
        items = [pio.read(exit.port, exit.size) or b"\xff" * exit.size for _ in range(exit.count)]
        vcpu.complete_io_in(b"".join(items))
        return CONTINUE
    if isinstance(exit, Interrupted | Halted):
        return CONTINUE
    if isinstance(exit, Shutdown):
        return Stop("reset", "triple fault (KVM_EXIT_SHUTDOWN): the guest reset the CPU")
    if isinstance(exit, SystemEvent):
        if exit.name == "shutdown":
            return Stop("poweroff", "guest powered off")
        if exit.name == "reset":
            return Stop("reset", "guest requested a reset")
        return Stop("failure", f"guest system event: {exit.name}")
    if isinstance(exit, InternalError):
        return Stop("failure", describe_internal_error(exit))
    if isinstance(exit, FailEntry):
        return Stop("failure", f"KVM_EXIT_FAIL_ENTRY: hardware entry failure reason {exit.hardware_reason:#x}")
    if isinstance(exit, Unhandled):
        return Stop("failure", f"unexpected exit reason {exit.reason} (hardware reason {exit.hardware_reason:#x})")
    return Stop("failure", f"unknown exit {exit!r}")


def describe_internal_error(exit: InternalError) -> str:
    parts = [f"KVM_EXIT_INTERNAL_ERROR: {exit.reason} (suberror {exit.suberror})"]
    if exit.instruction:
        parts.append("instruction bytes " + exit.instruction.hex(" "))
    if exit.data:
        parts.append("data " + " ".join(f"{d:#x}" for d in exit.data))
    return ", ".join(parts)
