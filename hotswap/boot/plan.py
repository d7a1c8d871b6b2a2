"""What the VMM applies to the boot vCPU: registers, control registers, descriptor tables and segments.

The boot loader writes guest memory and returns a BootPlan; it never touches a vCPU itself, so the plan is the
whole contract between the loader and the VMM.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

BootMode = Literal["pvh", "linux64"]


@dataclass(frozen=True)
class Segment:
    """A segment register as KVM's struct kvm_segment holds it.

    `limit` is the effective byte limit (0xFFFF_FFFF for a flat 4 GiB segment with g=1), as KVM expects it, not
    the 20-bit field of the descriptor; `descriptor()` does that conversion for the GDT copy.
    """

    base: int
    limit: int
    selector: int
    type: int
    present: bool
    dpl: int
    db: bool
    s: bool
    l: bool  # noqa: E741 - the architectural name of the long-mode bit
    g: bool

    def descriptor(self) -> bytes:
        """The 8-byte GDT descriptor for this segment (code/data/system TSS-32 forms)."""
        raw_limit = self.limit >> 12 if self.g else self.limit
        if raw_limit > 0xF_FFFF or self.base > 0xFFFF_FFFF:
            raise ValueError(f"segment descriptor: base {self.base:#x} / limit {self.limit:#x} do not fit")
        access = self.type | (self.s << 4) | (self.dpl << 5) | (self.present << 7)
        flags = (self.l << 1) | (self.db << 2) | (self.g << 3)
        return struct.pack(
            "<HHBBBB",
            raw_limit & 0xFFFF,
            self.base & 0xFFFF,
            (self.base >> 16) & 0xFF,
            access,
            (flags << 4) | (raw_limit >> 16),
            (self.base >> 24) & 0xFF,
        )


@dataclass(frozen=True)
class BootPlan:
    """The boot vCPU's initial state. Segments not listed (ldt=None) are to be marked unusable by the VMM.

    kernel_range / initrd_range are the guest-physical [start, end) the loader filled, for logs and checks.
    """

    mode: BootMode
    rip: int
    rsi: int
    rbx: int
    rsp: int
    rflags: int
    cr0: int
    cr3: int
    cr4: int
    efer: int
    gdt_base: int
    gdt_limit: int
    idt_base: int
    idt_limit: int
    cs: Segment
    ds: Segment
    es: Segment
    fs: Segment
    gs: Segment
    ss: Segment
    tr: Segment | None
    ldt: Segment | None
    kernel_range: tuple[int, int]
    initrd_range: tuple[int, int] | None
