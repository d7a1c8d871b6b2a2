"""MP table (MP spec 1.4): checksums, entry counts, and the entries a guest walks, as Linux's mpparse does."""

from __future__ import annotations

import struct

import pytest

from hotswap.boot import BootError
from hotswap.boot.mptable import build_mptable
from hotswap.layout import BIOS_AREA_START, IOAPIC_ADDR, LAPIC_ADDR, MPTABLE_ADDR

ENTRY_SIZES = {0: 20, 1: 8, 2: 8, 3: 8, 4: 8}


def parse(data: bytes) -> tuple[bytes, bytes, list[bytes]]:
    """(floating pointer, config header, entries), walking entries by their type like a guest does."""
    floating = data[:16]
    config_addr = struct.unpack_from("<I", floating, 4)[0]
    config = data[config_addr - MPTABLE_ADDR :]
    length, count = struct.unpack_from("<H", config, 4)[0], struct.unpack_from("<H", config, 34)[0]
    entries, pos = [], 44
    for _ in range(count):
        size = ENTRY_SIZES[config[pos]]
        entries.append(config[pos : pos + size])
        pos += size
    assert pos == length
    return floating, config[:length], entries


@pytest.mark.parametrize("cpus", [1, 2, 4, 64, 254])
def test_checksums_and_counts(cpus: int) -> None:
    table = build_mptable(MPTABLE_ADDR, cpus)
    floating, config, entries = parse(table.data)
    assert floating[:4] == b"_MP_" and floating[8] == 1 and floating[9] == 4
    assert sum(floating) % 256 == 0
    assert config[:4] == b"PCMP" and config[6] == 4
    assert sum(config) % 256 == 0
    assert struct.unpack_from("<I", config, 36)[0] == LAPIC_ADDR
    # cpus processors + 1 bus + 1 IOAPIC + 15 ISA IRQs (no IRQ2) + 8 pins 16..23 + 2 local interrupts
    assert table.entry_count == len(entries) == cpus + 1 + 1 + 15 + 8 + 2
    assert MPTABLE_ADDR + len(table.data) <= BIOS_AREA_START


def test_processor_entries() -> None:
    _, _, entries = parse(build_mptable(MPTABLE_ADDR, 4, cpu_signature=0xA10F11, cpu_features=0x078BFBFF).data)
    cpus = [e for e in entries if e[0] == 0]
    assert [e[1] for e in cpus] == [0, 1, 2, 3]  # APIC id = vCPU index
    assert [e[3] for e in cpus] == [3, 1, 1, 1]  # enabled, BSP flag only on CPU 0
    assert all(struct.unpack_from("<II", e, 4) == (0xA10F11, 0x078BFBFF) for e in cpus)


def test_bus_and_ioapic_entries() -> None:
    _, _, entries = parse(build_mptable(MPTABLE_ADDR, 3).data)
    (bus,) = [e for e in entries if e[0] == 1]
    assert bus[2:8] == b"ISA   "
    (ioapic,) = [e for e in entries if e[0] == 2]
    assert ioapic[1] == 3  # id after the last CPU
    assert ioapic[2] == 0x11 and ioapic[3] & 1
    assert struct.unpack_from("<I", ioapic, 4)[0] == IOAPIC_ADDR


def test_interrupt_routing() -> None:
    _, _, entries = parse(build_mptable(MPTABLE_ADDR, 2).data)
    routes = {e[5]: e[7] for e in entries if e[0] == 3}  # source IRQ -> IOAPIC pin
    assert routes[0] == 0  # the PIT on pin 0, matching KVM's default GSI routing
    assert 2 not in routes  # the cascade has no entry
    assert all(routes[irq] == irq for irq in [1, *range(3, 24)])
    assert all(e[6] == 2 and e[1] == 0 for e in entries if e[0] == 3)  # to IOAPIC id 2, type INT
    local = [e for e in entries if e[0] == 4]
    assert [(e[1], e[6], e[7]) for e in local] == [(3, 0, 0), (1, 0xFF, 1)]  # ExtINT->LINT0, NMI->LINT1 all


@pytest.mark.parametrize("cpus", [0, 255])
def test_cpu_count_limits(cpus: int) -> None:
    with pytest.raises(BootError, match="mptable"):
        build_mptable(MPTABLE_ADDR, cpus)
