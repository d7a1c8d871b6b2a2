"""virtio-mmio version 2 (virtio 1.x §4.2.2): the register file in front of one virtio device.

Threads: vCPU threads call read()/write() for register accesses; the VMM's event-loop thread calls notify() (an
ioeventfd on QueueNotify fired), on_fd_readable() and poll_fds(). One lock serialises all of it, device work
included: block I/O runs synchronously inside notify(), so when quiesce() returns nothing is in flight.

Live upgrade: with the vCPUs paused the VMM calls quiesce() (from then on notifications are only remembered, not
processed), then save(). The successor builds a fresh device on the inherited fds and calls
`VirtioMmioTransport.restore(device, memory, irq, state)`, which comes back quiesced; resume() then re-checks every
queue once, because a notification may have arrived while the old process was quiescing (its ioeventfd counter is
not carried over).
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable
from typing import Any

from devices.errors import DeviceError, StateError
from devices.interfaces import GuestMemory, InterruptLine
from devices.virtio.constants import F_VERSION_1, U32_MASK, U64_MASK, InterruptStatus, Status, bit
from devices.virtio.device import VirtioDevice
from devices.virtio.errors import VirtqueueError
from devices.virtio.queue import Virtqueue
from devices.virtio.state import StateReader

log = logging.getLogger(__name__)

MAGIC_VALUE = 0x7472_6976  # "virt"
MMIO_VERSION = 2
VENDOR_ID = 0x5357_4854  # "HTWS": any value; Linux does not look at it

# Register offsets (§4.2.2).
MAGIC = 0x000
VERSION = 0x004
DEVICE_ID = 0x008
VENDOR = 0x00C
DEVICE_FEATURES = 0x010
DEVICE_FEATURES_SEL = 0x014
DRIVER_FEATURES = 0x020
DRIVER_FEATURES_SEL = 0x024
QUEUE_SEL = 0x030
QUEUE_NUM_MAX = 0x034
QUEUE_NUM = 0x038
QUEUE_READY = 0x044
QUEUE_NOTIFY = 0x050
INTERRUPT_STATUS = 0x060
INTERRUPT_ACK = 0x064
STATUS = 0x070
QUEUE_DESC_LOW = 0x080
QUEUE_DESC_HIGH = 0x084
QUEUE_DRIVER_LOW = 0x090
QUEUE_DRIVER_HIGH = 0x094
QUEUE_DEVICE_LOW = 0x0A0
QUEUE_DEVICE_HIGH = 0x0A4
SHM_SEL = 0x0AC
SHM_LEN_LOW = 0x0B0
SHM_BASE_HIGH = 0x0BC
CONFIG_GENERATION = 0x0FC
CONFIG = 0x100

# Ring address registers: offset -> (attribute on Virtqueue, high half?)
_QUEUE_ADDRESS_REGS = {
    QUEUE_DESC_LOW: ("desc_addr", False),
    QUEUE_DESC_HIGH: ("desc_addr", True),
    QUEUE_DRIVER_LOW: ("driver_addr", False),
    QUEUE_DRIVER_HIGH: ("driver_addr", True),
    QUEUE_DEVICE_LOW: ("device_addr", False),
    QUEUE_DEVICE_HIGH: ("device_addr", True),
}


class VirtioMmioTransport:
    QUEUE_NOTIFY_OFFSET = QUEUE_NOTIFY

    def __init__(self, device: VirtioDevice, memory: GuestMemory, irq: InterruptLine) -> None:
        self.device = device
        self.memory = memory
        self.irq = irq
        self._lock = threading.Lock()
        self._queues = [Virtqueue(size, f"{device.name} queue {i}") for i, size in enumerate(device.queue_max_sizes)]
        self._quiesced = False
        self.config_generation = 0
        self._reset_registers()

    def _reset_registers(self) -> None:
        # What DeviceFeatures shows. Fixed for the life of a driver instance: after a live upgrade the successor
        # keeps offering what the old process offered (its device may support more) until the driver resets.
        self.device_features = self.device.device_features
        self.device_features_sel = 0
        self.driver_features_sel = 0
        self.driver_features = 0
        self.queue_sel = 0
        self.status = 0
        self.interrupt_status = 0
        for queue in self._queues:
            queue.reset()

    @property
    def num_queues(self) -> int:
        return len(self._queues)

    @property
    def _active(self) -> bool:
        return bool(self.status & Status.DRIVER_OK) and not self.status & Status.DEVICE_NEEDS_RESET

    def _selected_queue(self) -> Virtqueue | None:
        return self._queues[self.queue_sel] if self.queue_sel < len(self._queues) else None

    # -- register reads ------------------------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> bytes:
        with self._lock:
            if offset >= CONFIG:
                return self.device.read_config(offset - CONFIG, size)
            if size != 4 or offset % 4:
                log.debug("%s: ignored %d-byte register read at %#x", self.device.name, size, offset)
                return bytes(size)
            return struct.pack("<I", self._read_register(offset) & U32_MASK)

    def _read_register(self, offset: int) -> int:
        queue = self._selected_queue()
        if offset == MAGIC:
            return MAGIC_VALUE
        if offset == VERSION:
            return MMIO_VERSION
        if offset == DEVICE_ID:
            return self.device.device_id
        if offset == VENDOR:
            return VENDOR_ID
        if offset == DEVICE_FEATURES:
            return self.device_features >> (32 * self.device_features_sel) if self.device_features_sel < 2 else 0
        if offset == QUEUE_NUM_MAX:
            return queue.max_size if queue else 0
        if offset == QUEUE_NUM:
            return queue.size if queue else 0
        if offset == QUEUE_READY:
            return int(queue.ready) if queue else 0
        if offset in _QUEUE_ADDRESS_REGS:
            name, high = _QUEUE_ADDRESS_REGS[offset]
            value: int = getattr(queue, name) if queue else 0
            return value >> 32 if high else value
        if offset == INTERRUPT_STATUS:
            return self.interrupt_status
        if offset == STATUS:
            return self.status
        if SHM_LEN_LOW <= offset <= SHM_BASE_HIGH:
            return U32_MASK  # no shared memory regions: length and base read as all ones
        if offset == CONFIG_GENERATION:
            return self.config_generation
        return 0

    # -- register writes -----------------------------------------------------------------------------------------
    def write(self, offset: int, data: bytes) -> None:
        with self._lock:
            if offset >= CONFIG:
                self.device.write_config(offset - CONFIG, data)
                return
            if len(data) != 4 or offset % 4:
                log.debug("%s: ignored %d-byte register write at %#x", self.device.name, len(data), offset)
                return
            self._write_register(offset, struct.unpack("<I", data)[0])

    def _write_register(self, offset: int, value: int) -> None:
        queue = self._selected_queue()
        if offset == DEVICE_FEATURES_SEL:
            self.device_features_sel = value
        elif offset == DRIVER_FEATURES:
            self._write_driver_features(value)
        elif offset == DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif offset == QUEUE_SEL:
            self.queue_sel = value
        elif offset == QUEUE_NUM:
            if queue and not queue.ready:
                queue.size = value
        elif offset == QUEUE_READY:
            if queue:
                self._write_queue_ready(queue, value)
        elif offset in _QUEUE_ADDRESS_REGS:
            if queue and not queue.ready:
                name, high = _QUEUE_ADDRESS_REGS[offset]
                old: int = getattr(queue, name)
                new = (old & U32_MASK) | (value << 32) if high else (old & ~U32_MASK) | value
                setattr(queue, name, new)
        elif offset == QUEUE_NOTIFY:
            self._notify_locked(value)
        elif offset == INTERRUPT_ACK:
            self.interrupt_status &= ~value
        elif offset == STATUS:
            self._write_status(value)
        elif offset != SHM_SEL:
            log.debug("%s: ignored write of %#x to register %#x", self.device.name, value, offset)

    def _write_driver_features(self, value: int) -> None:
        # Features may change only while negotiating: after DRIVER and before FEATURES_OK.
        if not self.status & Status.DRIVER or self.status & Status.FEATURES_OK or self.driver_features_sel > 1:
            return
        shift = 32 * self.driver_features_sel
        self.driver_features = (self.driver_features & ~(U32_MASK << shift)) | (value << shift)

    def _write_queue_ready(self, queue: Virtqueue, value: int) -> None:
        if not value & 1:
            queue.deactivate()
            return
        if queue.ready:
            return
        try:
            queue.check_layout(self.memory)
            if self.status & Status.DRIVER_OK:
                queue.activate(self.memory, self.driver_features)
        except VirtqueueError as exc:
            self._fail(str(exc))
            return
        queue.ready = True

    def _write_status(self, value: int) -> None:
        if value == 0:
            self._reset()
            return
        new = value & ~self.status
        value |= self.status & Status.DEVICE_NEEDS_RESET  # only a reset clears it
        if new & Status.FEATURES_OK and not self._features_acceptable():
            value &= ~Status.FEATURES_OK  # the driver reads Status back and sees the features were refused
        if new & Status.DRIVER_OK and not value & Status.FEATURES_OK:
            value &= ~Status.DRIVER_OK
        self.status = value
        if new & Status.DRIVER_OK and self._active:  # never start a device that already needs a reset
            self._activate()

    def _features_acceptable(self) -> bool:
        offered = self.device_features
        return not self.driver_features & ~offered and bool(self.driver_features & bit(F_VERSION_1))

    def _activate(self) -> None:
        try:
            for queue in self._queues:
                if queue.ready:
                    queue.activate(self.memory, self.driver_features)
            self.device.activate(self.memory, self._queues, self.driver_features)
        except VirtqueueError as exc:
            self._fail(str(exc))
            return
        # Buffers may have been made available before DRIVER_OK.
        if not self._quiesced:
            self._run(self.device.recheck)

    def _reset(self) -> None:
        self.device.reset()
        self._reset_registers()

    def _fail(self, reason: str) -> None:
        """A fatal driver error: DEVICE_NEEDS_RESET plus a configuration-change interrupt (§2.1.2)."""
        log.warning("%s: device needs reset: %s", self.device.name, reason)
        self.status |= Status.DEVICE_NEEDS_RESET
        if self.status & Status.DRIVER_OK:
            self._raise_interrupt(InterruptStatus.CONFIG_CHANGE)

    def _raise_interrupt(self, reason: InterruptStatus) -> None:
        # Pulse on every event, not only on a 0 -> 1 edge of InterruptStatus: an edge-triggered line must not miss
        # work the driver's handler has already read past.
        self.interrupt_status |= reason
        self.irq.pulse()

    # -- work from the event loop --------------------------------------------------------------------------------
    def _run(self, work: Callable[[], None]) -> None:
        """Run device work; no exception escapes (a driver error becomes NEEDS_RESET); then raise the used-buffer
        interrupt if any queue's driver wants one."""
        try:
            work()
        except Exception as exc:  # the event loop must survive anything a guest can provoke
            if not isinstance(exc, DeviceError):  # a driver error is expected; anything else is our bug
                log.exception("%s: device failed", self.device.name)
            self._fail(str(exc))
        try:
            wanted = [queue.needs_interrupt() for queue in self._queues if queue.active]
        except Exception as exc:
            self._fail(str(exc))
            return
        if any(wanted):
            self._raise_interrupt(InterruptStatus.USED_BUFFER)

    def _notify_locked(self, index: int) -> None:
        if self._quiesced or not self._active:
            return
        if index >= len(self._queues) or not self._queues[index].ready:
            log.debug("%s: notify on queue %d which is not ready", self.device.name, index)
            return
        self._run(lambda: self.device.process_queue(index))

    def notify(self, queue_index: int) -> None:
        """The driver notified queue `queue_index` (the ioeventfd on QueueNotify fired)."""
        with self._lock:
            self._notify_locked(queue_index)

    def poll_fds(self) -> list[int]:
        """Host fds to watch for readability now. The set changes: ask again after every notify/on_fd_readable."""
        with self._lock:
            if self._quiesced or not self._active:
                return []
            try:
                return self.device.poll_fds()
            except Exception as exc:
                self._fail(str(exc))
                return []

    def on_fd_readable(self, fd: int) -> None:
        with self._lock:
            if self._quiesced or not self._active:
                return
            self._run(lambda: self.device.on_fd_readable(fd))

    # -- live upgrade --------------------------------------------------------------------------------------------
    def quiesce(self) -> None:
        """Stop processing. Device work runs under the lock, so once we hold it nothing is in flight."""
        with self._lock:
            self._quiesced = True

    def resume(self) -> None:
        """Start processing again and look at every queue once (notifications may have been missed)."""
        with self._lock:
            self._quiesced = False
            if self.interrupt_status:
                # The driver has not acknowledged an interrupt yet. Its last pulse may have been in flight in the
                # old process's irqfd when the irqchip state was captured; one spurious interrupt is harmless
                # (the handler reads InterruptStatus), a lost one stalls the driver.
                self.irq.pulse()
            if self._active:
                self._run(self.device.recheck)

    @property
    def quiesced(self) -> bool:
        return self._quiesced

    def save(self) -> dict[str, Any]:
        with self._lock:
            return {
                "device_id": self.device.device_id,
                "device_features": self.device_features,
                "device_features_sel": self.device_features_sel,
                "driver_features_sel": self.driver_features_sel,
                "driver_features": self.driver_features,
                "queue_sel": self.queue_sel,
                "status": self.status,
                "interrupt_status": self.interrupt_status,
                "config_generation": self.config_generation,
                "queues": [queue.save() for queue in self._queues],
                "device": self.device.save(),
            }

    @classmethod
    def restore(
        cls, device: VirtioDevice, memory: GuestMemory, irq: InterruptLine, state: object
    ) -> VirtioMmioTransport:
        """A transport in the saved state, quiesced: call resume() once the vCPUs may run."""
        transport = cls(device, memory, irq)
        transport._load(state)
        return transport

    def _load(self, state: object) -> None:
        where = f"{self.device.name} virtio-mmio state"
        reader = StateReader(state, where)
        device_id = reader.get_int("device_id", 0, U32_MASK)
        if device_id != self.device.device_id:
            raise StateError(f"{where}: field 'device_id' is {device_id}, this device is {self.device.device_id}")
        self.device_features = reader.get_int("device_features", 0, U64_MASK)
        self.device_features_sel = reader.get_int("device_features_sel", 0, U32_MASK)
        self.driver_features_sel = reader.get_int("driver_features_sel", 0, U32_MASK)
        self.driver_features = reader.get_int("driver_features", 0, U64_MASK)
        self.queue_sel = reader.get_int("queue_sel", 0, U32_MASK)
        self.status = reader.get_int("status", 0, 0xFF)
        self.interrupt_status = reader.get_int("interrupt_status", 0, 3)
        self.config_generation = reader.get_int("config_generation", 0, U32_MASK)
        queues = reader.get_list("queues")
        if len(queues) != len(self._queues):
            raise StateError(f"{where}: field 'queues' has {len(queues)} entries, this device has {len(self._queues)}")
        for i, (queue, saved) in enumerate(zip(self._queues, queues, strict=True)):
            queue.restore(saved, f"{where}.queues[{i}]")
        self.device.restore_state(reader.get_raw("device"), reader.where("device"))
        reader.finish()
        if self.device_features & ~self.device.device_features:
            raise StateError(
                f"{where}: field 'device_features' {self.device_features:#x} has bits this device cannot do "
                f"(it offers {self.device.device_features:#x})"
            )
        if self.driver_features & ~self.device_features:
            raise StateError(
                f"{where}: field 'driver_features' {self.driver_features:#x} has bits that were not offered "
                f"({self.device_features:#x})"
            )
        try:
            for queue in self._queues:
                if queue.ready:
                    queue.check_layout(self.memory)
                    if self._active:
                        queue.activate(self.memory, self.driver_features)
        except VirtqueueError as exc:
            raise StateError(f"{where}: {exc}") from None
        if self._active:
            self.device.activate(self.memory, self._queues, self.driver_features)
        self._quiesced = True

    def close(self) -> None:
        """Release the device's host resources."""
        with self._lock:
            self.device.close()
