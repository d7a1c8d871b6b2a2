"""The device side of a split virtqueue (virtio 1.x §2.7), with VIRTIO_F_RING_EVENT_IDX and VIRTIO_F_INDIRECT_DESC.

Layout in guest memory (little-endian):
    descriptor table  16 bytes per entry: addr u64, len u32, flags u16, next u16           (16-byte aligned)
    driver area       flags u16, idx u16, ring[size] u16, used_event u16                  (2-byte aligned)
    device area       flags u16, idx u16, ring[size] {id u32, len u32}, avail_event u16   (4-byte aligned)

Memory ordering. The driver runs on other CPUs at the same time and shares these rings through guest RAM, so the
order of our loads and stores matters:
  * read avail.idx BEFORE the ring entries and descriptors it publishes                      (load -> load)
  * write a used element BEFORE publishing it through used.idx                               (store -> store)
  * after publishing used.idx, read used_event / avail.flags to decide on an interrupt;
    after writing avail_event, read avail.idx again before going idle                        (store -> load)
Each GuestMemory call is a real load or store performed when it is called (no compiler reorders across these C
calls), in the order this module makes them. On x86-64 (TSO) loads are not reordered with older loads and stores
not with older stores, so program order gives the first two. Store -> load can be reordered by the CPU, so those
two places call `full_barrier()`.

Every address is checked through GuestMemory (which raises GuestMemoryError outside RAM); nothing outside guest RAM
is touched. Any driver mistake raises VirtqueueError, which the transport turns into DEVICE_NEEDS_RESET.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from devices.errors import GuestMemoryError
from devices.interfaces import GuestMemory
from devices.virtio.constants import F_EVENT_IDX, F_INDIRECT_DESC, U16_MASK, U32_MASK, U64_MASK, bit
from devices.virtio.errors import VirtqueueError
from devices.virtio.state import StateReader

MAX_QUEUE_SIZE = 32768

DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
AVAIL_F_NO_INTERRUPT = 1

_DESC = struct.Struct("<QIHH")
_USED_ELEM = struct.Struct("<II")
DESC_SIZE = _DESC.size

_fence_lock = threading.Lock()


def full_barrier() -> None:
    """A full memory fence: taking an uncontended lock runs a locked (atomic) instruction, a full fence on x86."""
    with _fence_lock:
        pass


def vring_need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """True when event_idx lies in [old_idx, new_idx) modulo 2^16: the other side asked to be told about it."""
    return ((new_idx - event_idx - 1) & U16_MASK) < ((new_idx - old_idx) & U16_MASK)


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


class Descriptor(NamedTuple):
    """One buffer of a chain: guest-physical address, length, and whether the device may write it."""

    gpa: int
    length: int
    writable: bool


@dataclass(slots=True)
class DescriptorChain:
    """A request: the head index (returned in the used ring) and its buffers, indirect tables flattened."""

    head: int
    descriptors: list[Descriptor] = field(default_factory=list)

    def split(self) -> tuple[list[Descriptor], list[Descriptor]] | None:
        """(device-readable, device-writable) buffers, or None if a readable buffer follows a writable one
        (the spec requires readable ones first)."""
        readable: list[Descriptor] = []
        writable: list[Descriptor] = []
        for desc in self.descriptors:
            if desc.writable:
                writable.append(desc)
            elif writable:
                return None
            else:
                readable.append(desc)
        return readable, writable


def _check_ram(memory: GuestMemory, gpa: int, length: int, what: str) -> None:
    try:
        memory.view(gpa, length).release()
    except GuestMemoryError:
        raise VirtqueueError(f"{what} [{gpa:#x}, +{length:#x}) is outside guest RAM") from None


class Virtqueue:
    """One split virtqueue. The transport writes the driver-configured fields (size, ready, ring addresses) and
    calls `activate` at DRIVER_OK; the device then pops chains and pushes used elements."""

    def __init__(self, max_size: int, name: str = "virtqueue") -> None:
        if not is_power_of_two(max_size) or max_size > MAX_QUEUE_SIZE:
            raise ValueError(f"{name}: maximum size {max_size} is not a power of two <= {MAX_QUEUE_SIZE}")
        self.max_size = max_size
        self.name = name
        self.reset()

    def reset(self) -> None:
        # Configured by the driver through the transport.
        self.size = self.max_size
        self.ready = False
        self.desc_addr = 0
        self.driver_addr = 0
        self.device_addr = 0
        # Device progress: free-running 16-bit indices, like the ring's own idx fields.
        self.next_avail = 0
        self.next_used = 0
        # Event-idx bookkeeping: used.idx when we last decided about an interrupt.
        self.signalled_used = 0
        self.signalled_used_valid = False
        # Negotiated at activation.
        self.event_idx = False
        self.indirect = False
        self._memory: GuestMemory | None = None
        self._avail_idx = 0  # last avail.idx read from the ring (a cache; re-read whenever it looks empty)
        self._used_since_check = False

    # -- configuration -------------------------------------------------------------------------------------------
    def check_layout(self, memory: GuestMemory) -> None:
        """Refuse a size or ring placement the device cannot use (driver error)."""
        if not is_power_of_two(self.size) or self.size > self.max_size:
            raise VirtqueueError(f"{self.name}: queue size {self.size} is not a power of two in [1, {self.max_size}]")
        areas = (
            ("descriptor table", self.desc_addr, DESC_SIZE * self.size, 16),
            ("driver area", self.driver_addr, 6 + 2 * self.size, 2),
            ("device area", self.device_addr, 6 + 8 * self.size, 4),
        )
        for what, addr, length, align in areas:
            if addr % align:
                raise VirtqueueError(f"{self.name}: {what} at {addr:#x} is not {align}-byte aligned")
            _check_ram(memory, addr, length, f"{self.name}: {what}")

    def activate(self, memory: GuestMemory, features: int) -> None:
        self.check_layout(memory)
        self._memory = memory
        self.event_idx = bool(features & bit(F_EVENT_IDX))
        self.indirect = bool(features & bit(F_INDIRECT_DESC))
        self._avail_idx = self.next_avail
        self._used_since_check = False

    def deactivate(self) -> None:
        """QueueReady = 0: the driver stops using the queue; the device must not touch its rings any more."""
        self.ready = False
        self._memory = None

    @property
    def active(self) -> bool:
        """Ready and bound to guest memory with the negotiated features: the device may use it."""
        return self._memory is not None

    def _mem(self) -> GuestMemory:
        if self._memory is None:
            raise VirtqueueError(f"{self.name}: used before activation")
        return self._memory

    # -- driver -> device ----------------------------------------------------------------------------------------
    def _read_avail_idx(self) -> int:
        idx = self._mem().read_u16(self.driver_addr + 2)
        pending = (idx - self.next_avail) & U16_MASK
        if pending > self.size:
            raise VirtqueueError(
                f"{self.name}: avail idx {idx} is {pending} entries ahead of {self.next_avail} (queue size {self.size})"
            )
        return idx

    def _publish_avail_event(self) -> None:
        """Ask the driver to notify us when it publishes entry next_avail (event idx), then fence so the re-read
        of avail.idx that follows cannot pass this store."""
        self._mem().write_u16(self.device_addr + 4 + 8 * self.size, self.next_avail)
        full_barrier()

    def has_available(self) -> bool:
        """Whether a chain is waiting. When there is none, arranges to be notified of the next one."""
        if self.next_avail != self._avail_idx:
            return True
        self._avail_idx = self._read_avail_idx()
        if self.next_avail != self._avail_idx:
            return True
        if not self.event_idx:
            return False
        self._publish_avail_event()
        self._avail_idx = self._read_avail_idx()
        return self.next_avail != self._avail_idx

    def pop(self) -> DescriptorChain | None:
        """The next available chain, validated, or None when the ring is empty (notifications then re-armed)."""
        if not self.has_available():
            return None
        memory = self._mem()
        head = memory.read_u16(self.driver_addr + 4 + 2 * (self.next_avail % self.size))
        chain = self._walk(memory, head)
        self.next_avail = (self.next_avail + 1) & U16_MASK
        return chain

    def unpop(self) -> None:
        """Give back the chain just popped (it was only read, e.g. no frame arrived to fill it)."""
        self.next_avail = (self.next_avail - 1) & U16_MASK

    def _walk(self, memory: GuestMemory, head: int) -> DescriptorChain:
        size = self.size
        if head >= size:
            raise VirtqueueError(f"{self.name}: head index {head} out of range (queue size {size})")
        chain = DescriptorChain(head)
        table, table_len, index = self.desc_addr, size, head
        in_indirect = False
        visited: set[int] = set()
        while True:
            key = -1 - index if in_indirect else index
            if key in visited:
                where = "indirect table" if in_indirect else "descriptor table"
                raise VirtqueueError(f"{self.name}: descriptor chain from head {head} loops ({where} entry {index})")
            visited.add(key)
            gpa, length, flags, next_index = _DESC.unpack(memory.read(table + DESC_SIZE * index, DESC_SIZE))
            if flags & DESC_F_INDIRECT:
                table_len = self._check_indirect(memory, gpa, length, flags, in_indirect, head)
                table, index, in_indirect = gpa, 0, True
                continue
            if length:
                _check_ram(memory, gpa, length, f"{self.name}: descriptor {index} of chain {head}")
            chain.descriptors.append(Descriptor(gpa, length, bool(flags & DESC_F_WRITE)))
            if len(chain.descriptors) > size:
                raise VirtqueueError(
                    f"{self.name}: descriptor chain from head {head} is longer than the queue size {size}"
                )
            if not flags & DESC_F_NEXT:
                return chain
            if next_index >= table_len:
                raise VirtqueueError(f"{self.name}: descriptor {index} points to next {next_index} >= {table_len}")
            index = next_index

    def _check_indirect(
        self, memory: GuestMemory, gpa: int, length: int, flags: int, in_indirect: bool, head: int
    ) -> int:
        """Validate a descriptor that points to an indirect table; return the table's entry count."""
        if not self.indirect:
            raise VirtqueueError(
                f"{self.name}: indirect descriptor in chain {head} but VIRTIO_F_INDIRECT_DESC not negotiated"
            )
        if in_indirect:
            raise VirtqueueError(f"{self.name}: nested indirect table in chain {head}")
        if flags & DESC_F_NEXT:
            raise VirtqueueError(f"{self.name}: indirect descriptor in chain {head} also has NEXT set")
        if length == 0 or length % DESC_SIZE:
            raise VirtqueueError(
                f"{self.name}: indirect table of chain {head} has length {length}, not a multiple of 16"
            )
        _check_ram(memory, gpa, length, f"{self.name}: indirect table of chain {head}")
        return length // DESC_SIZE

    # -- device -> driver ----------------------------------------------------------------------------------------
    def add_used(self, head: int, length: int) -> None:
        """Return a chain to the driver: the element first, then used.idx that publishes it (store -> store)."""
        memory = self._mem()
        memory.write(self.device_addr + 4 + 8 * (self.next_used % self.size), _USED_ELEM.pack(head, length))
        self.next_used = (self.next_used + 1) & U16_MASK
        memory.write_u16(self.device_addr + 2, self.next_used)
        self._used_since_check = True

    def needs_interrupt(self) -> bool:
        """Whether the driver wants a used-buffer interrupt for what was added since the last call.

        With event idx: vring_need_event(used_event, new used idx, used idx at the previous decision).
        Without: unless the driver set VIRTQ_AVAIL_F_NO_INTERRUPT."""
        if not self._used_since_check:
            return False
        self._used_since_check = False
        memory = self._mem()
        full_barrier()  # the used.idx store must be visible before we read the driver's suppression fields
        old, valid = self.signalled_used, self.signalled_used_valid
        self.signalled_used, self.signalled_used_valid = self.next_used, True
        if self.event_idx:
            used_event = memory.read_u16(self.driver_addr + 4 + 2 * self.size)
            return not valid or vring_need_event(used_event, self.next_used, old)
        return not memory.read_u16(self.driver_addr) & AVAIL_F_NO_INTERRUPT

    # -- save / restore ------------------------------------------------------------------------------------------
    def save(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "ready": self.ready,
            "desc_addr": self.desc_addr,
            "driver_addr": self.driver_addr,
            "device_addr": self.device_addr,
            "next_avail": self.next_avail,
            "next_used": self.next_used,
            "signalled_used": self.signalled_used,
            "signalled_used_valid": self.signalled_used_valid,
        }

    def restore(self, state: object, where: str) -> None:
        """Load the saved fields (activation, which binds memory and features, is the transport's job)."""
        reader = StateReader(state, where)
        self.reset()
        self.size = reader.get_int("size", 0, U32_MASK)  # as the driver wrote it; checked when ready
        self.ready = reader.get_bool("ready")
        self.desc_addr = reader.get_int("desc_addr", 0, U64_MASK)
        self.driver_addr = reader.get_int("driver_addr", 0, U64_MASK)
        self.device_addr = reader.get_int("device_addr", 0, U64_MASK)
        self.next_avail = reader.get_int("next_avail", 0, U16_MASK)
        self.next_used = reader.get_int("next_used", 0, U16_MASK)
        self.signalled_used = reader.get_int("signalled_used", 0, U16_MASK)
        self.signalled_used_valid = reader.get_bool("signalled_used_valid")
        reader.finish()
