"""The state codec's C happy path (hotswap/state/_fastcodec.c) against the Python reference (codec.py).

The C module must give the reference's bytes and trees for everything it accepts, and hand everything else back
(NotImplemented) so the reference encodes it or words the error. These tests compare the two on random trees,
edge values and every kind of malformed input, and check that encode()/decode() really use the C module.
"""

from __future__ import annotations

import enum
import pathlib
import random
from collections import OrderedDict
from typing import Any

import pytest

from hotswap.state import StateEncodeError, StateFormatError, codec, unpack
from hotswap.state.sample import sample_tree

try:
    from hotswap.state import _fastcodec
except ImportError:  # pragma: no cover - reported by the first test
    _fastcodec = None  # type: ignore[assignment]


DATA_DIR = pathlib.Path(__file__).resolve().parents[1] / "data"


def fast() -> Any:
    assert _fastcodec is not None
    return _fastcodec


def test_the_c_module_is_built_and_used() -> None:
    # `scripts/bootstrap` (pip install -e) builds it; without it every handover pays the slow path unnoticed.
    assert _fastcodec is not None, "hotswap.state._fastcodec is not built: run scripts/bootstrap"
    assert codec.IMPLEMENTATION == "c"


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["none", "bool", "uint", "negint", "edge", "bytes", "str"]
    if depth < 6:
        kinds += ["list", "dict", "pairs"]
    kind = rng.choice(kinds)
    if kind == "none":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "uint":
        return rng.getrandbits(rng.choice((3, 8, 32, 63, 64)))
    if kind == "negint":
        return -1 - rng.getrandbits(rng.choice((3, 32, 62, 63)))
    if kind == "edge":
        return rng.choice((0, 1, 2**63 - 1, 2**63, 2**64 - 1, -1, -(2**63)))
    if kind == "bytes":
        return rng.randbytes(rng.choice((0, 1, 16, 300)))
    if kind == "str":
        return "".join(rng.choice("az09_é€😀") for _ in range(rng.randrange(12)))
    if kind == "pairs":  # the shape of an MSR list, which the Python codec treats specially
        return [[rng.getrandbits(32), rng.getrandbits(64)] for _ in range(rng.randrange(3, 20))]
    count = rng.randrange(6)
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(count)]
    return {f"k{rng.randrange(50)}": random_value(rng, depth + 1) for _ in range(count)}


def real_trees() -> list[Any]:
    stored = unpack((DATA_DIR / "state-format2-testguest.hsstate").read_bytes()).tree
    return [stored, {"vcpus": stored["vcpus"]}, sample_tree(vcpus=4, seed=3)]


@pytest.mark.parametrize("seed", range(40))
def test_random_trees_encode_and_decode_exactly_as_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(25):
        tree = random_value(rng)
        reference = codec.encode_in_python(tree)
        assert fast().encode(tree) == reference
        decoded = fast().decode(reference)
        assert decoded == codec.decode_in_python(reference) == tree
        assert type(decoded) is type(tree)


def test_real_states_encode_and_decode_exactly_as_the_reference() -> None:
    for tree in real_trees():
        reference = codec.encode_in_python(tree)
        assert fast().encode(tree) == reference
        assert fast().decode(reference) == tree
        assert fast().decode(bytearray(reference)) == tree
        assert fast().decode(memoryview(reference)) == tree


def test_decoded_values_have_the_reference_types() -> None:
    tree = {"b": b"x", "s": "é", "i": 2**64 - 1, "n": -(2**63), "t": True, "f": False, "z": None, "l": [], "d": {}}
    decoded = fast().decode(codec.encode_in_python(tree))
    assert decoded == tree
    assert {key: type(value) for key, value in decoded.items()} == {key: type(value) for key, value in tree.items()}


class Flag(enum.IntEnum):
    ON = 1


class Name(str):
    pass


# Values the C module hands back to the reference: encode() must still give the reference's bytes.
HANDED_BACK = [
    Flag.ON,
    {"a": Flag.ON},
    OrderedDict(a=1),
    [bytearray(b"ab")],
    memoryview(b"cd"),
    Name("x"),
    {Name("k"): 1},
    2**64,
    -(2**63) - 1,
    -(2**64),
    -(2**64) - 1,
    2**200,
    -(2**200),
]


@pytest.mark.parametrize("value", HANDED_BACK, ids=repr)
def test_what_c_does_not_handle_goes_to_the_reference(value: object) -> None:
    assert fast().encode(value) is NotImplemented
    assert codec.encode(value) == codec.encode_in_python(value)
    blob = codec.encode(value)
    assert codec.decode(blob) == codec.decode_in_python(blob)


@pytest.mark.parametrize(
    "value",
    [object(), {1: "a"}, {"a": [1, 2.5]}, "\ud800", {"\udfff": 1}],
    ids=["object", "int-key", "float", "surrogate", "surrogate-key"],
)
def test_unencodable_values_get_the_reference_error(value: object) -> None:
    assert fast().encode(value) is NotImplemented
    with pytest.raises(StateEncodeError) as fast_path:
        codec.encode(value)
    with pytest.raises(StateEncodeError) as reference:
        codec.encode_in_python(value)
    assert str(fast_path.value) == str(reference.value)


def nested(depth: int) -> Any:
    tree: Any = []
    for _ in range(depth - 1):
        tree = [tree]
    return tree


def test_the_depth_limit_is_the_reference_one() -> None:
    deepest = nested(codec.MAX_DEPTH)
    assert fast().encode(deepest) == codec.encode_in_python(deepest)
    assert fast().decode(codec.encode_in_python(deepest)) == deepest
    assert fast().encode(nested(codec.MAX_DEPTH + 1)) is NotImplemented
    empty_list, one_empty_list = b"\x09\x00\x00\x00\x00", b"\x09\x01\x00\x00\x00\x09\x00\x00\x00\x00"
    too_deep = codec.encode_in_python(deepest).replace(empty_list, one_empty_list)
    assert fast().decode(too_deep) is NotImplemented
    with pytest.raises(StateFormatError, match="nested deeper"):
        codec.decode(too_deep)


def agree_on(blob: bytes) -> None:
    """decode() (C first) and the reference give the same tree, or the same error."""
    try:
        expected: Any = codec.decode_in_python(blob)
    except StateFormatError as err:
        expected = err
    result = fast().decode(blob)
    if isinstance(expected, StateFormatError):
        assert result is NotImplemented, f"C accepted what the reference rejects ({expected}): {blob!r}"
        with pytest.raises(StateFormatError) as raised:
            codec.decode(blob)
        assert str(raised.value) == str(expected)
    else:
        assert result is NotImplemented or result == expected
        assert codec.decode(blob) == expected


def test_every_truncation_and_extension_agrees_with_the_reference() -> None:
    blob = codec.encode_in_python(sample_tree(vcpus=1, seed=1))
    for length in range(len(blob)):
        agree_on(blob[:length])
    agree_on(blob + b"\x01")
    agree_on(b"")


INTERESTING_BYTES = (0, 1, 4, 5, 6, 7, 8, 9, 10, 11, 0xFF)  # every tag, one unknown, and length bytes


@pytest.mark.parametrize("seed", range(8))
def test_corrupted_bytes_agree_with_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    blobs = [codec.encode_in_python(random_value(rng)) for _ in range(20)]
    blobs.append(codec.encode_in_python(sample_tree(vcpus=1, seed=seed)))
    for blob in blobs:
        for _ in range(60):
            mutated = bytearray(blob)
            for _ in range(rng.randrange(1, 4)):
                if mutated:
                    mutated[rng.randrange(len(mutated))] = rng.choice((*INTERESTING_BYTES, rng.randrange(256)))
            agree_on(bytes(mutated))


@pytest.mark.parametrize(
    "blob",
    [
        b"\x0a\x02\x00\x00\x00" + b"\x08\x01\x00\x00\x00a\x01" * 2,  # the same key twice
        b"\x0a\x01\x00\x00\x00\x04" + b"\x00" * 8 + b"\x01",  # a key that is not a STR
        b"\x08\x02\x00\x00\x00\xc3\x28",  # invalid UTF-8
        b"\x06\x01\x00\x00\x00\x01",  # a BIGINT (not canonical: the reference says why)
        b"\x06\x09\x00\x00\x00" + b"\x00" * 8 + b"\x01",  # a canonical BIGINT: the reference decodes it
        b"\x05" + b"\xff" * 8,  # NEGINT below -2**63: the reference decodes it
        b"\x09\xff\xff\xff\xff\x01",  # a count far past the end
        b"\x0b",  # an unknown tag
        b"\x01\x01",  # trailing bytes
    ],
    ids=["duplicate-key", "int-key", "utf8", "bigint-short", "bigint", "negint-low", "count", "tag", "trailing"],
)
def test_edge_inputs_agree_with_the_reference(blob: bytes) -> None:
    agree_on(blob)
