"""The machine's devices: which models exist, where they sit on the buses, how they reach interrupts, and their
part of the state tree. Device models stay pure; everything KVM- or host-specific is wired here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from devices.bus import Bus
from devices.i8042 import I8042, I8042State
from devices.serial import Serial, SerialState
from hotswap.errors import HotswapError
from hotswap.layout import (
    COM1_GSI,
    COM1_PORT,
    COM1_PORT_SIZE,
    I8042_COMMAND_PORT,
    I8042_DATA_PORT,
    SERIAL_MMIO_ADDR,
    VIRTIO_MMIO_SIZE,
)
from hotswap.machine.console import Console
from hotswap.machine.eventloop import EventLoop
from hotswap.machine.interrupts import IrqfdLine
from hotswap.machine.serial_port import SerialPort
from hotswap.machine.virtio import KINDS, VirtioSlot, VirtioSpec, open_host_fd
from kvm import GuestMemory, Vm

SERIAL_REGISTERS = 8


class DeviceSet:
    def __init__(
        self,
        vm: Vm,
        memory: GuestMemory,
        loop: EventLoop,
        console: Console,
        on_reset: Callable[[], None],
        virtio: list[VirtioSpec] | None = None,
        virtio_fds: list[int | None] | None = None,
    ) -> None:
        """`virtio_fds` (one per spec, None for fd-less devices) are inherited host fds; without them the
        devices open their disks and taps themselves."""
        self.pio = Bus("pio")
        self.mmio = Bus("mmio")
        self._vm = vm
        self._memory = memory
        self._loop = loop
        self._console = console
        self._lines: list[IrqfdLine] = []

        serial_irq = self._line(COM1_GSI)
        self.serial = Serial(serial_irq, console.write, on_rx_drained=lambda: loop.call_soon(console.feed_pending))
        # The same UART on both buses; its MMIO alias (ring-3 code and fast guests use it) transmits through a
        # queue served in C while the model allows it (serial_port.py).
        self.serial_port = SerialPort(self.serial, console, loop, SERIAL_MMIO_ADDR)
        self.pio.insert(COM1_PORT, COM1_PORT_SIZE, self.serial_port, "serial0")
        self.mmio.insert(SERIAL_MMIO_ADDR, SERIAL_REGISTERS, self.serial_port, "serial0-mmio")
        console.attach_input(self.serial_port.enqueue_input)

        self.i8042 = I8042(on_reset=on_reset)
        self.pio.insert(I8042_DATA_PORT, 1, self.i8042.data_port, "i8042-data")
        self.pio.insert(I8042_COMMAND_PORT, 1, self.i8042.command_port, "i8042-command")

        self.virtio: list[VirtioSlot] = []
        specs = virtio or []
        try:
            for position, spec in enumerate(specs):
                fd = virtio_fds[position] if virtio_fds is not None else open_host_fd(spec)
                slot = VirtioSlot(spec, vm, memory, loop, fd)
                self.virtio.append(slot)
                self.mmio.insert(spec.base, VIRTIO_MMIO_SIZE, slot, spec.name)
        except BaseException:
            self.close()
            raise

    def kernel_cmdline(self) -> str:
        """What the guest kernel needs on its command line to find the virtio-mmio devices."""
        return " ".join(slot.spec.cmdline() for slot in self.virtio)

    def host_fds(self) -> list[int | None]:
        """The virtio devices' host fds (disk images, taps) in slot order, for a handover."""
        return [slot.host_fd for slot in self.virtio]

    def _line(self, gsi: int) -> IrqfdLine:
        line = IrqfdLine(self._vm, gsi)
        self._lines.append(line)
        return line

    # -- lifecycle --------------------------------------------------------------------------------------------
    def quiesce(self) -> None:
        """Finish in-flight device work and stop starting new work (vCPUs are already paused; the console has
        stopped reading input before the pause)."""
        for slot in self.virtio:
            slot.quiesce()

    def resume(self) -> None:
        self._console.start()
        for slot in self.virtio:
            self._loop.call_soon(slot.resume)

    def flush_output(self) -> None:
        """Send on guest output still queued for the console (kvm/byte_queue.py)."""
        self.serial_port.flush()

    def close(self) -> None:
        self.serial_port.close()
        for slot in self.virtio:
            slot.close()
        self.virtio.clear()
        for line in self._lines:
            line.close()
        self._lines.clear()

    # -- state ------------------------------------------------------------------------------------------------
    def save(self, console_since: int | None = None) -> dict[str, Any]:
        """The devices' state. With `console_since` (a console mark), the console history holds only the output
        after that mark: a handover sent the rest before the pause."""
        serial = self.serial_port.save().to_dict()  # first: it sends on what the guest printed, to the history
        history = self._console.history() if console_since is None else self._console.history_since(console_since)
        return {
            **{slot.spec.name: slot.save() for slot in self.virtio},
            "serial0": {"kind": "serial-16550", "state": serial},
            "i8042": {"kind": "i8042", "state": self.i8042.save().to_dict()},
            "console": {
                "kind": "console",
                "state": {"history": history, "pending_input": self._console.pending_input()},
            },
        }

    def restore(self, devices: dict[str, Any], console_prefix: bytes = b"") -> None:
        """Restore saved device states; `console_prefix` is history that arrived before the state (a handover)."""
        expected = {"serial0", "i8042", "console"} | {slot.spec.name for slot in self.virtio}
        if set(devices) != expected:
            unknown = sorted(set(devices) - expected)
            missing = sorted(expected - set(devices))
            raise HotswapError(f"device state mismatch: unknown {unknown}, missing {missing}")
        self.serial_port.restore(SerialState.from_dict(_state_of(devices, "serial0", "serial-16550")))
        self.i8042.restore(I8042State.from_dict(_state_of(devices, "i8042", "i8042")))
        console = _state_of(devices, "console", "console")
        history, pending = console.get("history"), console.get("pending_input")
        if (
            set(console) != {"history", "pending_input"}
            or not isinstance(history, bytes)
            or not isinstance(pending, bytes)
        ):
            raise HotswapError("device console: expected bytes fields history and pending_input")
        self._console.restore_state(console_prefix + history, pending)
        for slot in self.virtio:
            slot.restore(_state_of(devices, slot.spec.name, KINDS[slot.spec.kind]))


def _state_of(devices: dict[str, Any], name: str, kind: str) -> dict[str, Any]:
    entry = devices[name]
    if not isinstance(entry, dict) or entry.get("kind") != kind or set(entry) != {"kind", "state"}:
        raise HotswapError(f"device {name}: expected kind {kind!r} with a state")
    state = entry["state"]
    if not isinstance(state, dict):
        raise HotswapError(f"device {name}: state is not a mapping")
    return state
