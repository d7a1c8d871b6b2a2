"""The i8042 controller: status, command byte, self-tests, port enables, reset, save/restore."""

from __future__ import annotations

import pytest

from devices.bus import Bus
from devices.errors import StateError
from devices.i8042 import I8042, I8042State

DATA_PORT, COMMAND_PORT = 0x60, 0x64


class Machine:
    """An i8042 mapped on a port bus the way the VMM maps it, with a reset counter."""

    def __init__(self, state: I8042State | None = None) -> None:
        self.resets = 0
        if state is None:
            self.i8042 = I8042(self._reset)
        else:
            self.i8042 = I8042.from_state(state, self._reset)
        self.bus = Bus("pio")
        self.bus.insert(DATA_PORT, 1, self.i8042.data_port, "i8042-data")
        self.bus.insert(COMMAND_PORT, 1, self.i8042.command_port, "i8042-command")

    def _reset(self) -> None:
        self.resets += 1

    def inb(self, port: int) -> int:
        data = self.bus.read(port, 1)
        assert data is not None and len(data) == 1
        return data[0]

    def outb(self, port: int, value: int) -> None:
        assert self.bus.write(port, bytes([value]))

    def command(self, command: int) -> int | None:
        """Send a controller command and return its answer, if it left one."""
        self.outb(COMMAND_PORT, command)
        if self.inb(COMMAND_PORT) & 0x01:
            return self.inb(DATA_PORT)
        return None


@pytest.fixture
def machine() -> Machine:
    return Machine()


def test_status_after_start(machine: Machine) -> None:
    assert machine.inb(COMMAND_PORT) == 0x14  # not inhibited, system flag; output empty


def test_pulse_reset_calls_on_reset(machine: Machine) -> None:
    machine.outb(COMMAND_PORT, 0xFE)
    assert machine.resets == 1
    machine.outb(COMMAND_PORT, 0xFE)
    assert machine.resets == 2


def test_other_writes_do_not_reset(machine: Machine) -> None:
    machine.outb(DATA_PORT, 0xFE)
    machine.outb(COMMAND_PORT, 0xFD)
    assert machine.resets == 0


def test_self_test_and_interface_test(machine: Machine) -> None:
    assert machine.command(0xAA) == 0x55
    assert machine.command(0xAB) == 0x00
    assert machine.inb(COMMAND_PORT) & 0x01 == 0  # reading the answer emptied the output buffer


def test_command_byte_read_and_write(machine: Machine) -> None:
    assert machine.command(0x20) == 0x45
    machine.outb(COMMAND_PORT, 0x60)
    assert machine.inb(COMMAND_PORT) & 0x08  # last write was a command
    machine.outb(DATA_PORT, 0x30)
    assert machine.inb(COMMAND_PORT) & 0x08 == 0
    assert machine.command(0x20) == 0x30
    assert machine.inb(COMMAND_PORT) & 0x04 == 0  # system flag follows the command byte
    machine.outb(DATA_PORT, 0x77)  # no command pending: for the (absent) keyboard
    assert machine.command(0x20) == 0x30


def test_port_enable_commands_flip_command_byte_bits(machine: Machine) -> None:
    machine.outb(COMMAND_PORT, 0xAD)
    machine.outb(COMMAND_PORT, 0xA7)
    assert machine.command(0x20) == 0x45 | 0x10 | 0x20
    machine.outb(COMMAND_PORT, 0xAE)
    assert machine.command(0x20) == 0x45 | 0x20
    machine.outb(COMMAND_PORT, 0xA8)
    assert machine.command(0x20) == 0x45


def test_write_aux_swallows_its_parameter(machine: Machine) -> None:
    machine.outb(COMMAND_PORT, 0xD4)
    machine.outb(DATA_PORT, 0xF4)
    assert machine.inb(COMMAND_PORT) & 0x01 == 0  # no mouse to answer
    assert machine.command(0x20) == 0x45


def test_new_command_abandons_a_pending_parameter(machine: Machine) -> None:
    machine.outb(COMMAND_PORT, 0x60)
    assert machine.command(0xAA) == 0x55
    machine.outb(DATA_PORT, 0x00)  # now a keyboard byte, not the command byte
    assert machine.command(0x20) == 0x45


def test_save_restore_mid_command() -> None:
    machine = Machine()
    machine.outb(COMMAND_PORT, 0xAD)
    machine.outb(COMMAND_PORT, 0x20)  # answer waiting in the output buffer
    state = machine.i8042.save()
    copy = Machine(I8042State.from_dict(state.to_dict()))
    assert copy.i8042.save() == state
    for m in (machine, copy):
        assert m.inb(COMMAND_PORT) == 0x14 | 0x08 | 0x01
        assert m.inb(DATA_PORT) == 0x45 | 0x10  # the command byte, keyboard disabled
        m.outb(COMMAND_PORT, 0x60)
    pending = machine.i8042.save()
    assert pending.pending_command == 0x60
    copy = Machine(pending)
    copy.outb(DATA_PORT, 0x01)
    assert copy.command(0x20) == 0x01
    copy.outb(COMMAND_PORT, 0xFE)
    assert copy.resets == 1


def test_from_dict_rejects_unknown_missing_and_bad_fields() -> None:
    data = I8042State().to_dict()
    with pytest.raises(StateError, match="i8042 state: unknown field 'mouse'"):
        I8042State.from_dict({**data, "mouse": 0})
    del data["output"]
    with pytest.raises(StateError, match="i8042 state: missing field 'output'"):
        I8042State.from_dict(data)
    with pytest.raises(StateError, match="field 'command_byte' out of range"):
        I8042State.from_dict({**I8042State().to_dict(), "command_byte": 0x100})
    with pytest.raises(StateError, match="field 'pending_command' 0xaa takes no parameter"):
        I8042State.from_dict({**I8042State().to_dict(), "pending_command": 0xAA})
    with pytest.raises(StateError, match="field 'output_full' must be bool"):
        I8042State.from_dict({**I8042State().to_dict(), "output_full": 0})
