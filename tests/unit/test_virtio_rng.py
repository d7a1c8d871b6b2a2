"""virtio-rng: device-writable buffers come back full of random bytes."""

from __future__ import annotations

import pytest
from virtio_fakes import DriverQueue, FakeInterrupt, FakeMemory, driver_ok, negotiate, reg_read

from devices.errors import StateError
from devices.virtio import rng
from devices.virtio.rng import VirtioRng
from devices.virtio.transport import DEVICE_ID, VirtioMmioTransport


def make() -> tuple[FakeMemory, DriverQueue, VirtioMmioTransport]:
    memory = FakeMemory()
    transport = VirtioMmioTransport(VirtioRng(), memory, FakeInterrupt())
    queue = DriverQueue(memory, rng.DEFAULT_QUEUE_SIZE)
    assert negotiate(transport)
    queue.configure(transport, 0)
    driver_ok(transport)
    return memory, queue, transport


def test_fills_writable_buffers() -> None:
    memory, queue, transport = make()
    assert reg_read(transport, DEVICE_ID) == 4
    a, b = memory.alloc(64), memory.alloc(32)
    head = queue.add([(a, 64, True), (b, 32, True)])
    transport.notify(0)
    assert queue.take_used() == [(head, 96)]
    assert memory.read(a, 64) != bytes(64) and memory.read(b, 32) != bytes(32)


def test_readable_buffers_are_left_alone_and_requests_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rng, "MAX_REQUEST_BYTES", 40)
    memory, queue, transport = make()
    readable, writable = memory.alloc(16), memory.alloc(64)
    head = queue.add([(readable, 16, False), (writable, 64, True)])
    transport.notify(0)
    assert queue.take_used() == [(head, 40)]
    assert memory.read(readable, 16) == bytes(16)
    assert memory.read(writable + 40, 24) == bytes(24)
    assert memory.guard_intact()


def test_state_is_empty_and_strict() -> None:
    _, _, transport = make()
    state = transport.save()
    assert state["device"] == {}
    VirtioMmioTransport.restore(VirtioRng(), FakeMemory(), FakeInterrupt(), state)
    with pytest.raises(StateError, match="unknown field 'entropy'"):
        VirtioMmioTransport.restore(VirtioRng(), FakeMemory(), FakeInterrupt(), {**state, "device": {"entropy": 1}})
