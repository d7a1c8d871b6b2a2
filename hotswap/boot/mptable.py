"""The Intel MultiProcessor Specification 1.4 table: how a guest without ACPI finds its CPUs and IOAPIC.

Layout written at `base` (MPTABLE_ADDR, the last KiB of base memory, which Linux scans):
the 16-byte floating pointer, then the configuration table header and its entries (processors, the ISA bus,
the IOAPIC, I/O interrupt assignments, local interrupt assignments). Both parts carry a checksum that makes
their bytes sum to 0 mod 256.

Interrupt routing follows the PC convention QEMU and SeaBIOS use: ISA IRQ0 (the PIT) arrives on IOAPIC pin 2 and
IRQ2 (the 8259 cascade) has no entry; other ISA IRQs map to the pin of the same number; pins 16-23 get plain INT
entries so the platform devices above IRQ15 are routable. LINT0 is ExtINT (8259 virtual wire) on the BSP,
LINT1 is NMI on every CPU.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hotswap.boot.errors import BootError
from hotswap.layout import IOAPIC_ADDR, LAPIC_ADDR

FLOATING = struct.Struct("<4sIBBB5s")  # signature, config table address, length/16, spec rev, checksum, features
HEADER = struct.Struct("<4sHBB8s12sIHHIHBB")  # PCMP header, 44 bytes
PROCESSOR = struct.Struct("<BBBBII8x")  # 20 bytes
BUS = struct.Struct("<BB6s")  # 8 bytes
IOAPIC = struct.Struct("<BBBBI")  # 8 bytes
INTERRUPT = struct.Struct("<BBHBBBB")  # I/O and local interrupt entries, 8 bytes

SPEC_REV = 4  # MP spec 1.4
ENTRY_PROCESSOR, ENTRY_BUS, ENTRY_IOAPIC, ENTRY_IO_INTERRUPT, ENTRY_LOCAL_INTERRUPT = range(5)
INT_TYPE_INT, INT_TYPE_NMI, INT_TYPE_SMI, INT_TYPE_EXTINT = range(4)
CPU_ENABLED = 0x01
CPU_BSP = 0x02
IOAPIC_ENABLED = 0x01
LAPIC_VERSION = 0x14  # what KVM's in-kernel local APIC reports
IOAPIC_VERSION = 0x11  # KVM's in-kernel IOAPIC (82093AA)
IOAPIC_PINS = 24
ISA_IRQS = 16
ISA_BUS_ID = 0
ALL_LAPICS = 0xFF
FLAGS_CONFORM = 0  # polarity and trigger conform to the bus (ISA: active high, edge)
MAX_CPUS = 254  # 8-bit xAPIC ids, 0xFF is broadcast and the IOAPIC takes the id after the last CPU

# Defaults for the processor entries when the caller has no CPUID: family 6, with FPU and APIC feature bits.
DEFAULT_CPU_SIGNATURE = 0x600
DEFAULT_CPU_FEATURES = 0x201


@dataclass(frozen=True)
class MpTable:
    data: bytes
    config_offset: int  # where the configuration table starts inside `data`
    entry_count: int


def isa_irq_to_pin(irq: int) -> int:
    """IOAPIC pin an ISA IRQ is delivered to: the same number. KVM's default GSI routing sends GSI n to IOAPIC
    pin n (the in-kernel PIT raises GSI 0), so the table must say IRQ0 -> pin 0, as Firecracker's does; the PC
    convention of pin 2 would need a KVM_SET_GSI_ROUTING override, as QEMU installs."""
    return irq


def _checksum(data: bytes) -> int:
    return -sum(data) & 0xFF


def build_mptable(
    base: int,
    cpus: int,
    *,
    cpu_signature: int = DEFAULT_CPU_SIGNATURE,
    cpu_features: int = DEFAULT_CPU_FEATURES,
) -> MpTable:
    """The MP floating pointer and configuration table for `cpus` vCPUs (APIC id = vCPU index) at `base`."""
    if not 1 <= cpus <= MAX_CPUS:
        raise BootError(f"mptable: {cpus} vCPUs is outside 1..{MAX_CPUS}")
    ioapic_id = cpus
    entries: list[bytes] = []
    for apic_id in range(cpus):
        flags = CPU_ENABLED | (CPU_BSP if apic_id == 0 else 0)
        entries.append(PROCESSOR.pack(ENTRY_PROCESSOR, apic_id, LAPIC_VERSION, flags, cpu_signature, cpu_features))
    entries.append(BUS.pack(ENTRY_BUS, ISA_BUS_ID, b"ISA   "))
    entries.append(IOAPIC.pack(ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, IOAPIC_ENABLED, IOAPIC_ADDR))
    for irq in range(ISA_IRQS):
        if irq == 2:  # the cascade: pin 2 already carries IRQ0
            continue
        entries.append(_io_interrupt(irq, ioapic_id, isa_irq_to_pin(irq)))
    for pin in range(ISA_IRQS, IOAPIC_PINS):
        entries.append(_io_interrupt(pin, ioapic_id, pin))
    entries.append(INTERRUPT.pack(ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, FLAGS_CONFORM, ISA_BUS_ID, 0, 0, 0))
    entries.append(INTERRUPT.pack(ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, FLAGS_CONFORM, ISA_BUS_ID, 0, ALL_LAPICS, 1))

    body = b"".join(entries)
    config_addr = base + FLOATING.size
    header = HEADER.pack(
        b"PCMP",
        HEADER.size + len(body),
        SPEC_REV,
        0,
        b"HOTSWAP ",
        b"HOTSWAP VM  ",
        0,
        0,
        len(entries),
        LAPIC_ADDR,
        0,
        0,
        0,
    )
    header = _with_checksum(header + body, 7)[: HEADER.size]
    floating = _with_checksum(FLOATING.pack(b"_MP_", config_addr, 1, SPEC_REV, 0, bytes(5)), 10)
    return MpTable(floating + header + body, FLOATING.size, len(entries))


def _io_interrupt(source_irq: int, ioapic_id: int, pin: int) -> bytes:
    return INTERRUPT.pack(ENTRY_IO_INTERRUPT, INT_TYPE_INT, FLAGS_CONFORM, ISA_BUS_ID, source_irq, ioapic_id, pin)


def _with_checksum(data: bytes, offset: int) -> bytes:
    """`data` with the byte at `offset` set so that all bytes sum to zero."""
    out = bytearray(data)
    out[offset] = 0
    out[offset] = _checksum(bytes(out))
    return bytes(out)
