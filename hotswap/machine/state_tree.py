"""The machine's parts of the state tree, checked field by field on the way in (a field this build does not know
is an error, never silently dropped)."""

from __future__ import annotations

from typing import Any

from hotswap.state import check_fields, get_field, index_path
from hotswap.state.errors import StateSchemaError
from kvm.vcpu_state import VcpuState
from kvm.vm_state import VmState

VCPU_BLOBS = ("regs", "sregs", "xsave", "xcrs", "debugregs", "lapic", "vcpu_events")
VCPU_INTS = ("id", "mp_state", "tsc_offset")
VM_BLOBS = ("pic_master", "pic_slave", "ioapic", "pit2")
VM_INTS = ("clock", "clock_flags", "clock_realtime", "clock_monotonic_ns")
MACHINE_FIELDS = frozenset({"config", "generation", "booted_at_ns"})


def vcpu_state_from_tree(data: object, index: int) -> VcpuState:
    path = index_path("vcpus", index)
    fields = check_fields(data, frozenset(VcpuState.FIELDS), path=path)
    values: dict[str, Any] = {name: get_field(fields, name, bytes, path) for name in VCPU_BLOBS}
    values.update({name: get_field(fields, name, int, path) for name in VCPU_INTS})
    msrs = get_field(fields, "msrs", bytes, path)
    if len(msrs) % 16:
        raise StateSchemaError(f"'{path}.msrs' is {len(msrs)} bytes, not a whole number of 16-byte MSR entries")
    values["msrs"] = msrs
    if values["id"] != index:
        raise StateSchemaError(f"'{path}.id' is {values['id']}, expected {index}")
    return VcpuState(**values)


def vm_state_from_tree(data: object) -> VmState:
    fields = check_fields(data, frozenset(VmState.FIELDS), path="vm")
    values: dict[str, Any] = {name: get_field(fields, name, bytes, "vm") for name in VM_BLOBS}
    values.update({name: get_field(fields, name, int, "vm") for name in VM_INTS})
    return VmState(**values)


def machine_info_from_tree(data: object) -> tuple[dict[str, Any], int, int]:
    """(config dict, generation, booted_at_ns)."""
    fields = check_fields(data, MACHINE_FIELDS, path="machine")
    return (
        get_field(fields, "config", dict, "machine"),
        get_field(fields, "generation", int, "machine"),
        get_field(fields, "booted_at_ns", int, "machine"),
    )
