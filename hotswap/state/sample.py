"""A representative state tree with realistic sizes, for tests and benchmarks (not a real guest's state).

Sizes follow KVM's structures on x86-64: kvm_regs 144 B, kvm_sregs 312 B, kvm_xsave 4 KiB, kvm_xcrs 392 B,
kvm_debugregs 128 B, kvm_lapic_state 1 KiB, kvm_vcpu_events 64 B, kvm_clock_data 48 B, kvm_pic_state 24 B,
kvm_ioapic_state 208 B, kvm_pit_state2 112 B.
"""

from __future__ import annotations

import random
import struct

from hotswap.state.types import StateDict, StateValue

# A typical MSR list (~50, as KVM_GET_MSR_INDEX_LIST plus the paravirt MSRs give on the development host):
# architectural and AMD/Intel system MSRs, the KVM paravirt ones (0x4b564d00..) and the MCE bank registers.
_MSR_INDICES = (
    *(0x10, 0x1B, 0x3A, 0x48, 0x8B, 0xFE, 0x122, 0x174, 0x175, 0x176, 0x179, 0x17A, 0x1A0, 0x1D9, 0x277),
    *(0x2FF, 0x345, 0x6E0, 0x10A, 0x3F1, 0x4D0),
    *(0xC0000080, 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084, 0xC0000100, 0xC0000101, 0xC0000102),
    *(0xC0000103, 0xC0010117),
    *(0x4B564D00, 0x4B564D01, 0x4B564D02, 0x4B564D03, 0x4B564D04, 0x4B564D05, 0x4B564D06, 0x4B564D07),
    *(0x17B, 0x400, 0x401, 0x402, 0x403, 0x404, 0x405, 0x406, 0x407, 0x408, 0x409),
)


def sample_tree(vcpus: int = 2, seed: int = 0) -> StateDict:
    """A tree shaped like a small machine's state: `vcpus` vCPUs, a serial port, a virtio-blk and a virtio-rng."""
    rng = random.Random(seed)

    def blob(size: int) -> bytes:
        return rng.randbytes(size)

    vcpu_list: list[StateValue] = []
    for index in range(vcpus):
        # Format 2: the raw struct kvm_msr_entry array (u32 index, u32 reserved, u64 data).
        msrs = b"".join(struct.pack("<IxxxxQ", msr, rng.getrandbits(64)) for msr in _MSR_INDICES)
        vcpu_list.append(
            {
                "id": index,
                "mp_state": 0,
                "regs": blob(144),
                "sregs": blob(312),
                "xsave": blob(4096),
                "xcrs": blob(392),
                "debugregs": blob(128),
                "lapic": blob(1024),
                "msrs": msrs,
                "vcpu_events": blob(64),
                "tsc_offset": -rng.getrandbits(62),
            }
        )
    return {
        "machine": {
            "name": "sample",
            "memory_mib": 512,
            "vcpus": vcpus,
            "cmdline": "console=ttyS0 reboot=k panic=1 virtio_mmio.device=512@0xd0001000:5",
            "kernel": "/var/lib/hotswap/vmlinux",
            "hugepages": False,
        },
        "vm": {
            "clock": blob(48),
            "pic_master": blob(24),
            "pic_slave": blob(24),
            "ioapic": blob(208),
            "pit2": blob(112),
        },
        "vcpus": vcpu_list,
        "devices": {
            "serial0": {
                "kind": "serial-16550",
                "state": {
                    "ier": 1,
                    "lcr": 3,
                    "mcr": 8,
                    "lsr": 0x60,
                    "msr": 0xB0,
                    "scr": 0,
                    "dll": 1,
                    "dlm": 0,
                    "iir": 1,
                    "rx": b"",
                    "thr_empty_pending": False,
                },
            },
            "blk0": {
                "kind": "virtio-blk",
                "state": {
                    "status": 15,
                    "features": 0x1_3000_0044,
                    "queues": [
                        {
                            "size": 256,
                            "ready": True,
                            "desc": 0x7F00_0000,
                            "avail": 0x7F00_1000,
                            "used": 0x7F00_2000,
                            "next_avail": 1234,
                            "next_used": 1234,
                        }
                    ],
                    "config": blob(60),
                },
            },
            "rng0": {
                "kind": "virtio-rng",
                "state": {
                    "status": 15,
                    "features": 0x1_0000_0000,
                    "queues": [
                        {
                            "size": 64,
                            "ready": True,
                            "desc": 0x7F10_0000,
                            "avail": 0x7F10_1000,
                            "used": 0x7F10_2000,
                            "next_avail": 7,
                            "next_used": 7,
                        }
                    ],
                },
            },
        },
    }


def count_values(value: StateValue) -> int:
    """How many values a tree holds, containers included (dict keys are not counted)."""
    if isinstance(value, dict):
        return 1 + sum(count_values(item) for item in value.values())
    if isinstance(value, list):
        return 1 + sum(count_values(item) for item in value)
    return 1
