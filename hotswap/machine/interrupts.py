"""Interrupt lines for device models, backed by KVM: an irqfd per GSI, so raising an interrupt from any thread is
one eventfd write that KVM turns into an edge on the in-kernel IOAPIC/PIC (no ioctl, no vCPU exit)."""

from __future__ import annotations

import os

from kvm import Vm


class IrqfdLine:
    def __init__(self, vm: Vm, gsi: int) -> None:
        self.gsi = gsi
        self._vm = vm
        self.fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        vm.irqfd(self.fd, gsi)

    def pulse(self) -> None:
        os.eventfd_write(self.fd, 1)

    def set_level(self, high: bool) -> None:
        self._vm.irq_line(self.gsi, high)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
