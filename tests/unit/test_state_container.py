"""The state container: header, checksum, version window and the N-1 -> N upgrade path."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import pytest

from hotswap.state import (
    CURRENT_FORMAT,
    FORMATS,
    HEADER_SIZE,
    MAGIC,
    BadChecksumError,
    BadMagicError,
    FormatRegistry,
    LengthMismatchError,
    StateContainerError,
    StateDict,
    StateFormatError,
    StateSchemaError,
    StateUpgradeError,
    UnknownFlagsError,
    UnsupportedVersionError,
    encode,
    get_field,
    join_parts,
    pack,
    pack_part,
    unpack,
    unpack_part,
)
from hotswap.state.sample import sample_tree


def reseal(blob: bytes | bytearray) -> bytes:
    """Recompute the CRC after a test has edited a container, so only the edit is under test."""
    body = bytes(blob[:-4])
    return body + struct.pack("<I", zlib.crc32(body))


def test_round_trip_returns_the_version_and_the_tree() -> None:
    tree = sample_tree(vcpus=2)
    version, decoded = unpack(pack(tree))
    assert version == CURRENT_FORMAT
    assert decoded == tree


def test_header_layout() -> None:
    tree = sample_tree(vcpus=1)
    blob = pack(tree)
    payload = encode(tree)
    assert blob[:8] == MAGIC == b"HSVMSTAT"
    assert struct.unpack_from("<HHQ", blob, 8) == (CURRENT_FORMAT, 0, len(payload))
    assert blob[HEADER_SIZE:-4] == payload
    assert struct.unpack("<I", blob[-4:])[0] == zlib.crc32(blob[:-4])


def test_accepts_bytearray_and_memoryview() -> None:
    blob = pack(sample_tree(vcpus=1))
    assert unpack(bytearray(blob)).tree == unpack(memoryview(blob)).tree


def test_bad_magic() -> None:
    blob = pack(sample_tree(vcpus=1))
    with pytest.raises(BadMagicError, match="bad magic b'XXVMSTAT'"):
        unpack(b"XX" + blob[2:])
    with pytest.raises(BadMagicError):
        unpack(b"GET / HTTP/1.1\r\n\r\n")


def test_every_error_is_a_container_error_with_a_one_line_message() -> None:
    blob = pack(sample_tree(vcpus=1))
    broken = [b"", b"HSVM", blob[:20], blob[:-1], blob + b"\0", b"NOTSTATE" + blob[8:], blob[:-1] + b"\x00"]
    for candidate in broken:
        with pytest.raises(StateContainerError) as info:
            unpack(candidate)
        assert "\n" not in str(info.value)
        assert str(info.value).startswith("state container: ")


def test_truncated_and_extended_containers_are_length_mismatches() -> None:
    blob = pack(sample_tree(vcpus=1))
    with pytest.raises(LengthMismatchError, match="too short"):
        unpack(blob[:5])
    with pytest.raises(LengthMismatchError, match="too short"):
        unpack(blob[:HEADER_SIZE])
    with pytest.raises(LengthMismatchError, match=r"announces \d+ payload bytes, the container holds \d+"):
        unpack(blob[:-10])
    with pytest.raises(LengthMismatchError):
        unpack(blob + b"extra")


def test_a_flipped_bit_anywhere_is_caught() -> None:
    blob = pack(sample_tree(vcpus=1))
    for position in (8, 10, HEADER_SIZE, HEADER_SIZE + 1000, len(blob) - 5, len(blob) - 1):
        corrupted = bytearray(blob)
        corrupted[position] ^= 0x10
        with pytest.raises((BadChecksumError, LengthMismatchError)):
            unpack(bytes(corrupted))
    corrupted = bytearray(blob)
    corrupted[HEADER_SIZE + 1000] ^= 0x10
    with pytest.raises(BadChecksumError, match=r"bad checksum 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8}"):
        unpack(bytes(corrupted))


def test_unsupported_version_says_which_versions_this_build_reads() -> None:
    blob = bytearray(pack(sample_tree(vcpus=1)))
    struct.pack_into("<H", blob, 8, 99)
    with pytest.raises(
        UnsupportedVersionError, match=r"format version 99 is not supported \(this build reads 1, 2\)"
    ) as info:
        unpack(reseal(blob))
    assert info.value.version == 99
    assert info.value.readable == (CURRENT_FORMAT - 1, CURRENT_FORMAT)


def test_unknown_flags() -> None:
    blob = bytearray(pack(sample_tree(vcpus=1)))
    struct.pack_into("<H", blob, 10, 0x8000)
    with pytest.raises(UnknownFlagsError, match="0x8000"):
        unpack(reseal(blob))


def test_malformed_payload_is_a_format_error() -> None:
    blob = bytearray(pack(sample_tree(vcpus=1)))
    blob[HEADER_SIZE] = 0x7F  # the payload's first tag
    with pytest.raises(StateFormatError, match="unknown tag 0x7f"):
        unpack(reseal(blob))


def test_top_level_shape_is_checked_on_pack_and_unpack() -> None:
    tree = sample_tree(vcpus=1)
    del tree["devices"]
    with pytest.raises(StateSchemaError, match="missing field 'devices'"):
        pack(tree)
    forged = MAGIC + struct.pack("<HHQ", CURRENT_FORMAT, 0, len(encode(tree))) + encode(tree) + b"\0\0\0\0"
    with pytest.raises(StateSchemaError, match="missing field 'devices'"):
        unpack(reseal(forged))
    payload = encode([1, 2])
    forged = MAGIC + struct.pack("<HHQ", CURRENT_FORMAT, 0, len(payload)) + payload + b"\0\0\0\0"
    with pytest.raises(StateSchemaError, match="has type list, expected dict"):
        unpack(reseal(forged))


# --- the N-1 -> N mechanism, with a synthetic format 2 ----------------------------------------------------------


def format_1_to_2(tree: StateDict) -> StateDict:
    """A made-up format 2 that renamed vcpus[*].tsc_offset to tsc_adjust."""
    vcpus: list[Any] = get_field(tree, "vcpus", list)
    for vcpu in vcpus:
        vcpu["tsc_adjust"] = vcpu.pop("tsc_offset")
    return tree


def next_formats() -> FormatRegistry:
    registry = FormatRegistry(current=CURRENT_FORMAT + 1)
    registry.upgrader(CURRENT_FORMAT + 1)(format_1_to_2)
    return registry


def test_the_next_build_reads_todays_files_and_upgrades_them() -> None:
    tree: Any = sample_tree(vcpus=2)
    todays_file = pack(tree)
    version, upgraded = unpack(todays_file, formats=next_formats())
    vcpus: Any = upgraded["vcpus"]
    assert version == CURRENT_FORMAT
    assert [vcpu["tsc_adjust"] for vcpu in vcpus] == [vcpu["tsc_offset"] for vcpu in tree["vcpus"]]
    assert all("tsc_offset" not in vcpu for vcpu in vcpus)


def test_the_next_build_reads_its_own_format_without_upgrading() -> None:
    formats = next_formats()
    tree = format_1_to_2(sample_tree(vcpus=1))
    version, decoded = unpack(pack(tree, formats=formats), formats=formats)
    assert version == CURRENT_FORMAT + 1
    assert decoded == tree


def test_only_the_previous_format_is_read() -> None:
    formats = FormatRegistry(current=3, upgrades={2: format_1_to_2, 3: lambda tree: tree})
    assert formats.readable == frozenset({2, 3})
    blob = bytearray(pack(sample_tree(vcpus=1)))
    struct.pack_into("<H", blob, 8, 1)
    with pytest.raises(UnsupportedVersionError, match=r"this build reads 2, 3"):
        unpack(reseal(blob), formats=formats)


def test_today_build_rejects_tomorrows_file() -> None:
    formats = next_formats()
    blob = pack(format_1_to_2(sample_tree(vcpus=1)), formats=formats)
    with pytest.raises(UnsupportedVersionError, match=f"format version {CURRENT_FORMAT + 1} is not supported"):
        unpack(blob)


def test_a_failing_upgrade_names_the_versions() -> None:
    formats = next_formats()
    tree: Any = sample_tree(vcpus=1)
    del tree["vcpus"][0]["tsc_offset"]
    blob = pack(tree)
    with pytest.raises(StateUpgradeError, match=f"state upgrade {CURRENT_FORMAT} -> {CURRENT_FORMAT + 1} failed"):
        unpack(blob, formats=formats)


def test_pack_refuses_a_version_it_could_not_read_back() -> None:
    with pytest.raises(UnsupportedVersionError):
        pack(sample_tree(vcpus=1), version=CURRENT_FORMAT + 1)
    with pytest.raises(UnsupportedVersionError):
        pack(sample_tree(vcpus=1), version=0)


def test_registering_the_same_upgrade_twice_is_refused() -> None:
    formats = next_formats()
    with pytest.raises(ValueError, match="already registered"):
        formats.upgrader(CURRENT_FORMAT + 1)(format_1_to_2)


def test_the_shipping_build_reads_the_previous_format_once_there_is_one() -> None:
    """Guards the release rule: bumping CURRENT_FORMAT without registering an upgrade from N-1 fails here."""
    assert FORMATS.current == CURRENT_FORMAT
    if CURRENT_FORMAT > 1:
        assert CURRENT_FORMAT - 1 in FORMATS.readable
    else:
        assert FORMATS.readable == frozenset({1})


# -- parts of a tree (a protocol-4 handover sends the vCPUs, then the rest) ---------------------------------------
def test_parts_join_into_the_tree_they_were_cut_from() -> None:
    tree = sample_tree(vcpus=2)
    rest = {k: v for k, v in tree.items() if k != "vcpus"}
    joined = join_parts([unpack_part(pack_part({"vcpus": tree["vcpus"]})), unpack_part(pack_part(rest))])
    assert joined.tree == tree and joined.version == CURRENT_FORMAT


def test_parts_that_overlap_or_leave_a_field_out_are_refused() -> None:
    tree = sample_tree(vcpus=1)
    vcpus = unpack_part(pack_part({"vcpus": tree["vcpus"]}))
    with pytest.raises(StateSchemaError, match="both hold vcpus"):
        join_parts([vcpus, unpack_part(pack_part(tree))])
    with pytest.raises(StateSchemaError, match="devices"):
        join_parts([vcpus, unpack_part(pack_part({k: v for k, v in tree.items() if k not in ("vcpus", "devices")}))])


def test_a_part_is_checked_like_a_whole_container() -> None:
    blob = bytearray(pack_part({"vcpus": []}))
    blob[-1] ^= 0xFF
    with pytest.raises(BadChecksumError):
        unpack_part(bytes(blob))
