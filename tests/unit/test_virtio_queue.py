"""Split virtqueue: chain walking, validation of everything the driver controls, event-idx suppression."""

from __future__ import annotations

import pytest
from virtio_fakes import RAM_BASE, RAM_SIZE, DriverQueue, FakeMemory

from devices.virtio.constants import F_EVENT_IDX, F_INDIRECT_DESC, F_VERSION_1, bit
from devices.virtio.errors import VirtqueueError
from devices.virtio.queue import (
    AVAIL_F_NO_INTERRUPT,
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    Descriptor,
    Virtqueue,
    vring_need_event,
)

ALL = bit(F_VERSION_1) | bit(F_EVENT_IDX) | bit(F_INDIRECT_DESC)
OUTSIDE = RAM_BASE + RAM_SIZE  # first byte past RAM


def make(size: int = 8, features: int = ALL) -> tuple[FakeMemory, DriverQueue, Virtqueue]:
    memory = FakeMemory()
    driver = DriverQueue(memory, size)
    queue = Virtqueue(size, "test queue")
    queue.desc_addr, queue.driver_addr, queue.device_addr = driver.desc, driver.avail, driver.used
    queue.ready = True
    queue.activate(memory, features)
    return memory, driver, queue


def test_pop_direct_chain_in_order() -> None:
    memory, driver, queue = make()
    a, b = memory.alloc(64), memory.alloc(32)
    head = driver.add([(a, 64, False), (b, 32, True)])
    chain = queue.pop()
    assert chain is not None
    assert chain.head == head
    assert chain.descriptors == [Descriptor(a, 64, False), Descriptor(b, 32, True)]
    assert queue.pop() is None


def test_add_used_writes_element_then_index() -> None:
    memory, driver, queue = make()
    head = driver.add([(memory.alloc(8), 8, True)])
    chain = queue.pop()
    assert chain is not None
    queue.add_used(chain.head, 5)
    assert driver.take_used() == [(head, 5)]
    assert queue.next_used == 1


def test_indirect_chain_is_flattened() -> None:
    memory, driver, queue = make()
    bufs = [(memory.alloc(16), 16, False), (memory.alloc(512), 512, True), (memory.alloc(1), 1, True)]
    driver.add(bufs, indirect=True)
    chain = queue.pop()
    assert chain is not None
    assert [(d.gpa, d.length, d.writable) for d in chain.descriptors] == bufs


def test_split_by_direction() -> None:
    memory, driver, queue = make()
    driver.add([(memory.alloc(4), 4, False), (memory.alloc(4), 4, True), (memory.alloc(4), 4, False)])
    chain = queue.pop()
    assert chain is not None
    assert chain.split() is None  # a readable buffer after a writable one


def test_indices_wrap_around_65536() -> None:
    memory, driver, queue = make(size=4)
    buf = memory.alloc(8)
    driver.avail_idx = queue.next_avail = queue._avail_idx = 0xFFFE
    driver.last_used = queue.next_used = 0xFFFE
    for _ in range(4):
        head = driver.add([(buf, 8, True)])
        chain = queue.pop()
        assert chain is not None and chain.head == head
        queue.add_used(chain.head, 8)
    assert queue.next_avail == 2 and queue.next_used == 2
    assert len(driver.take_used()) == 4


# -- everything a driver can get wrong: a VirtqueueError, and no access outside RAM ------------------------------
def expect_error(memory: FakeMemory, queue: Virtqueue, match: str) -> None:
    with pytest.raises(VirtqueueError, match=match):
        queue.pop()
    assert memory.guard_intact()


def test_descriptor_loop() -> None:
    memory, driver, queue = make()
    buf = memory.alloc(8)
    driver.write_desc(0, buf, 8, DESC_F_NEXT, 1)
    driver.write_desc(1, buf, 8, DESC_F_NEXT, 0)
    driver.publish(0)
    expect_error(memory, queue, "loops")


def test_self_loop_in_indirect_table() -> None:
    memory, driver, queue = make()
    table = memory.alloc(32)
    buf = memory.alloc(8)
    driver.write_desc(0, buf, 8, DESC_F_NEXT, 1, table)
    driver.write_desc(1, buf, 8, DESC_F_NEXT, 1, table)
    driver.write_desc(0, table, 32, DESC_F_INDIRECT, 0)
    driver.publish(0)
    expect_error(memory, queue, "loops")


def test_chain_longer_than_queue() -> None:
    memory, driver, queue = make(size=4)
    buf = memory.alloc(8)
    entries = 5  # an indirect table is the only way past the queue size without a loop
    table = memory.alloc(16 * entries)
    for i in range(entries):
        driver.write_desc(i, buf, 8, DESC_F_NEXT if i + 1 < entries else 0, i + 1, table)
    driver.write_desc(0, table, 16 * entries, DESC_F_INDIRECT, 0)
    driver.publish(0)
    expect_error(memory, queue, "longer than the queue size")


def test_next_index_out_of_range() -> None:
    memory, driver, queue = make()
    driver.write_desc(0, memory.alloc(8), 8, DESC_F_NEXT, 8)
    driver.publish(0)
    expect_error(memory, queue, "next 8")


def test_head_index_out_of_range() -> None:
    memory, driver, queue = make()
    driver.publish(9)
    expect_error(memory, queue, "head index 9")


@pytest.mark.parametrize(
    ("gpa", "length"),
    [(OUTSIDE, 16), (OUTSIDE - 8, 16), (0, 16), (RAM_BASE, 0xFFFF_FFFF), ((1 << 64) - 8, 16)],
)
def test_buffer_outside_ram(gpa: int, length: int) -> None:
    memory, driver, queue = make()
    driver.write_desc(0, gpa, length, DESC_F_WRITE, 0)
    driver.publish(0)
    expect_error(memory, queue, "outside guest RAM")


def test_nested_indirect() -> None:
    memory, driver, queue = make()
    inner = memory.alloc(16)
    outer = memory.alloc(16)
    driver.write_desc(0, memory.alloc(8), 8, 0, 0, inner)
    driver.write_desc(0, inner, 16, DESC_F_INDIRECT, 0, outer)
    driver.write_desc(0, outer, 16, DESC_F_INDIRECT, 0)
    driver.publish(0)
    expect_error(memory, queue, "nested")


@pytest.mark.parametrize("length", [0, 24])
def test_malformed_indirect_length(length: int) -> None:
    memory, driver, queue = make()
    driver.write_desc(0, memory.alloc(32), length, DESC_F_INDIRECT, 0)
    driver.publish(0)
    expect_error(memory, queue, "multiple of 16")


def test_indirect_table_outside_ram() -> None:
    memory, driver, queue = make()
    driver.write_desc(0, OUTSIDE - 16, 32, DESC_F_INDIRECT, 0)
    driver.publish(0)
    expect_error(memory, queue, "indirect table .* outside guest RAM")


def test_indirect_with_next() -> None:
    memory, driver, queue = make()
    driver.write_desc(0, memory.alloc(16), 16, DESC_F_INDIRECT | DESC_F_NEXT, 1)
    driver.publish(0)
    expect_error(memory, queue, "NEXT")


def test_indirect_without_feature() -> None:
    memory, driver, queue = make(features=bit(F_VERSION_1))
    driver.add([(memory.alloc(8), 8, True)], indirect=True)
    expect_error(memory, queue, "not negotiated")


def test_avail_index_running_ahead() -> None:
    memory, driver, queue = make()
    memory.write_u16(driver.avail + 2, 9)  # 9 pending in a queue of 8
    expect_error(memory, queue, "ahead")


@pytest.mark.parametrize(
    ("size", "desc_offset", "match"),
    [(6, 0, "power of two"), (16, 0, "power of two"), (0, 0, "power of two"), (8, 8, "aligned")],
)
def test_bad_layout(size: int, desc_offset: int, match: str) -> None:
    memory, driver, queue = make()
    queue.size = size
    queue.desc_addr = driver.desc + desc_offset
    with pytest.raises(VirtqueueError, match=match):
        queue.check_layout(memory)


def test_ring_outside_ram() -> None:
    memory, _driver, queue = make()
    queue.device_addr = OUTSIDE - 8
    with pytest.raises(VirtqueueError, match="device area"):
        queue.check_layout(memory)


# -- notification suppression --------------------------------------------------------------------------------------
def test_vring_need_event() -> None:
    assert vring_need_event(0, 1, 0)
    assert not vring_need_event(1, 1, 0)  # driver wants to hear about entry 1, only entry 0 was used
    assert vring_need_event(4, 10, 3)
    assert not vring_need_event(10, 10, 3)
    assert vring_need_event(0xFFFF, 1, 0xFFFE)  # across the wrap
    assert not vring_need_event(5, 5, 5)
    assert not vring_need_event(2, 5, 3)  # entry 2 was used before the previous decision: already signalled
    assert vring_need_event(3, 5, 3)


def complete_one(memory: FakeMemory, driver: DriverQueue, queue: Virtqueue) -> None:
    driver.add([(memory.alloc(8), 8, True)])
    chain = queue.pop()
    assert chain is not None
    queue.add_used(chain.head, 0)


def test_event_idx_suppresses_interrupts() -> None:
    memory, driver, queue = make()
    complete_one(memory, driver, queue)
    assert queue.needs_interrupt()  # the first decision always interrupts
    driver.set_used_event(3)  # "interrupt me once used entry 3 is there"
    complete_one(memory, driver, queue)  # used idx 2
    assert not queue.needs_interrupt()
    complete_one(memory, driver, queue)  # 3
    assert not queue.needs_interrupt()
    complete_one(memory, driver, queue)  # 4: entry 3 now used
    assert queue.needs_interrupt()
    assert not queue.needs_interrupt()  # nothing new since


def test_first_decision_after_activation_always_interrupts() -> None:
    """Conservative after activation or restore: signalled_used is not trusted until one decision was made."""
    memory, driver, queue = make()
    driver.set_used_event(100)
    complete_one(memory, driver, queue)
    assert queue.needs_interrupt()
    complete_one(memory, driver, queue)
    assert not queue.needs_interrupt()


def test_no_interrupt_flag_without_event_idx() -> None:
    memory, driver, queue = make(features=bit(F_VERSION_1))
    complete_one(memory, driver, queue)
    assert queue.needs_interrupt()
    driver.set_avail_flags(AVAIL_F_NO_INTERRUPT)
    complete_one(memory, driver, queue)
    assert not queue.needs_interrupt()
    driver.set_used_event(0)  # ignored without event idx
    driver.set_avail_flags(0)
    complete_one(memory, driver, queue)
    assert queue.needs_interrupt()


def test_avail_event_published_when_empty() -> None:
    memory, driver, queue = make()
    for _ in range(3):
        driver.add([(memory.alloc(8), 8, True)])
    while queue.pop() is not None:
        pass
    assert driver.avail_event() == 3  # notify me when you publish entry 3


def test_avail_event_recheck_sees_late_entry() -> None:
    """An entry published between our empty check and the avail_event store must not be lost."""
    memory, driver, queue = make()
    buf = memory.alloc(8)
    original = queue._publish_avail_event

    def publish_then_driver_adds() -> None:
        original()
        if queue.next_avail == 0:
            driver.add([(buf, 8, True)])  # the driver saw the old avail_event and did not notify

    queue._publish_avail_event = publish_then_driver_adds  # type: ignore[method-assign]
    assert queue.pop() is not None


def test_unpop_returns_chain() -> None:
    memory, driver, queue = make()
    head = driver.add([(memory.alloc(8), 8, True)])
    chain = queue.pop()
    assert chain is not None
    queue.unpop()
    again = queue.pop()
    assert again is not None and again.head == head


def test_save_restore_round_trip() -> None:
    memory, driver, queue = make()
    complete_one(memory, driver, queue)
    queue.needs_interrupt()
    state = queue.save()
    fresh = Virtqueue(8, "fresh")
    fresh.restore(state, "q")
    assert fresh.save() == state
    with pytest.raises(Exception, match="unknown field 'bogus'"):
        fresh.restore({**state, "bogus": 1}, "q")
    without = dict(state)
    del without["next_used"]
    with pytest.raises(Exception, match="missing field 'next_used'"):
        fresh.restore(without, "q")
