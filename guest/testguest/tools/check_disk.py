"""Host-side check of the test guest's virtio-blk journal (format: docs/test-guest.md, "The disk journal").

After the guest has stopped, every write it acknowledged (blk_acked=N in its last status line: the write and a
FLUSH after it completed) must be on the disk image, intact:

    problems = check_disk(image_path, acked_seq, blocks)      # [] when all is well

`blocks` is the journal length the guest printed (`blocks=` in its `hsg: virtio ... driver=blk` line). A block may
also hold a newer write than the acknowledged one, up to `acked_seq + newer_allowed`: by default the writes the
guest can have in flight when it stops right after a status line (exit_after). A guest stopped at any other moment
may have acknowledged more since its last status line: pass newer_allowed = blk_rate * status_ms / 1000 + 8, or more.

Also runnable: python3 guest/testguest/tools/check_disk.py IMAGE ACKED BLOCKS
"""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

BLOCK_SIZE = 4096
MAGIC = b"HSGJRNL1"
MAX_UNACKED = 8  # writes the guest may have in flight beyond the acknowledged seq (vblk.h VBLK_MAX_UNACKED)
HEADER = struct.Struct("<8sQQI4x")
DATA_WORDS = (BLOCK_SIZE - HEADER.size) // 8
CRC_FIELD = slice(24, 28)
U64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & U64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & U64
    x ^= x >> 33
    return x


def expected_data(index: int, seq: int) -> bytes:
    """Bytes 32..4095 of write `seq` to block `index`: xorshift64 (13, 7, 17) from a seed mixed from both."""
    x = _mix64(((index * 0x9E3779B97F4A7C15) & U64) ^ _mix64(seq)) | 1
    words = []
    for _ in range(DATA_WORDS):
        x ^= (x << 13) & U64
        x ^= x >> 7
        x ^= (x << 17) & U64
        words.append(x)
    return struct.pack(f"<{DATA_WORDS}Q", *words)


def block_crc(block: bytes) -> int:
    """CRC-32 (zlib) of the block with its CRC field zeroed."""
    return zlib.crc32(block[: CRC_FIELD.start] + bytes(4) + block[CRC_FIELD.stop :])


def last_acked_write(index: int, acked_seq: int, blocks: int) -> int:
    """The seq of the last acknowledged write to block `index` (write seq goes to block (seq - 1) % blocks);
    0 if none."""
    first = index + 1
    return 0 if acked_seq < first else first + (acked_seq - first) // blocks * blocks


def check_block(block: bytes, index: int, acked_seq: int, blocks: int, newer_allowed: int = MAX_UNACKED) -> str | None:
    """What is wrong with one block, or None."""
    want = last_acked_write(index, acked_seq, blocks)
    if want == 0:
        return None  # never acknowledged: anything may be there
    if len(block) < BLOCK_SIZE:
        return f"block {index}: image ends after {len(block)} of its bytes"
    magic, got_index, seq, crc = HEADER.unpack_from(block)
    if magic != MAGIC:
        return f"block {index}: magic {magic!r}, expected {MAGIC!r} (acknowledged seq {want} missing)"
    if crc != block_crc(block):
        return f"block {index}: CRC {crc:#010x} does not match its content {block_crc(block):#010x} (seq {seq})"
    if got_index != index:
        return f"block {index}: holds block {got_index}'s write (seq {seq})"
    # A newer write than the acknowledged one may have reached the disk before the guest stopped.
    newer_ok = seq > want and seq <= acked_seq + newer_allowed and (seq - want) % blocks == 0
    if seq != want and not newer_ok:
        return f"block {index}: seq {seq}, expected {want} (acknowledged) or a later unacknowledged write"
    if block[HEADER.size :] != expected_data(index, seq):
        return f"block {index}: data of seq {seq} differs from what the guest wrote"
    return None


def check_disk(image_path: str | Path, acked_seq: int, blocks: int, *, newer_allowed: int = MAX_UNACKED) -> list[str]:
    """Every problem found with the acknowledged writes on the image; [] when every one is present and intact."""
    if blocks <= 0 or newer_allowed < 0:
        raise ValueError(
            f"check_disk: blocks must be positive ({blocks}), newer_allowed not negative ({newer_allowed})"
        )
    problems = []
    with open(image_path, "rb") as image:
        for index in range(min(blocks, acked_seq)):
            image.seek(index * BLOCK_SIZE)
            problem = check_block(image.read(BLOCK_SIZE), index, acked_seq, blocks, newer_allowed)
            if problem:
                problems.append(problem)
    return problems


def main(argv: list[str]) -> int:
    if len(argv) not in (4, 5):
        print(f"usage: {argv[0]} IMAGE ACKED_SEQ BLOCKS [NEWER_ALLOWED]", file=sys.stderr)
        return 2
    newer = int(argv[4]) if len(argv) == 5 else MAX_UNACKED
    problems = check_disk(argv[1], int(argv[2]), int(argv[3]), newer_allowed=newer)
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
