"""CPUID shaping per vCPU, on synthetic tables and on the one KVM reported on an AMD EPYC host."""

from __future__ import annotations

import pytest
from boot_fakes import epyc_cpuid

from hotswap.boot import BootError, CpuidEntry, shape_cpuid
from hotswap.boot.cpuid import leaf

INTEL_LIKE = [
    CpuidEntry(0, 0, 0, 0x1F, 0x756E_6547, 0x6C65_746E, 0x4965_6E69),
    CpuidEntry(1, 0, 0, 0x906EA, 0x0012_0800, 0x7FFA_FBFF, 0x0F8B_FBFF),
    CpuidEntry(4, 0, 1, 0x1C00_4121, 0x01C0_003F, 0x3F, 0),  # L1d, 8 cores x 2 threads on the host
    CpuidEntry(4, 1, 1, 0x1C00_4122, 0x01C0_003F, 0x3F, 0),
    CpuidEntry(4, 2, 1, 0x1C00_4143, 0x00C0_003F, 0x3FF, 0),
    CpuidEntry(4, 3, 1, 0x1C03_C163, 0x03C0_003F, 0x2FFF, 6),
    CpuidEntry(4, 4, 1, 0, 0, 0, 0),
    CpuidEntry(0xB, 0, 1, 1, 2, 0x100, 0),
    CpuidEntry(0xB, 1, 1, 4, 16, 0x201, 0),
    CpuidEntry(0x1F, 0, 1, 1, 2, 0x100, 0),
    CpuidEntry(0x4000_0000, 0, 0, 0x4000_0001, 0x4B4D_564B, 0x564B_4D56, 0x4D),
    CpuidEntry(0x4000_0001, 0, 0, 0x0100_7AFB, 0, 0, 0),
]


def get(entries: list[CpuidEntry], function: int, index: int = 0) -> CpuidEntry:
    entry = leaf(entries, function, index)
    assert entry is not None, f"leaf {function:#x}.{index} missing"
    return entry


@pytest.mark.parametrize("vcpu", [0, 3, 5])
def test_leaf1_carries_apic_id_count_htt_and_hypervisor(vcpu: int) -> None:
    out = get(shape_cpuid(INTEL_LIKE, vcpu, 6, 2_000_000), 1)
    assert out.ebx >> 24 == vcpu
    assert (out.ebx >> 16) & 0xFF == 6
    assert out.ebx & 0xFFFF == 0x0800  # CLFLUSH size kept
    assert out.ecx == 0x7FFA_FBFF | 1 << 31
    assert out.edx & 1 << 28


def test_single_vcpu_clears_htt() -> None:
    out = get(shape_cpuid(INTEL_LIKE, 0, 1, 2_000_000), 1)
    assert not out.edx & 1 << 28
    assert (out.ebx >> 16) & 0xFF == 1


@pytest.mark.parametrize("function", [0xB, 0x1F])
def test_extended_topology_levels(function: int) -> None:
    out = shape_cpuid(INTEL_LIKE, 5, 6, 2_000_000)
    levels = [e for e in out if e.function == function]
    assert [e.index for e in levels] == [0, 1, 2]
    smt, core, end = levels
    assert (smt.eax, smt.ebx, smt.ecx >> 8 & 0xFF) == (0, 1, 1)
    assert (core.eax, core.ebx, core.ecx >> 8 & 0xFF, core.ecx & 0xFF) == (3, 6, 2, 1)  # 6 cores need 3 bits
    assert (end.ebx, end.ecx >> 8 & 0xFF) == (0, 0)
    assert all(e.edx == 5 for e in levels)  # x2APIC id
    assert all(e.flags & 1 for e in levels)


def test_leaf4_core_and_sharing_counts() -> None:
    out = shape_cpuid(INTEL_LIKE, 0, 4, 2_000_000)
    l1d, l1i, l2, l3, end = (get(out, 4, i) for i in range(5))
    assert all(e.eax >> 26 == 3 for e in (l1d, l1i, l2, l3))  # 4 cores per package
    assert [(e.eax >> 14) & 0xFFF for e in (l1d, l1i, l2, l3)] == [0, 0, 0, 3]
    assert l1d.eax & 0x3FFF == 0x4121 & 0x3FFF  # cache type/level/etc. kept
    assert end.eax == 0


def test_kvm_leaves() -> None:
    out = shape_cpuid(INTEL_LIKE, 0, 2, 2_345_678)
    sig = get(out, 0x4000_0000)
    assert sig.eax == 0x4000_0010
    assert b"".join(r.to_bytes(4, "little") for r in (sig.ebx, sig.ecx, sig.edx)) == b"KVMKVMKVM\0\0\0"
    assert get(out, 0x4000_0001).eax == 0x0100_7AFB  # passed through as KVM reports it
    timing = get(out, 0x4000_0010)
    assert (timing.eax, timing.ebx) == (2_345_678, 1_000_000)
    assert sum(1 for e in out if e.function == 0x4000_0000) == 1


def test_missing_kvm_features_leaf_is_added_empty() -> None:
    out = shape_cpuid(INTEL_LIKE[:2], 0, 1, 1_000_000)
    assert get(out, 0x4000_0001).eax == 0
    assert leaf(out, 0xB) is None  # not invented when KVM does not report it


def test_input_is_not_modified_and_order_is_kept() -> None:
    table = list(INTEL_LIKE)
    out = shape_cpuid(table, 1, 2, 1_000_000)
    assert table == INTEL_LIKE
    assert [e.function for e in out][:3] == [0, 1, 4]


def test_epyc_table() -> None:
    table = epyc_cpuid()
    for vcpu in range(3):
        out = shape_cpuid(table, vcpu, 3, 2_994_374)
        assert get(out, 1).ebx >> 24 == vcpu
        assert get(out, 0xB, 0).edx == get(out, 0xB, 1).edx == vcpu
        assert get(out, 0x8000_001E).eax == vcpu and get(out, 0x8000_001E).ebx == vcpu
        nc = get(out, 0x8000_0008).ecx
        assert (nc & 0xFF, (nc >> 12) & 0xF) == (2, 2)
        assert [(get(out, 0x8000_001D, i).eax >> 14) & 0xFFF for i in range(4)] == [0, 0, 0, 2]
        assert get(out, 0x8000_001D, 4).eax == 0
        assert get(out, 0x4000_0010).eax == 2_994_374
        assert len(out) == len(table) - 1 + 3 + 1  # 0xB: 1 subleaf -> 3; 0x40000010 added


@pytest.mark.parametrize(
    ("vcpu", "cpus", "khz", "message"),
    [(2, 2, 1000, "index"), (0, 0, 1000, "outside"), (0, 256, 1000, "outside"), (0, 1, 0, "TSC")],
)
def test_bad_arguments(vcpu: int, cpus: int, khz: int, message: str) -> None:
    with pytest.raises(BootError, match=message):
        shape_cpuid(INTEL_LIKE, vcpu, cpus, khz)
