"""The guest-physical memory map and fixed interrupt numbers of a hotswap machine.

Everything that places something in guest memory or on an interrupt line takes its address from here, so the
boot loader, the device setup and the docs agree.

    0x0000_0000  RAM (low)        real-mode area; boot structures below 1 MiB (see the *_ADDR constants)
    0x0009_FC00  reserved          MP table (end of base memory, where firmware puts it)
    0x000F_0000  reserved          BIOS area (searched by guests for the MP floating pointer)
    0x0010_0000  RAM               kernels load at 1 MiB (PVH ELF: wherever their program headers say)
    ...          RAM               up to min(mem, LOW_RAM_END)
    0xC000_0000  MMIO hole         platform MMIO devices, then IOAPIC 0xFEC0_0000, LAPIC 0xFEE0_0000
    0x1_0000_0000 RAM (high)       the rest of guest RAM, if any
"""

from __future__ import annotations

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
PAGE_SIZE = 4096

# RAM
LOW_RAM_END = 0xC000_0000  # RAM below the 32-bit MMIO hole ends here
HIGH_RAM_START = 0x1_0000_0000
EBDA_START = 0x9_FC00  # end of base memory; the MP table lives here
BIOS_AREA_START = 0xF_0000
HIMEM_START = 0x10_0000  # 1 MiB

# Boot structures written by the VMM (all below 1 MiB, inside RAM)
BOOT_GDT_ADDR = 0x500
BOOT_IDT_ADDR = 0x520
PVH_START_INFO_ADDR = 0x6000  # struct hvm_start_info, followed by its memory map
PVH_MEMMAP_ADDR = 0x6040
ZERO_PAGE_ADDR = 0x7000  # struct boot_params for the bzImage path
BOOT_STACK_TOP = 0x8FF0
PML4_ADDR = 0x9000  # identity map for the 64-bit boot protocol entry
PDPT_ADDR = 0xA000
PD_ADDR = 0xB000  # 4 page directories (0xB000..0xEFFF) map the first 4 GiB with 2 MiB pages
CMDLINE_ADDR = 0x2_0000
CMDLINE_MAX = 64 * KIB
MPTABLE_ADDR = EBDA_START

# MMIO hole
MMIO_HOLE_START = LOW_RAM_END
SERIAL_MMIO_ADDR = 0xD000_0000  # an MMIO alias of COM1's 16550 registers (ring-3 code can reach it)
SERIAL_MMIO_SIZE = 0x1000
VIRTIO_MMIO_BASE = 0xD000_1000  # virtio-mmio device i lives at VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_STRIDE
VIRTIO_MMIO_STRIDE = 0x1000
VIRTIO_MMIO_SIZE = 0x200
IOAPIC_ADDR = 0xFEC0_0000
LAPIC_ADDR = 0xFEE0_0000
KVM_TSS_ADDR = 0xFFFB_D000  # 3 pages KVM needs for its real-mode TSS
KVM_IDENTITY_MAP_ADDR = 0xFFFB_C000

# Port I/O
COM1_PORT = 0x3F8
COM1_PORT_SIZE = 8
I8042_DATA_PORT = 0x60
I8042_COMMAND_PORT = 0x64

# Interrupts (GSIs on the IOAPIC)
COM1_GSI = 4
VIRTIO_FIRST_GSI = 5
VIRTIO_MAX_DEVICES = 16  # GSIs 5..20
