"""virtio-mmio v2 register file: identity, feature negotiation, status machine, queues, interrupts, reset,
fatal errors, quiesce/resume and save/restore."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from virtio_fakes import (
    RAM_BASE,
    RAM_SIZE,
    DriverQueue,
    FakeInterrupt,
    FakeMemory,
    device_features,
    driver_ok,
    negotiate,
    reg_read,
    reg_write,
)

from devices.errors import StateError
from devices.virtio.constants import COMMON_FEATURES, F_EVENT_IDX, F_VERSION_1, InterruptStatus, Status, bit
from devices.virtio.device import VirtioDevice
from devices.virtio.queue import DESC_F_NEXT
from devices.virtio.transport import (
    CONFIG_GENERATION,
    DEVICE_ID,
    DRIVER_FEATURES,
    DRIVER_FEATURES_SEL,
    INTERRUPT_ACK,
    INTERRUPT_STATUS,
    MAGIC,
    QUEUE_DESC_LOW,
    QUEUE_NOTIFY,
    QUEUE_NUM,
    QUEUE_NUM_MAX,
    QUEUE_READY,
    QUEUE_SEL,
    SHM_LEN_LOW,
    STATUS,
    VENDOR,
    VERSION,
    VirtioMmioTransport,
)

EXTRA_FEATURE = 7


class EchoDevice(VirtioDevice):
    """Two queues; completes every chain with its total length; records what happened."""

    device_id = 42
    name = "echo"

    def __init__(self) -> None:
        super().__init__([8, 16])
        self.processed: list[int] = []
        self.resets = 0
        self.explode = False

    @property
    def device_features(self) -> int:
        return COMMON_FEATURES | bit(EXTRA_FEATURE)

    def config_bytes(self) -> bytes:
        return bytes(range(1, 9))

    def process_queue(self, index: int) -> None:
        self.processed.append(index)
        if self.explode:
            raise RuntimeError("bug in the device model")
        queue = self.queue(index)
        while (chain := queue.pop()) is not None:
            queue.add_used(chain.head, sum(d.length for d in chain.descriptors))

    def reset(self) -> None:
        super().reset()
        self.resets += 1

    def save(self) -> dict[str, Any]:
        return {"answer": 42}

    def restore_state(self, state: object, where: str) -> None:
        if state != {"answer": 42}:
            raise StateError(f"{where}: bad echo state")


class Rig:
    def __init__(self) -> None:
        self.memory = FakeMemory()
        self.irq = FakeInterrupt()
        self.device = EchoDevice()
        self.transport = VirtioMmioTransport(self.device, self.memory, self.irq)
        self.queues = [DriverQueue(self.memory, 8), DriverQueue(self.memory, 16)]

    def start(self, features: int | None = None) -> None:
        assert negotiate(self.transport, features)
        for i, queue in enumerate(self.queues):
            queue.configure(self.transport, i)
        driver_ok(self.transport)
        assert self.status() & Status.DRIVER_OK

    def status(self) -> int:
        return reg_read(self.transport, STATUS)

    def submit(self, queue: int = 0, length: int = 8) -> int:
        return self.queues[queue].add([(self.memory.alloc(length), length, True)])


@pytest.fixture
def rig() -> Rig:
    return Rig()


def test_identity_registers(rig: Rig) -> None:
    t = rig.transport
    assert reg_read(t, MAGIC) == 0x74726976
    assert t.read(MAGIC, 4) == b"virt"
    assert reg_read(t, VERSION) == 2
    assert reg_read(t, DEVICE_ID) == 42
    assert reg_read(t, VENDOR) != 0
    assert reg_read(t, SHM_LEN_LOW) == 0xFFFF_FFFF  # no shared memory regions
    assert t.num_queues == 2
    assert VirtioMmioTransport.QUEUE_NOTIFY_OFFSET == 0x50


def test_odd_sized_register_access_is_ignored(rig: Rig) -> None:
    assert rig.transport.read(MAGIC, 2) == b"\0\0"
    assert rig.transport.read(MAGIC + 1, 4) == bytes(4)
    rig.transport.write(STATUS, b"\x01")
    assert rig.status() == 0


def test_config_space(rig: Rig) -> None:
    assert rig.transport.read(0x100, 4) == bytes([1, 2, 3, 4])
    assert rig.transport.read(0x106, 4) == bytes([7, 8, 0, 0])  # past the end reads as zero
    assert rig.transport.read(0x100, 1) == b"\x01"
    assert reg_read(rig.transport, CONFIG_GENERATION) == 0


def test_device_feature_window(rig: Rig) -> None:
    assert device_features(rig.transport) == COMMON_FEATURES | bit(EXTRA_FEATURE)
    reg_write(rig.transport, 0x014, 2)
    assert reg_read(rig.transport, 0x010) == 0


def test_status_sequence_and_negotiation(rig: Rig) -> None:
    wanted = bit(F_VERSION_1) | bit(EXTRA_FEATURE)
    assert negotiate(rig.transport, wanted)
    assert rig.transport.driver_features == wanted
    assert rig.status() == Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK
    for i, queue in enumerate(rig.queues):
        queue.configure(rig.transport, i)
    driver_ok(rig.transport)
    assert rig.status() & Status.DRIVER_OK
    assert rig.device.active and rig.device.features == wanted


def test_features_not_offered_are_refused(rig: Rig) -> None:
    assert not negotiate(rig.transport, bit(F_VERSION_1) | bit(3))
    assert not rig.status() & Status.FEATURES_OK


def test_features_without_version_1_are_refused(rig: Rig) -> None:
    assert not negotiate(rig.transport, bit(EXTRA_FEATURE))


def test_driver_features_frozen_after_features_ok(rig: Rig) -> None:
    assert negotiate(rig.transport, bit(F_VERSION_1))
    reg_write(rig.transport, DRIVER_FEATURES_SEL, 0)
    reg_write(rig.transport, DRIVER_FEATURES, bit(EXTRA_FEATURE))
    assert rig.transport.driver_features == bit(F_VERSION_1)


def test_driver_features_ignored_before_driver_bit(rig: Rig) -> None:
    reg_write(rig.transport, DRIVER_FEATURES, 0xFFFF_FFFF)
    assert rig.transport.driver_features == 0


def test_driver_ok_without_features_ok_is_ignored(rig: Rig) -> None:
    reg_write(rig.transport, STATUS, Status.ACKNOWLEDGE | Status.DRIVER)
    reg_write(rig.transport, STATUS, Status.ACKNOWLEDGE | Status.DRIVER | Status.DRIVER_OK)
    assert not rig.status() & Status.DRIVER_OK
    assert not rig.device.active


def test_notify_processes_and_interrupts(rig: Rig) -> None:
    rig.start()
    head = rig.submit(1, 24)
    rig.transport.notify(1)
    assert rig.queues[1].take_used() == [(head, 24)]
    assert rig.irq.pulses == 1
    assert reg_read(rig.transport, INTERRUPT_STATUS) == InterruptStatus.USED_BUFFER
    reg_write(rig.transport, INTERRUPT_ACK, InterruptStatus.USED_BUFFER)
    assert reg_read(rig.transport, INTERRUPT_STATUS) == 0


def test_queue_notify_register_without_ioeventfd(rig: Rig) -> None:
    rig.start()
    head = rig.submit(0)
    reg_write(rig.transport, QUEUE_NOTIFY, 0)
    assert rig.queues[0].take_used() == [(head, 8)]


def test_event_idx_suppresses_interrupt_through_transport(rig: Rig) -> None:
    rig.start()
    rig.submit(0)
    rig.transport.notify(0)
    assert rig.irq.pulses == 1
    rig.queues[0].set_used_event(5)  # not yet
    rig.submit(0)
    rig.transport.notify(0)
    assert rig.irq.pulses == 1
    assert len(rig.queues[0].take_used()) == 2


def test_no_interrupt_when_nothing_completed(rig: Rig) -> None:
    rig.start()
    assert rig.device.processed == [0, 1]  # DRIVER_OK looks at every queue once
    rig.transport.notify(0)
    assert rig.device.processed == [0, 1, 0]
    assert rig.irq.pulses == 0


def test_buffers_made_available_before_driver_ok_are_seen(rig: Rig) -> None:
    assert negotiate(rig.transport)
    for i, queue in enumerate(rig.queues):
        queue.configure(rig.transport, i)
    head = rig.submit(0)
    driver_ok(rig.transport)
    assert rig.queues[0].take_used() == [(head, 8)]


def test_queue_registers(rig: Rig) -> None:
    t = rig.transport
    reg_write(t, QUEUE_SEL, 1)
    assert reg_read(t, QUEUE_NUM_MAX) == 16
    reg_write(t, QUEUE_SEL, 7)
    assert reg_read(t, QUEUE_NUM_MAX) == 0
    reg_write(t, QUEUE_NUM, 4)  # no such queue: ignored, no exception
    reg_write(t, QUEUE_READY, 1)
    assert reg_read(t, QUEUE_READY) == 0


def test_queue_registers_frozen_while_ready(rig: Rig) -> None:
    rig.start()
    reg_write(rig.transport, QUEUE_SEL, 0)
    reg_write(rig.transport, QUEUE_DESC_LOW, 0x1234)
    reg_write(rig.transport, QUEUE_NUM, 2)
    head = rig.submit(0)
    rig.transport.notify(0)
    assert rig.queues[0].take_used() == [(head, 8)]


def test_queue_size_not_power_of_two_needs_reset(rig: Rig) -> None:
    assert negotiate(rig.transport)
    rig.queues[0].configure(rig.transport, 0, ready=False)
    reg_write(rig.transport, QUEUE_NUM, 6)
    reg_write(rig.transport, QUEUE_READY, 1)
    assert reg_read(rig.transport, QUEUE_READY) == 0
    assert rig.status() & Status.DEVICE_NEEDS_RESET


def test_ring_outside_ram_needs_reset(rig: Rig) -> None:
    assert negotiate(rig.transport)
    rig.queues[0].configure(rig.transport, 0, ready=False)
    reg_write(rig.transport, QUEUE_DESC_LOW, RAM_BASE + RAM_SIZE - 16)
    reg_write(rig.transport, QUEUE_READY, 1)
    assert reg_read(rig.transport, QUEUE_READY) == 0
    assert rig.status() & Status.DEVICE_NEEDS_RESET
    assert rig.memory.guard_intact()


def test_notify_on_unready_or_missing_queue(rig: Rig) -> None:
    assert negotiate(rig.transport)
    rig.queues[0].configure(rig.transport, 0)  # queue 1 never made ready
    driver_ok(rig.transport)
    rig.device.processed.clear()
    rig.submit(1)
    rig.transport.notify(1)
    rig.transport.notify(5)
    rig.transport.notify(0xFFFF_FFFF)
    assert rig.device.processed == []
    assert not rig.status() & Status.DEVICE_NEEDS_RESET


def test_notify_before_driver_ok_is_ignored(rig: Rig) -> None:
    assert negotiate(rig.transport)
    rig.queues[0].configure(rig.transport, 0)
    rig.transport.notify(0)
    assert rig.device.processed == []


def test_bad_chain_sets_needs_reset_with_config_interrupt(rig: Rig) -> None:
    rig.start()
    buf = rig.memory.alloc(8)
    rig.queues[0].write_desc(0, buf, 8, DESC_F_NEXT, 0)  # loops onto itself
    rig.queues[0].publish(0)
    rig.transport.notify(0)  # must not raise
    assert rig.status() & Status.DEVICE_NEEDS_RESET
    assert reg_read(rig.transport, INTERRUPT_STATUS) & InterruptStatus.CONFIG_CHANGE
    assert rig.irq.pulses == 1
    # The device is stopped until reset, and a status write cannot clear the bit.
    rig.device.processed.clear()
    rig.transport.notify(0)
    assert rig.device.processed == []
    reg_write(rig.transport, STATUS, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK)
    assert rig.status() & Status.DEVICE_NEEDS_RESET
    assert rig.memory.guard_intact()


def test_driver_ok_after_a_fatal_error_does_not_start_the_device(rig: Rig) -> None:
    assert negotiate(rig.transport)
    rig.queues[0].configure(rig.transport, 0)
    rig.queues[1].configure(rig.transport, 1, ready=False)
    reg_write(rig.transport, QUEUE_NUM, 3)
    reg_write(rig.transport, QUEUE_READY, 1)  # refused: needs reset
    rig.submit(0)
    driver_ok(rig.transport)
    assert rig.device.processed == []
    assert not rig.device.active


def test_queue_ready_zero_stops_the_queue(rig: Rig) -> None:
    rig.start()
    reg_write(rig.transport, QUEUE_SEL, 0)
    reg_write(rig.transport, QUEUE_READY, 0)
    assert reg_read(rig.transport, QUEUE_READY) == 0
    rig.submit(0)
    rig.device.processed.clear()
    rig.transport.notify(0)
    rig.transport.quiesce()
    rig.transport.resume()
    assert rig.device.processed == [1]  # the resume re-check skips the stopped queue
    assert rig.queues[0].take_used() == []


def test_device_bug_does_not_escape_notify(rig: Rig) -> None:
    rig.start()
    rig.device.explode = True
    rig.submit(0)
    rig.transport.notify(0)
    assert rig.status() & Status.DEVICE_NEEDS_RESET


def test_reset_clears_everything_and_device_works_again(rig: Rig) -> None:
    rig.start()
    rig.submit(0)
    rig.transport.notify(0)
    reg_write(rig.transport, QUEUE_SEL, 1)
    rig.device.resets = 0
    reg_write(rig.transport, STATUS, 0)
    t = rig.transport
    assert rig.status() == 0
    assert rig.device.resets == 1 and not rig.device.active
    assert t.driver_features == 0 and t.queue_sel == 0 and t.interrupt_status == 0
    assert reg_read(t, QUEUE_READY) == 0
    assert reg_read(t, QUEUE_NUM) == 8  # back to the maximum
    # A new driver instance with fresh rings.
    rig.queues = [DriverQueue(rig.memory, 8), DriverQueue(rig.memory, 16)]
    rig.start()
    head = rig.submit(0)
    rig.transport.notify(0)
    assert rig.queues[0].take_used() == [(head, 8)]


def test_reset_after_needs_reset_recovers(rig: Rig) -> None:
    rig.start()
    rig.queues[0].publish(12)  # head out of range
    rig.transport.notify(0)
    assert rig.status() & Status.DEVICE_NEEDS_RESET
    reg_write(rig.transport, STATUS, 0)
    assert rig.status() == 0
    rig.queues = [DriverQueue(rig.memory, 8), DriverQueue(rig.memory, 16)]
    rig.start()
    head = rig.submit(0)
    rig.transport.notify(0)
    assert rig.queues[0].take_used() == [(head, 8)]


def test_quiesce_defers_and_resume_rechecks(rig: Rig) -> None:
    rig.start()
    rig.transport.quiesce()
    head = rig.submit(0)
    rig.transport.notify(0)  # arrives while quiescing: not processed now
    assert rig.queues[0].take_used() == []
    assert rig.transport.poll_fds() == []
    rig.transport.resume()
    assert rig.queues[0].take_used() == [(head, 8)]


def restored(rig: Rig, state: object) -> tuple[VirtioMmioTransport, EchoDevice]:
    device = EchoDevice()
    return VirtioMmioTransport.restore(device, rig.memory, rig.irq, state), device


def test_save_restore_continues_the_same_rings(rig: Rig) -> None:
    rig.start()
    for _ in range(3):
        rig.submit(1)
    rig.transport.notify(1)
    assert len(rig.queues[1].take_used()) == 3
    rig.transport.quiesce()
    pending = rig.submit(1)  # the notification for this one is lost with the old process
    state = rig.transport.save()
    transport, device = restored(rig, state)
    assert transport.quiesced
    assert transport.save() == state
    transport.resume()  # re-checks the queues once
    assert rig.queues[1].take_used() == [(pending, 8)]
    head = rig.submit(1)
    transport.notify(1)
    assert rig.queues[1].take_used() == [(head, 8)]
    assert device.features == rig.device.features


def test_restore_before_driver_ok(rig: Rig) -> None:
    assert negotiate(rig.transport)
    rig.queues[0].configure(rig.transport, 0)
    transport, device = restored(rig, rig.transport.save())
    transport.resume()
    assert not device.active
    rig.queues[1].configure(transport, 1)
    driver_ok(transport)
    head = rig.submit(0)
    transport.notify(0)
    assert rig.queues[0].take_used() == [(head, 8)]


def test_resume_repeats_an_unacknowledged_interrupt(rig: Rig) -> None:
    rig.start()
    rig.submit(0)
    rig.transport.notify(0)
    assert rig.irq.pulses == 1
    rig.transport.quiesce()
    transport, _ = restored(rig, rig.transport.save())
    transport.resume()
    assert rig.irq.pulses == 2  # the first pulse may have been lost in the handover
    reg_write(transport, INTERRUPT_ACK, InterruptStatus.USED_BUFFER)
    transport.quiesce()
    transport.resume()
    assert rig.irq.pulses == 2


class SmallerEcho(EchoDevice):
    """A device version that can do less than the one whose state was saved."""

    @property
    def device_features(self) -> int:
        return COMMON_FEATURES


class BiggerEcho(EchoDevice):
    """A newer device version that can do more."""

    @property
    def device_features(self) -> int:
        return COMMON_FEATURES | bit(EXTRA_FEATURE) | bit(3)


def test_successor_keeps_offering_the_saved_features(rig: Rig) -> None:
    rig.start()
    state = rig.transport.save()
    assert state["device_features"] == COMMON_FEATURES | bit(EXTRA_FEATURE)
    transport = VirtioMmioTransport.restore(BiggerEcho(), rig.memory, rig.irq, state)
    assert device_features(transport) == COMMON_FEATURES | bit(EXTRA_FEATURE)
    reg_write(transport, STATUS, 0)  # a new driver instance sees what the new device can do
    assert device_features(transport) == COMMON_FEATURES | bit(EXTRA_FEATURE) | bit(3)
    with pytest.raises(StateError, match="'device_features'"):
        VirtioMmioTransport.restore(SmallerEcho(), rig.memory, rig.irq, state)


def test_restore_rejects_unknown_field(rig: Rig) -> None:
    rig.start()
    state = rig.transport.save()
    with pytest.raises(StateError, match="unknown field 'surprise'"):
        restored(rig, {**state, "surprise": 1})


@pytest.mark.parametrize("field", ["status", "queues", "device", "config_generation", "interrupt_status"])
def test_restore_rejects_missing_field(rig: Rig, field: str) -> None:
    rig.start()
    state = rig.transport.save()
    del state[field]
    with pytest.raises(StateError, match=f"missing field '{field}'"):
        restored(rig, state)


def test_restore_rejects_unknown_queue_field(rig: Rig) -> None:
    rig.start()
    state = rig.transport.save()
    state["queues"][1]["extra"] = 0
    with pytest.raises(StateError, match=r"queues\[1\].*unknown field 'extra'"):
        restored(rig, state)


def test_restore_rejects_wrong_types_and_values(rig: Rig) -> None:
    rig.start()
    state = rig.transport.save()
    with pytest.raises(StateError, match="'status'"):
        restored(rig, {**state, "status": True})
    with pytest.raises(StateError, match="'device_id'"):
        restored(rig, {**state, "device_id": 2})
    with pytest.raises(StateError, match="'driver_features'"):
        restored(rig, {**state, "driver_features": bit(F_VERSION_1) | bit(3)})
    with pytest.raises(StateError, match="'driver_features'"):
        restored(rig, {**state, "device_features": bit(F_VERSION_1)})
    with pytest.raises(StateError, match="'queues' has 1 entries"):
        restored(rig, {**state, "queues": state["queues"][:1]})
    bad_queue = dict(state["queues"][0], desc_addr=RAM_BASE + RAM_SIZE)
    with pytest.raises(StateError, match="outside guest RAM"):
        restored(rig, {**state, "queues": [bad_queue, state["queues"][1]]})


def test_restore_keeps_event_idx_bookkeeping(rig: Rig) -> None:
    rig.start(bit(F_VERSION_1) | bit(F_EVENT_IDX))
    rig.submit(0)
    rig.transport.notify(0)
    assert rig.irq.pulses == 1
    reg_write(rig.transport, INTERRUPT_ACK, InterruptStatus.USED_BUFFER)
    rig.queues[0].set_used_event(3)
    rig.transport.quiesce()
    transport, _ = restored(rig, rig.transport.save())
    transport.resume()
    rig.submit(0)  # used idx 2: the driver asked for 3, so no interrupt
    transport.notify(0)
    assert rig.irq.pulses == 1
    rig.submit(0)
    rig.submit(0)
    transport.notify(0)
    assert rig.irq.pulses == 2


def test_state_is_plain_data(rig: Rig) -> None:
    rig.start()

    def plain(value: object) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return isinstance(value, int | bool | str | bytes)

    state = rig.transport.save()
    assert plain(state)
    assert struct.pack("<I", state["status"])  # fits the 32-bit register
