"""The state format upgrades this build carries: one function per format bump, turning a format N-1 tree into N.

Format 2 (this build): each vCPU's `msrs` is the raw struct kvm_msr_entry array (u32 index, u32 reserved, u64
data, little-endian; 16 bytes per MSR) instead of a list of [index, value] pairs: one copy in and out of KVM, no
per-MSR Python objects inside the pause window. The stored file tests/data/state-format1-testguest.hsstate keeps
this upgrade tested.
"""

from __future__ import annotations

import struct

from hotswap.state.errors import StateUpgradeError
from hotswap.state.schema import FORMATS
from hotswap.state.types import StateDict

_MSR_ENTRY = struct.Struct("<IxxxxQ")


@FORMATS.upgrader(2)
def msrs_as_raw_entries(tree: StateDict) -> StateDict:
    vcpus = tree.get("vcpus")
    if not isinstance(vcpus, list):
        raise StateUpgradeError("format 1 -> 2: 'vcpus' is not a list")
    for position, vcpu in enumerate(vcpus):
        pairs = vcpu.get("msrs") if isinstance(vcpu, dict) else None
        if not isinstance(vcpu, dict) or not isinstance(pairs, list):
            raise StateUpgradeError(f"format 1 -> 2: 'vcpus[{position}].msrs' is not a list of [index, value]")
        blob = bytearray()
        for pair in pairs:
            if not (isinstance(pair, list) and len(pair) == 2 and all(type(v) is int for v in pair)):
                raise StateUpgradeError(f"format 1 -> 2: 'vcpus[{position}].msrs' holds {pair!r}, not [index, value]")
            blob += _MSR_ENTRY.pack(pair[0], pair[1])
        vcpu["msrs"] = bytes(blob)
    return tree
