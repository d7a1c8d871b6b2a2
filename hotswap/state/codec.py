"""Binary encoding of state trees: tagged values, little-endian, one pass each way.

Every value is a one-byte tag followed by its body (docs/protocol.md, "State codec"):

    NONE 0x01 | FALSE 0x02 | TRUE 0x03
    UINT   0x04  u64                      ints in [0, 2**64)
    NEGINT 0x05  u64 m                    the int -1 - m, for ints in [-2**64, 0)
    BIGINT 0x06  u32 n, n bytes           two's complement, minimal length, only for ints outside both
    BYTES  0x07  u32 n, n bytes
    STR    0x08  u32 n, n bytes of UTF-8
    LIST   0x09  u32 count, count values
    DICT   0x0A  u32 count, count (STR key, value) pairs; keys unique

Each value has exactly one encoding, so decode(encode(t)) == t and encode(decode(b)) == b. The decoder trusts
nothing: every length is checked against the end of the input before it is used.

Speed matters (this runs while the guest is paused), so encoder and decoder are each one loop over an explicit
stack of open containers, with no call per value, and lists of [index, value] pairs (MSRs) are handled whole with a
few C-level calls. Where an error sits (`vcpus[1].regs`) is worked out from that stack only once an error happens,
so the happy path pays nothing for it.

`encode` and `decode` first try the same work in C (`_fastcodec.c`, built with the package): in a handover's pause,
where this code runs cold, the C module takes half to two thirds of the Python codec's time (a fifth or less of it
warm). The C module hands anything it does not handle exactly as this reference does (subclasses, BIGINTs, every
malformed input) back to the Python codec, which encodes it or raises the error that names where it sits; without
the module the Python codec does all.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterator
from typing import Any

from hotswap.state.errors import StateEncodeError, StateFormatError
from hotswap.state.types import StateValue

try:
    from hotswap.state import _fastcodec
except ImportError:  # not built (a source checkout never installed): the Python codec does everything
    _fastcodec = None  # type: ignore[assignment]

IMPLEMENTATION = "c" if _fastcodec is not None else "python"  # shown by `hotswap info`

MAX_DEPTH = 32  # containers nested deeper than this are rejected both ways
MAX_LENGTH = 0xFFFF_FFFF  # u32 lengths and counts

TAG_NONE = 0x01
TAG_FALSE = 0x02
TAG_TRUE = 0x03
TAG_UINT = 0x04
TAG_NEGINT = 0x05
TAG_BIGINT = 0x06
TAG_BYTES = 0x07
TAG_STR = 0x08
TAG_LIST = 0x09
TAG_DICT = 0x0A

_U64_END = 1 << 64
_NEG_U64_START = -(1 << 64)

_TAG_U64 = struct.Struct("<BQ")
_TAG_U32 = struct.Struct("<BI")

_u32_from = struct.Struct("<I").unpack_from
_tag_u32_from = _TAG_U32.unpack_from
_u64_from = struct.Struct("<Q").unpack_from

_NONE_BYTES = bytes([TAG_NONE])
_FALSE_BYTES = bytes([TAG_FALSE])
_TRUE_BYTES = bytes([TAG_TRUE])

# Encoded dict keys (tag + length + UTF-8). Trees repeat the same few dozen keys; the cache is cleared if a caller
# ever feeds it an unbounded key set.
_KEY_CACHE: dict[str, bytes] = {}
_KEY_CACHE_LIMIT = 4096

# The items of a short list of non-negative ints sit at a fixed 9-byte stride, so the decoder checks all their tags
# with one slice and reads all values with one struct call. Same bytes on the wire; only the decoder takes the
# shortcut.
_PACKED_MAX = 16
_PACKED_TAGS = [bytes([TAG_UINT]) * n for n in range(_PACKED_MAX + 1)]
_PACKED_VALUES = [struct.Struct("<" + "xQ" * n).unpack_from for n in range(_PACKED_MAX + 1)]


class _Failure(Exception):
    """Internal: a codec error on its way out; `path` is filled in (innermost first) as it leaves each loop."""

    def __init__(self, message: str, offset: int | None = None, in_key: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.in_key = in_key  # raised while reading a dict key: the key is not part of the path
        self.path: list[str | int] = []


def _format_path(components: list[str | int]) -> str:
    text = ""
    for part in reversed(components):
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "the top level"


def _child_component(container: Any, child: Any) -> str | int:
    """The key or index under which `child` (compared by identity) sits in `container`."""
    pairs = container.items() if isinstance(container, dict) else enumerate(container)
    return next((key for key, value in pairs if value is child), "?")


# --- lists of [index, value] pairs ------------------------------------------------------------------------------
# A vCPU's MSRs are a list of [index, value] pairs, the most common container in a tree. When every item is a pair
# of UINTs the items have a fixed 23-byte stride, so both directions handle the whole list with a few C-level calls
# instead of a loop round per value. Same bytes on the wire as the general path, which stays the reference.

_PAIR_LIST_MIN = 4  # shorter lists are not worth the set-up
_PAIR_LIST_MAX = 1024  # longer ones take the general path
_PAIR_STRUCT_CACHE_LIMIT = 64  # an MSR list has one length per host; this only bounds odd callers
_PAIR_SIZE = 23  # LIST u32(2) UINT u64 UINT u64
_PAIR_HEAD = struct.pack("<BIB", TAG_LIST, 2, TAG_UINT)
_PAIR_FIXED_BYTES = (*((offset, _PAIR_HEAD[offset : offset + 1]) for offset in range(6)), (14, bytes([TAG_UINT])))
_pair_list_structs: dict[int, struct.Struct] = {}


def _pair_list_struct(count: int) -> struct.Struct:
    layout = _pair_list_structs.get(count)
    if layout is None:
        if len(_pair_list_structs) >= _PAIR_STRUCT_CACHE_LIMIT:
            _pair_list_structs.clear()
        layout = _pair_list_structs[count] = struct.Struct("<" + "BIBQBQ" * count)
    return layout


def _encoded_pair_list(items: list[Any]) -> bytes | None:
    """The items of `items` encoded, if they are all [int, int] pairs of u64 values; else None."""
    if len(items) > _PAIR_LIST_MAX or set(map(type, items)) != {list} or set(map(len, items)) != {2}:
        return None
    values = list(itertools.chain.from_iterable(items))
    if set(map(type, values)) != {int}:
        return None  # a bool, say: the general path encodes it
    fields: list[int] = [TAG_LIST, 2, TAG_UINT, 0, TAG_UINT, 0] * len(items)
    fields[3::6] = values[0::2]
    fields[5::6] = values[1::2]
    try:
        return _pair_list_struct(len(items)).pack(*fields)
    except struct.error:  # a negative or big int (struct range-checks each u64): the general path encodes it
        return None


def _is_pair_list(buf: bytes, pos: int, count: int) -> bool:
    """Whether the `count` items at `pos` are all [UINT, UINT] pairs: one strided slice per fixed byte."""
    stop = pos + _PAIR_SIZE * count
    if count > _PAIR_LIST_MAX or stop > len(buf):
        return False
    return all(buf[pos + offset : stop : _PAIR_SIZE] == byte * count for offset, byte in _PAIR_FIXED_BYTES)


def _read_pair_list(buf: bytes, pos: int, count: int) -> list[StateValue]:
    values = _pair_list_struct(count).unpack_from(buf, pos)
    return [[first, second] for first, second in zip(values[3::6], values[5::6], strict=True)]


# --- encoding -----------------------------------------------------------------------------------------------


def encode(tree: object) -> bytes:
    """Encode a state tree. Raises StateEncodeError naming where an unsupported value sits."""
    if _fastcodec is not None:
        encoded = _fastcodec.encode(tree)
        if encoded is not NotImplemented:
            return encoded
    return encode_in_python(tree)


def encode_in_python(tree: object) -> bytes:
    """encode() without the C module: the reference."""
    out = bytearray()
    try:
        _encode_into(out, tree, 0)
    except _Failure as failure:
        raise StateEncodeError(f"state codec: cannot encode {_format_path(failure.path)}: {failure.message}") from None
    except struct.error as err:  # a bytes or str of 4 GiB or more
        raise StateEncodeError(f"state codec: cannot encode: a length is out of range ({err})") from None
    return bytes(out)


# Values are typed Any here: the encoder dispatches on their runtime type and rejects what it does not know.
def _encode_into(out: bytearray, root: Any, depth: int) -> None:
    """Append the encoding of `root` to `out`; `depth` is how deeply `root` sits inside an enclosing tree."""
    frames: list[tuple[Iterator[tuple[Any, Any]], bool, Any]] = []  # the open containers around `items`
    container: Any = (root,)
    items: Iterator[tuple[Any, Any]] = enumerate(container)
    keyed = False
    key: Any = None
    value: Any = None
    pack_u32 = _TAG_U32.pack
    pack_u64 = _TAG_U64.pack
    keys = _KEY_CACHE
    try:
        while True:
            for key, value in items:
                if keyed:
                    out += keys.get(key) or _encoded_key(key)
                kind = type(value)
                if kind is bytes:
                    out += pack_u32(TAG_BYTES, len(value))
                    out += value
                elif kind is int:
                    if 0 <= value < _U64_END:
                        out += pack_u64(TAG_UINT, value)
                    else:
                        out += _encoded_int(value)
                elif kind is dict or kind is list:
                    if depth + len(frames) >= MAX_DEPTH:
                        raise _Failure(f"containers nested deeper than {MAX_DEPTH}")
                    out += pack_u32(TAG_DICT if kind is dict else TAG_LIST, len(value))
                    if kind is list and len(value) >= _PAIR_LIST_MIN and depth + len(frames) + 1 < MAX_DEPTH:
                        pairs = _encoded_pair_list(value)
                        if pairs is not None:
                            out += pairs
                            continue
                    if value:
                        frames.append((items, keyed, container))
                        container = value
                        keyed = kind is dict
                        items = iter(value.items()) if keyed else enumerate(value)
                        break
                elif kind is str:
                    data = value.encode()
                    out += pack_u32(TAG_STR, len(data))
                    out += data
                elif value is None:
                    out += _NONE_BYTES
                elif value is True:
                    out += _TRUE_BYTES
                elif value is False:
                    out += _FALSE_BYTES
                else:  # a subclass (IntEnum, StrEnum, OrderedDict) or a buffer: encode it as its plain type
                    _encode_into(out, _plain(value), depth + len(frames))
            else:
                if not frames:
                    return
                items, keyed, container = frames.pop()
    except (_Failure, UnicodeEncodeError) as err:
        failure = err if isinstance(err, _Failure) else _Failure(f"a string is not valid UTF-8 ({err.reason})")
        # chain[0] is the wrapper around `root`: it is not part of the path, and neither is the index in it.
        chain = [frame[2] for frame in frames] + [container]
        if frames and not failure.in_key:
            failure.path.append(key if keyed else _child_component(container, value))
        for parent, child in reversed(list(itertools.pairwise(chain[1:]))):
            failure.path.append(_child_component(parent, child))
        raise failure from None


def _encoded_key(key: object) -> bytes:
    if not isinstance(key, str):
        raise _Failure(f"dict key {key!r} has type {type(key).__name__}, not str", in_key=True)
    data = key.encode()
    if len(data) > MAX_LENGTH:
        raise _Failure(f"dict key of {len(data)} bytes is too long", in_key=True)
    encoded = _TAG_U32.pack(TAG_STR, len(data)) + data
    if type(key) is str:  # only plain str keys are cached
        if len(_KEY_CACHE) >= _KEY_CACHE_LIMIT:
            _KEY_CACHE.clear()
        _KEY_CACHE[key] = encoded
    return encoded


def _encoded_int(value: int) -> bytes:
    if 0 <= value < _U64_END:
        return _TAG_U64.pack(TAG_UINT, value)
    if _NEG_U64_START <= value < 0:
        return _TAG_U64.pack(TAG_NEGINT, -1 - value)
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    if len(data) > MAX_LENGTH:
        raise _Failure("int is too large")
    return _TAG_U32.pack(TAG_BIGINT, len(data)) + data


def _plain(value: object) -> object:
    """The plain-typed equivalent of a subclass or buffer value; anything else cannot be encoded."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    kind = type(value).__name__
    raise _Failure(f"unsupported type {kind} (a state tree holds None, bool, int, bytes, str, list, dict)")


# --- decoding -----------------------------------------------------------------------------------------------


def decode(data: bytes | bytearray | memoryview) -> StateValue:
    """Decode one state tree that fills `data` exactly. Raises StateFormatError naming where it is malformed."""
    if _fastcodec is not None:
        tree = _fastcodec.decode(data)
        if tree is not NotImplemented:
            return tree
    return decode_in_python(data)


def decode_in_python(data: bytes | bytearray | memoryview) -> StateValue:
    """decode() without the C module: the reference."""
    buf = data if type(data) is bytes else bytes(data)
    end = len(buf)
    root: list[StateValue] = []
    frames: list[tuple[Any, bool, int]] = []  # the open containers around `current`, with their items left
    current: Any = root
    keyed = False
    remaining = 1
    key = ""
    pos = start = 0
    packed_tags = _PACKED_TAGS
    packed_values = _PACKED_VALUES
    try:
        while True:
            while not remaining:
                if not frames:
                    if pos != end:
                        raise _Failure(f"{end - pos} trailing bytes after the tree", pos)
                    return root[0]
                current, keyed, remaining = frames.pop()
            remaining -= 1
            start = pos
            if keyed:
                key_tag, key_length = _tag_u32_from(buf, pos)
                if key_tag != TAG_STR:
                    raise _Failure(f"dict key has tag {key_tag:#04x}, not STR", pos, in_key=True)
                stop = pos + 5 + key_length
                if stop > end:
                    raise _Failure("dict key runs past the end", pos, in_key=True)
                key = buf[pos + 5 : stop].decode()
                if key in current:
                    raise _Failure(f"duplicate dict key {key!r}", pos, in_key=True)
                pos = start = stop
            tag = buf[pos]
            if tag == TAG_UINT:
                value: Any = _u64_from(buf, pos + 1)[0]
                pos += 9
            elif tag == TAG_BYTES:
                stop = pos + 5 + _u32_from(buf, pos + 1)[0]
                if stop > end:
                    raise _Failure("bytes value runs past the end", pos)
                value = buf[pos + 5 : stop]
                pos = stop
            elif tag in (TAG_LIST, TAG_DICT):
                count = _u32_from(buf, pos + 1)[0]
                pos += 5
                if count > end - pos:  # every item takes at least one byte
                    raise _Failure(f"container of {count} items runs past the end", start)
                if len(frames) >= MAX_DEPTH:
                    raise _Failure(f"containers nested deeper than {MAX_DEPTH}", start)
                if tag == TAG_LIST and count <= _PACKED_MAX and buf[pos : pos + 9 * count : 9] == packed_tags[count]:
                    value = list(packed_values[count](buf, pos))
                    pos += 9 * count
                elif (
                    tag == TAG_LIST
                    and count >= _PAIR_LIST_MIN
                    and len(frames) + 1 < MAX_DEPTH
                    and _is_pair_list(buf, pos, count)
                ):
                    value = _read_pair_list(buf, pos, count)
                    pos += _PAIR_SIZE * count
                else:
                    value = {} if tag == TAG_DICT else []
                    if count:
                        if keyed:
                            current[key] = value
                        else:
                            current.append(value)
                        frames.append((current, keyed, remaining))
                        current, keyed, remaining = value, tag == TAG_DICT, count
                        continue
            elif tag == TAG_STR:
                stop = pos + 5 + _u32_from(buf, pos + 1)[0]
                if stop > end:
                    raise _Failure("string runs past the end", pos)
                value = buf[pos + 5 : stop].decode()
                pos = stop
            elif tag == TAG_NONE:
                value = None
                pos += 1
            elif tag == TAG_TRUE:
                value = True
                pos += 1
            elif tag == TAG_FALSE:
                value = False
                pos += 1
            elif tag == TAG_NEGINT:
                value = -1 - _u64_from(buf, pos + 1)[0]
                pos += 9
            elif tag == TAG_BIGINT:
                value, pos = _read_big_int(buf, pos)
            else:
                raise _Failure(f"unknown tag {tag:#04x}", pos)
            if keyed:
                current[key] = value
            else:
                current.append(value)
    except (_Failure, IndexError, struct.error, UnicodeDecodeError) as err:
        failure = _as_failure(err, start)
        if not failure.in_key:
            failure.path.append(key if keyed else len(current))
        # chain[0] is the wrapper around the root: it is not part of the path, and neither is the index in it.
        chain = [frame[0] for frame in frames] + [current]
        for parent in reversed(chain[1:-1]):  # each open container's child is the last item added to it
            failure.path.append(next(reversed(parent)) if isinstance(parent, dict) else len(parent) - 1)
        where = _format_path(failure.path if frames else [])
        at = f" (byte {failure.offset})" if failure.offset is not None else ""
        raise StateFormatError(f"state codec: {failure.message} at {where}{at}") from None


def _as_failure(err: Exception, offset: int) -> _Failure:
    if isinstance(err, _Failure):
        return err
    if isinstance(err, UnicodeDecodeError):
        return _Failure(f"invalid UTF-8 in a string ({err.reason})", offset)
    return _Failure("value truncated", offset)


def _read_big_int(buf: bytes, pos: int) -> tuple[int, int]:
    stop = pos + 5 + _u32_from(buf, pos + 1)[0]
    if stop > len(buf):
        raise _Failure("BIGINT runs past the end", pos)
    data = buf[pos + 5 : stop]
    value = int.from_bytes(data, "little", signed=True)
    if _NEG_U64_START <= value < _U64_END:
        raise _Failure(f"BIGINT {value} must be encoded as UINT or NEGINT", pos)
    if len(data) != (value.bit_length() + 8) // 8:
        raise _Failure("BIGINT is not minimally encoded", pos)
    return value, stop
