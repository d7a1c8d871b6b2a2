"""Micro-benchmark (not a test): 4 KiB random reads per second through the Python virtio-blk path.

    python -m bench.blk_path [--seconds 3] [--batch 1,32,128] [--kvm-memory]

Each iteration: the fake driver posts `batch` requests (header, one 4 KiB data buffer, status), notifies once,
and reaps the used ring. The image is a 64 MiB temp file in the page cache, so this measures the Python path
(ring parsing, validation, preadv into guest memory, completion), not the disk.
"""

from __future__ import annotations

import argparse
import os
import random
import struct
import sys
import tempfile
import time
from pathlib import Path

# The fake virtio driver lives with the unit tests that also use it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))

from virtio_fakes import DriverQueue, FakeInterrupt, FakeMemory, driver_ok, negotiate

from devices.virtio.block import RequestType, VirtioBlock
from devices.virtio.transport import VirtioMmioTransport

IMAGE_BYTES = 64 * 1024 * 1024
BLOCK = 4096
QUEUE_SIZE = 256


class KvmBackedFake(FakeMemory):
    """The fake driver's allocator, but guest RAM accesses go through kvm.memory.GuestMemory on a memfd."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        from kvm.memory import GuestMemory as KvmMemory
        from kvm.memory import RegionSpec

        self.real = KvmMemory.create([RegionSpec(self.base, size)])
        for name in ("view", "read", "write", "read_u16", "read_u32", "read_u64", "write_u16", "write_u32"):
            setattr(self, name, getattr(self.real, name))


def run(batch: int, seconds: float, memory: FakeMemory, image: Path) -> float:
    fd = os.open(image, os.O_RDWR)
    transport = VirtioMmioTransport(VirtioBlock(fd, queue_size=QUEUE_SIZE), memory, FakeInterrupt())
    queue = DriverQueue(memory, QUEUE_SIZE)
    assert negotiate(transport)
    queue.configure(transport, 0)
    driver_ok(transport)
    # One set of buffers per ring slot, reused: header, 4 KiB data, status.
    slots = [(memory.alloc(16), memory.alloc(BLOCK, 4096), memory.alloc(1)) for _ in range(batch)]
    sectors = IMAGE_BYTES // 512
    rng = random.Random(1)
    done = 0
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        for header, data, status in slots:
            memory.write(header, struct.pack("<IIQ", RequestType.IN, 0, rng.randrange(0, sectors, 8)))
            queue.add([(header, 16, False), (data, BLOCK, True), (status, 1, True)])
        transport.notify(0)
        used = queue.take_used()
        assert len(used) == batch
        done += batch
    elapsed = time.perf_counter() - start
    transport.close()
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--batch", default="1,32,128")
    parser.add_argument("--kvm-memory", action="store_true", help="use kvm.memory.GuestMemory (memfd) for RAM")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "bench.img"
        with image.open("wb") as f:
            f.write(os.urandom(IMAGE_BYTES))
        print(f"{'memory':<10} {'batch':>5} {'IOPS':>10} {'MiB/s':>8} {'us/req':>8}")
        for batch in (int(b) for b in args.batch.split(",")):
            size = 2 * 1024 * 1024 + batch * 2 * BLOCK
            memory: FakeMemory = KvmBackedFake(size) if args.kvm_memory else FakeMemory(size)
            iops = run(batch, args.seconds, memory, image)
            kind = "kvm memfd" if args.kvm_memory else "fake"
            print(f"{kind:<10} {batch:>5} {iops:>10.0f} {iops * BLOCK / 2**20:>8.1f} {1e6 / iops:>8.1f}")
            if isinstance(memory, KvmBackedFake):
                memory.real.close()


if __name__ == "__main__":
    main()
