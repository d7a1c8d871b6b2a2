"""Enough of the i8042 PS/2 controller for guests that probe it, and for rebooting through it.

The controller answers its own commands (read/write the command byte, self-test, interface test, enable/disable
the ports) and pulses the CPU reset line on command 0xFE, which the VMM receives as `on_reset()`. No keyboard or
mouse is attached: bytes meant for them are dropped, and a guest waiting for their answer times out as it would
on a machine with nothing plugged in (Linux guests boot faster with `i8042.noaux`, or skip probing altogether with
`i8042.nokbd`).

The controller has two ports, data (0x60 on a PC) and status/command (0x64). The VMM maps `data_port` and
`command_port`, each a one-byte BusDevice, wherever those ports are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from devices.errors import StateError
from devices.interfaces import BusDevice
from devices.state import DeviceState, check_u8

# Controller commands (written to the command port).
CMD_READ_COMMAND_BYTE = 0x20
CMD_WRITE_COMMAND_BYTE = 0x60
CMD_DISABLE_AUX = 0xA7
CMD_ENABLE_AUX = 0xA8
CMD_SELF_TEST = 0xAA
CMD_INTERFACE_TEST = 0xAB
CMD_DISABLE_KBD = 0xAD
CMD_ENABLE_KBD = 0xAE
CMD_WRITE_AUX = 0xD4
CMD_PULSE_RESET = 0xFE

SELF_TEST_PASSED = 0x55
INTERFACE_TEST_PASSED = 0x00

# Status register bits.
STATUS_OUTPUT_FULL = 0x01
STATUS_SYSTEM_FLAG = 0x04
STATUS_LAST_WAS_COMMAND = 0x08
STATUS_NOT_INHIBITED = 0x10  # keyboard lock switch open

# Command byte bits.
COMMAND_BYTE_KBD_INT = 0x01
COMMAND_BYTE_SYSTEM_FLAG = 0x04
COMMAND_BYTE_KBD_DISABLED = 0x10
COMMAND_BYTE_AUX_DISABLED = 0x20
COMMAND_BYTE_TRANSLATE = 0x40

# Commands whose parameter is the next byte written to the data port.
_TAKES_PARAMETER = (CMD_WRITE_COMMAND_BYTE, CMD_WRITE_AUX)

_BYTES = tuple(bytes((value,)) for value in range(256))


@dataclasses.dataclass(frozen=True)
class I8042State(DeviceState):
    """Everything the controller model holds. The defaults are the state after firmware initialisation."""

    DEVICE = "i8042"

    command_byte: int = COMMAND_BYTE_KBD_INT | COMMAND_BYTE_SYSTEM_FLAG | COMMAND_BYTE_TRANSLATE
    output: int = 0  # the output buffer, valid while output_full
    output_full: bool = False
    pending_command: int = 0  # a command waiting for its data-port parameter, or 0
    last_was_command: bool = False  # status bit 3: the last byte written went to the command port

    def __post_init__(self) -> None:
        for name in ("command_byte", "output", "pending_command"):
            check_u8(self.DEVICE, name, getattr(self, name))
        if self.pending_command not in (0, *_TAKES_PARAMETER):
            raise StateError(f"i8042 state: field 'pending_command' {self.pending_command:#04x} takes no parameter")


class I8042:
    """The controller. `data_port` and `command_port` are the BusDevices to map at 0x60 and 0x64."""

    def __init__(self, on_reset: Callable[[], None]) -> None:
        """`on_reset` is called (on the vCPU thread) when the guest pulses the CPU reset line."""
        self._on_reset = on_reset
        self.data_port: BusDevice = _Port(self.read_data, self.write_data)
        self.command_port: BusDevice = _Port(self.read_status, self.write_command)
        self._load(I8042State())

    @classmethod
    def from_state(cls, state: I8042State, on_reset: Callable[[], None]) -> I8042:
        controller = cls(on_reset)
        controller.restore(state)
        return controller

    def save(self) -> I8042State:
        return I8042State(
            command_byte=self._command_byte,
            output=self._output,
            output_full=self._output_full,
            pending_command=self._pending_command,
            last_was_command=self._last_was_command,
        )

    def restore(self, state: I8042State) -> None:
        self._load(state)

    def _load(self, state: I8042State) -> None:
        self._command_byte = state.command_byte
        self._output = state.output
        self._output_full = state.output_full
        self._pending_command = state.pending_command
        self._last_was_command = state.last_was_command

    def read_status(self) -> int:
        status = STATUS_NOT_INHIBITED
        if self._output_full:
            status |= STATUS_OUTPUT_FULL
        if self._command_byte & COMMAND_BYTE_SYSTEM_FLAG:
            status |= STATUS_SYSTEM_FLAG
        if self._last_was_command:
            status |= STATUS_LAST_WAS_COMMAND
        return status

    def read_data(self) -> int:
        # Reading an empty output buffer returns the last byte again, as the real latch does.
        self._output_full = False
        return self._output

    def write_command(self, command: int) -> None:
        self._last_was_command = True
        self._pending_command = 0  # a new command abandons one still waiting for its parameter
        if command == CMD_READ_COMMAND_BYTE:
            self._respond(self._command_byte)
        elif command in _TAKES_PARAMETER:
            self._pending_command = command
        elif command == CMD_SELF_TEST:
            self._command_byte |= COMMAND_BYTE_SYSTEM_FLAG
            self._respond(SELF_TEST_PASSED)
        elif command == CMD_INTERFACE_TEST:
            self._respond(INTERFACE_TEST_PASSED)
        elif command == CMD_DISABLE_AUX:
            self._command_byte |= COMMAND_BYTE_AUX_DISABLED
        elif command == CMD_ENABLE_AUX:
            self._command_byte &= ~COMMAND_BYTE_AUX_DISABLED
        elif command == CMD_DISABLE_KBD:
            self._command_byte |= COMMAND_BYTE_KBD_DISABLED
        elif command == CMD_ENABLE_KBD:
            self._command_byte &= ~COMMAND_BYTE_KBD_DISABLED
        elif command == CMD_PULSE_RESET:
            self._on_reset()
        # Other commands (output port, test inputs, password, ...) are not implemented and ignored.

    def write_data(self, value: int) -> None:
        self._last_was_command = False
        pending, self._pending_command = self._pending_command, 0
        if pending == CMD_WRITE_COMMAND_BYTE:
            self._command_byte = value
        # CMD_WRITE_AUX's byte, and bytes for the keyboard, go to devices that are not there.

    def _respond(self, value: int) -> None:
        self._output = value
        self._output_full = True


class _Port:
    """One of the controller's one-byte ports as a BusDevice."""

    def __init__(self, read: Callable[[], int], write: Callable[[int], None]) -> None:
        self._read = read
        self._write = write

    def read(self, offset: int, size: int) -> bytes:
        value = self._read()
        if size == 1:
            return _BYTES[value]
        return _BYTES[value] + bytes(size - 1)

    def write(self, offset: int, data: bytes) -> None:
        self._write(data[0])
