"""The Linux x86-64 boot loader: PVH ELF vmlinux and bzImage (64-bit entry), initrd, cmdline, e820, MP table.

Pure: it writes bytes into guest memory (any devices.interfaces.GuestMemory) and returns a BootPlan that the VMM
applies to the boot vCPU; it never touches KVM. `shape_cpuid` prepares each vCPU's CPUID table.
"""

from hotswap.boot.cpuid import CpuidEntry, shape_cpuid
from hotswap.boot.errors import BootError
from hotswap.boot.loader import KernelFormat, detect_format, load_kernel
from hotswap.boot.plan import BootMode, BootPlan, Segment
from hotswap.boot.ram import E820Entry, E820Type, RamLayout, e820_map, split_ram

__all__ = [
    "BootError",
    "BootMode",
    "BootPlan",
    "CpuidEntry",
    "E820Entry",
    "E820Type",
    "KernelFormat",
    "RamLayout",
    "Segment",
    "detect_format",
    "e820_map",
    "load_kernel",
    "shape_cpuid",
    "split_ram",
]
