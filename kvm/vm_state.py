"""Capture and restore of the VM-wide state: in-kernel PIC (master, slave), IOAPIC, PIT and kvmclock.

Restore order (after every vCPU is restored, before any vCPU runs): PIT2, CLOCK, PIC master, PIC slave, IOAPIC.
The IOAPIC comes last so that no interrupt is routed before the PICs that could also receive it are in place.

kvmclock: when the host can pair the clock with its real time (KVM_CLOCK_REALTIME), KVM itself advances the clock by
the real time that passed. Otherwise the clock travels with a CLOCK_MONOTONIC timestamp taken at capture and the
restorer adds the elapsed time: both processes on one host share CLOCK_MONOTONIC. Either way the guest sees the
pause as time that passed, which is the truth, and no clock jumps back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from kvm._ffi import lib
from kvm.batch import IoctlBatch
from kvm.vm import BLOB_PARTS, Vm


@dataclass(slots=True)
class VmState:
    clock: int
    clock_flags: int
    clock_realtime: int
    clock_monotonic_ns: int  # CLOCK_MONOTONIC when the clock was read
    pic_master: bytes
    pic_slave: bytes
    ioapic: bytes
    pit2: bytes

    FIELDS = (
        "clock",
        "clock_flags",
        "clock_realtime",
        "clock_monotonic_ns",
        "pic_master",
        "pic_slave",
        "ioapic",
        "pit2",
    )

    def to_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.FIELDS}


# Every ioctl of a capture, and of a restore, runs in one C call (kvm/batch.py), in these orders. The clock is read
# last, right before the CLOCK_MONOTONIC stamp that travels with it.
CAPTURE_ORDER = ("pic_master", "pic_slave", "ioapic", "pit2", "clock")
RESTORE_ORDER = ("pit2", "clock", "pic_master", "pic_slave", "ioapic")


def prepare(vm: Vm) -> None:
    """Build the capture's and the restore's batches now, not inside a pause window."""
    _batch(vm, "capture")
    _batch(vm, "restore")


def capture(vm: Vm) -> VmState:
    _batch(vm, "capture").run()
    monotonic = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    clock, flags, realtime = vm.clock_read()
    blob = vm.part_bytes
    return VmState(
        clock=clock,
        clock_flags=flags,
        clock_realtime=realtime,
        clock_monotonic_ns=monotonic,
        pic_master=blob("pic_master"),
        pic_slave=blob("pic_slave"),
        ioapic=blob("ioapic"),
        pit2=blob("pit2"),
    )


def restore(vm: Vm, state: VmState) -> None:
    """Write a captured VM state (every blob checked before the first ioctl)."""
    for part in BLOB_PARTS:
        vm.load_part(part, getattr(state, part))
    if state.clock_flags & lib.KVM_CLOCK_REALTIME:
        vm.load_clock(state.clock, realtime_ns=state.clock_realtime)
    else:
        elapsed = time.clock_gettime_ns(time.CLOCK_MONOTONIC) - state.clock_monotonic_ns
        vm.load_clock(state.clock + max(0, elapsed))
    _batch(vm, "restore").run()


def _batch(vm: Vm, kind: str) -> IoctlBatch:
    batch = vm.batches.get(kind)
    if batch is None:
        if kind == "capture":
            steps = [vm.get_step(part) for part in CAPTURE_ORDER]
        else:
            steps = [vm.set_step(part) for part in RESTORE_ORDER]
        batch = vm.batches[kind] = IoctlBatch(vm.fd, steps)
    return batch
