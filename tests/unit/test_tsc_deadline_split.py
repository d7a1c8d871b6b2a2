"""split_tsc_deadline (kvm/vcpu_state.py): the restore writes IA32_TSC_DEADLINE last and alone, so it is taken
out of the MSR list wherever it sits."""

from __future__ import annotations

import struct

from kvm.vcpu_state import MSR_IA32_TSC_DEADLINE, split_tsc_deadline


def _entries(*pairs: tuple[int, int]) -> bytes:
    return b"".join(struct.pack("<IIQ", index, 0, value) for index, value in pairs)


def test_the_deadline_is_taken_out_wherever_it_sits() -> None:
    for position in range(3):
        pairs = [(0x174, 1), (0x175, 2)]
        pairs.insert(position, (MSR_IA32_TSC_DEADLINE, 0xABCDEF))
        others, deadline = split_tsc_deadline(_entries(*pairs))
        assert deadline == 0xABCDEF
        assert others == _entries((0x174, 1), (0x175, 2))


def test_no_deadline_leaves_the_list_alone() -> None:
    msrs = _entries((0x174, 1), (0x175, 2))
    assert split_tsc_deadline(msrs) == (msrs, 0)
    assert split_tsc_deadline(b"") == (b"", 0)


def test_a_value_equal_to_the_deadline_index_is_not_mistaken_for_it() -> None:
    msrs = _entries((0x174, MSR_IA32_TSC_DEADLINE), (0x175, 2))  # only u32 index fields are searched
    assert split_tsc_deadline(msrs) == (msrs, 0)
