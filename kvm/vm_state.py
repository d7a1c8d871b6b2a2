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
from kvm.vm import IRQCHIP_IOAPIC, IRQCHIP_PIC_MASTER, IRQCHIP_PIC_SLAVE, Vm


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


def capture(vm: Vm) -> VmState:
    clock, flags, realtime = vm.get_clock()
    monotonic = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    return VmState(
        clock=clock,
        clock_flags=flags,
        clock_realtime=realtime,
        clock_monotonic_ns=monotonic,
        pic_master=vm.get_irqchip(IRQCHIP_PIC_MASTER),
        pic_slave=vm.get_irqchip(IRQCHIP_PIC_SLAVE),
        ioapic=vm.get_irqchip(IRQCHIP_IOAPIC),
        pit2=vm.get_pit2(),
    )


def restore(vm: Vm, state: VmState) -> None:
    vm.set_pit2(state.pit2)
    if state.clock_flags & lib.KVM_CLOCK_REALTIME:
        vm.set_clock(state.clock, realtime_ns=state.clock_realtime)
    else:
        elapsed = time.clock_gettime_ns(time.CLOCK_MONOTONIC) - state.clock_monotonic_ns
        vm.set_clock(state.clock + max(0, elapsed))
    vm.set_irqchip(state.pic_master)
    vm.set_irqchip(state.pic_slave)
    vm.set_irqchip(state.ioapic)
