"""Put the boot vCPU in the state a BootPlan describes (the loader never touches a vCPU itself)."""

from __future__ import annotations

from hotswap.boot.plan import BootPlan, Segment
from kvm import Vcpu
from kvm._ffi import CData


def apply_boot_plan(vcpu: Vcpu, plan: BootPlan) -> None:
    sregs = vcpu.get_sregs()
    for name in ("cs", "ds", "es", "fs", "gs", "ss"):
        _set_segment(getattr(sregs, name), getattr(plan, name))
    if plan.tr is not None:
        _set_segment(sregs.tr, plan.tr)
    if plan.ldt is not None:
        _set_segment(sregs.ldt, plan.ldt)
    else:
        sregs.ldt.unusable = 1
    sregs.gdt.base, sregs.gdt.limit = plan.gdt_base, plan.gdt_limit
    sregs.idt.base, sregs.idt.limit = plan.idt_base, plan.idt_limit
    sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer = plan.cr0, plan.cr3, plan.cr4, plan.efer
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    regs.rip, regs.rsi, regs.rbx, regs.rsp, regs.rflags = plan.rip, plan.rsi, plan.rbx, plan.rsp, plan.rflags
    vcpu.set_regs(regs)


def _set_segment(target: CData, segment: Segment) -> None:
    target.base = segment.base
    target.limit = segment.limit
    target.selector = segment.selector
    target.type = segment.type
    target.present = int(segment.present)
    target.dpl = segment.dpl
    target.db = int(segment.db)
    target.s = int(segment.s)
    target.l = int(segment.l)
    target.g = int(segment.g)
    target.avl = 0
    target.unusable = 0 if segment.present else 1
