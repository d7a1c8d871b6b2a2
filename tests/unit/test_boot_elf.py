"""ELF64 + PVH entry note parsing: synthetic kernels built here, and Debian's vmlinux when the cache has it."""

from __future__ import annotations

import struct

import pytest
from boot_fakes import PVH_NOTE_TYPE, cached, make_elf, make_pvh_elf, note

from hotswap.boot import BootError
from hotswap.boot.elf import parse_elf_kernel


@pytest.mark.parametrize("desc_size", [4, 8])
def test_pvh_entry_and_segments_are_read(desc_size: int) -> None:
    kernel = parse_elf_kernel(make_pvh_elf(0x100_0040, desc_size=desc_size), "k")
    assert kernel.pvh_entry == 0x100_0040
    (segment,) = kernel.segments
    assert (segment.paddr, segment.filesz, segment.memsz) == (0x100_0000, 4096, 4096 + 0x3000)


def test_segments_load_at_physical_not_virtual_address() -> None:
    kernel = parse_elf_kernel(make_pvh_elf(), "k")
    assert kernel.segments[0].paddr == 0x100_0000  # make_elf sets p_vaddr to 0xffffffff81000000


def test_other_xen_notes_and_other_owners_are_ignored() -> None:
    data = make_elf(
        [(0x100_0000, bytes(64), 64)],
        [
            note(b"GNU\0", PVH_NOTE_TYPE, bytes(4)),
            note(b"Xen\0", 17, bytes(4)),
            note(b"Xen\0", PVH_NOTE_TYPE, (0x100_0010).to_bytes(4, "little")),
        ],
    )
    assert parse_elf_kernel(data, "k").pvh_entry == 0x100_0010


def test_elf_without_pvh_note_is_rejected_with_a_clear_message() -> None:
    data = make_elf([(0x100_0000, bytes(64), 64)], [note(b"GNU\0", 3, bytes(20))])
    with pytest.raises(BootError, match=r"^vmlinux-nopvh: .*no PVH entry note"):
        parse_elf_kernel(data, "vmlinux-nopvh")


def test_entry_above_4g_is_rejected() -> None:
    with pytest.raises(BootError, match="above 4 GiB"):
        parse_elf_kernel(make_pvh_elf(0x1_0100_0000, desc_size=8), "k")


def test_entry_outside_every_segment_is_rejected() -> None:
    with pytest.raises(BootError, match="outside every loaded segment"):
        parse_elf_kernel(make_pvh_elf(0x500_0000), "k")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"machine": 3}, "not x86-64"), ({"elf_class": 1}, "ELF64"), ({"e_type": 3}, "not an executable")],
)
def test_wrong_kind_of_elf_is_rejected(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(BootError, match=message):
        parse_elf_kernel(make_elf([(0x100_0000, bytes(64), 64)], **kwargs), "k")


def test_every_truncation_gives_a_boot_error_not_a_traceback() -> None:
    data = make_pvh_elf()
    for length in [0, 3, 16, 63, 64, 100, 120, 64 + 56, len(data) - 40, len(data) - 1]:
        with pytest.raises(BootError, match=r"^cut: "):
            parse_elf_kernel(data[:length], "cut")


def test_a_note_running_past_its_segment_is_corrupt() -> None:
    data = bytearray(make_pvh_elf())
    first_note = data.index(b"Xen\0") - 12
    struct.pack_into("<I", data, first_note + 4, 0x10000)  # descsz far beyond the segment
    with pytest.raises(BootError, match="runs past its PT_NOTE segment"):
        parse_elf_kernel(bytes(data), "k")


def test_memsz_smaller_than_filesz_is_corrupt() -> None:
    with pytest.raises(BootError, match="memsz"):
        parse_elf_kernel(make_elf([(0x100_0000, bytes(64), 32)], [note(b"Xen\0", 18, bytes(4))]), "k")


def test_debian_vmlinux_has_a_pvh_entry_inside_its_text() -> None:
    kernel = parse_elf_kernel(cached("vmlinux").read_bytes(), "vmlinux")
    text = kernel.segments[0]
    assert text.paddr == 0x100_0000
    assert text.paddr <= kernel.pvh_entry < text.paddr + text.filesz
    assert len(kernel.segments) >= 3
    assert all(s.paddr >= 0x100_0000 for s in kernel.segments)
