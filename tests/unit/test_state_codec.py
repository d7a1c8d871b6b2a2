"""The state codec: exact round trips, one encoding per value, and strict rejection of malformed input."""

from __future__ import annotations

import enum
import struct
from collections import OrderedDict
from typing import Any

import pytest

from hotswap.state import MAX_DEPTH, StateEncodeError, StateFormatError, decode, encode
from hotswap.state.codec import (
    TAG_BIGINT,
    TAG_BYTES,
    TAG_DICT,
    TAG_LIST,
    TAG_NEGINT,
    TAG_NONE,
    TAG_STR,
    TAG_TRUE,
    TAG_UINT,
)
from hotswap.state.sample import sample_tree


def u32(value: int) -> bytes:
    return struct.pack("<I", value)


def key(name: str) -> bytes:
    return bytes([TAG_STR]) + u32(len(name.encode())) + name.encode()


def uint(value: int) -> bytes:
    return bytes([TAG_UINT]) + struct.pack("<Q", value)


def nested_lists(depth: int) -> list[Any]:
    root: list[Any] = []
    inner = root
    for _ in range(depth - 1):
        child: list[Any] = []
        inner.append(child)
        inner = child
    return root


# --- round trips ----------------------------------------------------------------------------------------------

SCALARS = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    -(2**63),
    -(2**64),
    -(2**64) - 1,
    2**200 + 12345,
    -(2**200),
    b"",
    b"\x00\xff" * 100,
    "",
    "ascii",
    "ünïcødé ✓ 🙂",
]


@pytest.mark.parametrize("value", SCALARS, ids=repr)
def test_scalars_round_trip_with_their_exact_type(value: object) -> None:
    decoded = decode(encode(value))
    assert decoded == value
    assert type(decoded) is type(value)


def test_sample_tree_round_trips_and_reencodes_to_the_same_bytes() -> None:
    tree = sample_tree(vcpus=3, seed=7)
    blob = encode(tree)
    assert decode(blob) == tree
    assert encode(decode(blob)) == blob


def test_containers_round_trip_including_empty_and_mixed() -> None:
    tree = {"": [], "d": {}, "l": [[], {}, [1, [2, [3]]], {"x": {"y": None}}], "mixed": [1, -1, 2**64, b"b", "s", True]}
    assert decode(encode(tree)) == tree


def test_packed_int_lists_decode_like_any_other_list() -> None:
    # The decoder's shortcut for short lists of UINTs must agree with the general path on every boundary.
    for length in (0, 1, 2, 15, 16, 17, 40):
        value = [i * 0x1111_1111_1111 for i in range(length)]
        assert decode(encode(value)) == value
        assert decode(encode([*value, -1])) == [*value, -1]


def general_list_encoding(items: list[Any]) -> bytes:
    """A list's encoding built item by item (2-item lists are below the pair-list shortcut's minimum)."""
    return bytes([TAG_LIST]) + u32(len(items)) + b"".join(encode(item) for item in items)


@pytest.mark.parametrize(
    "pairs",
    [[[i, 2**64 - 1 - i] for i in range(count)] for count in (3, 4, 5, 50, 300)]
    + [
        [[1, 2], [3, 4], [5, 6], [7, -8]],  # a negative value
        [[1, 2], [3, 4], [5, 6], [7, 2**64]],  # a big int
        [[1, 2], [3, 4], [5, 6], [True, 8]],  # a bool is not an int here
        [[1, 2], [3, 4], [5, 6], [7, 8, 9]],  # not a pair
        [[1, 2], [3, 4], [5, 6], [7, None]],
        [[1, 2], [3, 4], [5, 6], {"a": 1}],
    ],
    ids=lambda pairs: f"{len(pairs)}-items-ending-{pairs[-1]!r}"[:40],
)
def test_pair_lists_take_the_shortcut_with_the_same_bytes(pairs: list[Any]) -> None:
    # MSR lists are encoded and decoded as a whole; the bytes and the result must be the general path's.
    blob = encode(pairs)
    assert blob == general_list_encoding(pairs)
    assert decode(blob) == pairs
    decoded: Any = decode(blob)
    assert [type(item) for item in decoded] == [type(item) for item in pairs]


def test_pair_list_decoding_notices_one_odd_item() -> None:
    pairs: list[Any] = [[i, i] for i in range(10)]
    blob = bytearray(encode(pairs))
    # Make the 7th pair's second value a NEGINT: still valid, but no longer a plain pair list.
    blob[5 + 6 * 23 + 14] = TAG_NEGINT
    decoded: Any = decode(bytes(blob))
    assert decoded[6] == [6, -7]
    assert decoded[:6] == pairs[:6] and decoded[7:] == pairs[7:]


def test_pair_lists_respect_the_depth_limit() -> None:
    def wrapped(depth: int) -> list[Any]:
        tree = nested_lists(depth)
        inner = tree
        while inner:
            inner = inner[0]
        inner.extend([[1, 2], [3, 4], [5, 6], [7, 8]])  # pairs: two more levels
        return tree

    deepest_allowed = wrapped(MAX_DEPTH - 1)
    assert decode(encode(deepest_allowed)) == deepest_allowed
    with pytest.raises(StateEncodeError, match="nested deeper"):
        encode(wrapped(MAX_DEPTH))
    header = bytes([TAG_LIST]) + u32(1)
    too_deep = header * (MAX_DEPTH - 1) + general_list_encoding([[1, 2], [3, 4], [5, 6], [7, 8]])
    rejects(too_deep, "nested deeper")


def test_dict_order_is_preserved() -> None:
    tree = {"z": 1, "a": 2, "m": 3}
    assert list(decode(encode(tree))) == ["z", "a", "m"]  # type: ignore[arg-type]


def test_subclasses_and_buffers_encode_as_their_plain_type() -> None:
    class Colour(enum.IntEnum):
        RED = 3

    class Name(str):
        pass

    tree = {Name("k"): [Colour.RED, bytearray(b"ab"), memoryview(b"cd"), OrderedDict(x=1), Name("v")]}
    assert encode(tree) == encode({"k": [3, b"ab", b"cd", {"x": 1}, "v"]})


def test_layout_of_a_small_tree_is_as_documented() -> None:
    blob = encode({"a": [1, None, True], "b": b"xy"})
    expected = (
        bytes([TAG_DICT])
        + u32(2)
        + key("a")
        + bytes([TAG_LIST])
        + u32(3)
        + uint(1)
        + bytes([TAG_NONE, TAG_TRUE])
        + key("b")
        + bytes([TAG_BYTES])
        + u32(2)
        + b"xy"
    )
    assert blob == expected


def test_negative_ints_and_big_ints_use_their_own_tags() -> None:
    assert encode(-1) == bytes([TAG_NEGINT]) + struct.pack("<Q", 0)
    assert encode(-(2**64)) == bytes([TAG_NEGINT]) + struct.pack("<Q", 2**64 - 1)
    assert encode(2**64) == bytes([TAG_BIGINT]) + u32(9) + (2**64).to_bytes(9, "little", signed=True)


# --- encoder rejects --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tree", "where", "what"),
    [
        (1.5, "the top level", "unsupported type float"),
        ({"vcpus": [{"id": 0}, {"msrs": [[1, 2], [3, 0.5]]}]}, "vcpus[1].msrs[1][1]", "float"),
        ({"a": (1, 2)}, "a", "unsupported type tuple"),
        ({"a": {1: 2}}, "a", "dict key 1 has type int, not str"),
        ({"s": {1, 2}}, "s", "unsupported type set"),
        ({"name": ["ok", "bad \udc80"]}, "name[1]", "a string is not valid UTF-8 (surrogates not allowed)"),
    ],
)
def test_encoder_names_where_an_unsupported_value_sits(tree: object, where: str, what: str) -> None:
    with pytest.raises(StateEncodeError) as info:
        encode(tree)
    assert f"cannot encode {where}:" in str(info.value)
    assert what in str(info.value)


def test_encoder_limits_nesting() -> None:
    assert decode(encode(nested_lists(MAX_DEPTH))) == nested_lists(MAX_DEPTH)
    with pytest.raises(StateEncodeError, match=f"nested deeper than {MAX_DEPTH}"):
        encode(nested_lists(MAX_DEPTH + 1))


def test_encoder_limits_nesting_through_subclassed_containers() -> None:
    tree: Any = OrderedDict(a=nested_lists(MAX_DEPTH))  # the OrderedDict itself is one more level
    with pytest.raises(StateEncodeError, match="nested deeper"):
        encode(tree)


# --- decoder rejects --------------------------------------------------------------------------------------------


def rejects(blob: bytes, *fragments: str) -> str:
    with pytest.raises(StateFormatError) as info:
        decode(blob)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_every_truncation_of_a_real_tree_is_rejected() -> None:
    blob = encode(sample_tree(vcpus=1))
    # Every prefix must fail; checking all of them would take a while, so take a dense sample plus the edges.
    for cut in [*range(0, 64), *range(64, len(blob), 97), len(blob) - 1]:
        with pytest.raises(StateFormatError):
            decode(blob[:cut])


def test_truncation_names_the_field() -> None:
    blob = encode({"vcpus": [{"id": 0}, {"id": 1, "regs": b"abcdef"}]})
    rejects(blob[:-2], "runs past the end", "vcpus[1].regs", "byte")


def test_trailing_bytes() -> None:
    rejects(encode({"a": 1}) + b"\x01", "1 trailing bytes")


def test_unknown_tag_names_its_place_and_offset() -> None:
    blob = bytearray(encode({"a": [0, 1]}))
    position = blob.index(uint(1))
    blob[position] = 0x7E
    rejects(bytes(blob), "unknown tag 0x7e", "a[1]", f"byte {position}")


def test_empty_input() -> None:
    rejects(b"", "truncated")


def test_non_str_dict_key() -> None:
    blob = bytes([TAG_DICT]) + u32(1) + uint(5) + bytes([TAG_NONE])
    rejects(blob, "dict key has tag 0x04, not STR")


def test_duplicate_keys() -> None:
    blob = bytes([TAG_DICT]) + u32(2) + key("a") + uint(1) + key("a") + uint(2)
    rejects(blob, "duplicate dict key 'a'")


def test_duplicate_keys_deep_inside_are_located() -> None:
    inner = bytes([TAG_DICT]) + u32(2) + key("k") + uint(1) + key("k") + uint(2)
    blob = bytes([TAG_DICT]) + u32(1) + key("devices") + bytes([TAG_LIST]) + u32(2) + uint(0) + inner
    rejects(blob, "duplicate dict key 'k'", "devices[1]")


def test_length_past_the_end() -> None:
    rejects(bytes([TAG_BYTES]) + u32(0xFFFF_FFFF) + b"abc", "bytes value runs past the end")
    rejects(bytes([TAG_STR]) + u32(10) + b"abc", "string runs past the end")
    rejects(bytes([TAG_LIST]) + u32(0xFFFF_FFFF), "container of 4294967295 items runs past the end")
    rejects(bytes([TAG_DICT]) + u32(1) + bytes([TAG_STR]) + u32(99) + b"k", "dict key runs past the end")


def test_excessive_nesting() -> None:
    header = bytes([TAG_LIST]) + u32(1)
    assert decode(header * (MAX_DEPTH - 1) + bytes([TAG_LIST]) + u32(0)) == nested_lists(MAX_DEPTH)
    rejects(header * MAX_DEPTH + bytes([TAG_LIST]) + u32(0), f"nested deeper than {MAX_DEPTH}")
    # A hostile input nests far deeper than Python's recursion limit: still a clean error.
    rejects(header * 100_000, "nested deeper")


def test_invalid_utf8() -> None:
    rejects(bytes([TAG_STR]) + u32(2) + b"\xc3\x28", "invalid UTF-8")
    rejects(bytes([TAG_DICT]) + u32(1) + bytes([TAG_STR]) + u32(1) + b"\xff" + uint(1), "invalid UTF-8")


def test_non_canonical_big_int_is_rejected() -> None:
    small = 5
    rejects(bytes([TAG_BIGINT]) + u32(1) + small.to_bytes(1, "little"), "must be encoded as UINT or NEGINT")
    padded = (2**64).to_bytes(12, "little", signed=True)
    rejects(bytes([TAG_BIGINT]) + u32(12) + padded, "not minimally encoded")


def test_memoryview_and_bytearray_input() -> None:
    blob = encode({"x": [1, 2]})
    assert decode(bytearray(blob)) == {"x": [1, 2]}
    assert decode(memoryview(b"junk" + blob)[4:]) == {"x": [1, 2]}


# --- speed ----------------------------------------------------------------------------------------------------
