"""The 16550A model: registers, FIFO, interrupt identification and pulses, loopback, save/restore."""

from __future__ import annotations

import dataclasses
import random

import pytest

from devices.errors import StateError
from devices.serial import FIFO_SIZE, LINE_STATUS_IDLE, Serial, SerialState
from devices.state import DeviceState

DATA, IER, IIR, FCR, LCR, MCR, LSR, MSR, SCR = 0, 1, 2, 2, 3, 4, 5, 6, 7


class FakeInterrupt:
    """Records pulses and level changes."""

    def __init__(self) -> None:
        self.pulses = 0
        self.levels: list[bool] = []

    def pulse(self) -> None:
        self.pulses += 1

    def set_level(self, high: bool) -> None:
        self.levels.append(high)


class Uart:
    """A Serial with its fake interrupt, output capture and drain counter, plus byte-level helpers."""

    def __init__(self, state: SerialState | None = None) -> None:
        self.irq = FakeInterrupt()
        self.out = bytearray()
        self.drained = 0
        if state is None:
            self.dev = Serial(self.irq, self.out.extend, self._drained)
        else:
            self.dev = Serial.from_state(state, self.irq, self.out.extend, self._drained)

    def _drained(self) -> None:
        self.drained += 1

    def rd(self, offset: int) -> int:
        data = self.dev.read(offset, 1)
        assert len(data) == 1
        return data[0]

    def wr(self, offset: int, value: int) -> None:
        self.dev.write(offset, bytes([value]))


@pytest.fixture
def uart() -> Uart:
    return Uart()


def test_power_on_registers(uart: Uart) -> None:
    assert uart.rd(IER) == 0x00
    assert uart.rd(IIR) == 0x01  # no interrupt, FIFOs off
    assert uart.rd(LCR) == 0x03
    assert uart.rd(MCR) == 0x08
    assert uart.rd(LSR) == 0x60  # THR empty, transmitter idle, no data
    assert uart.rd(MSR) == 0xB0  # DCD, DSR, CTS: a peer is there
    assert uart.rd(SCR) == 0x00
    assert uart.dev.input_space() == 1


def test_scratch_and_line_control_hold_what_was_written(uart: Uart) -> None:
    uart.wr(SCR, 0x5A)
    uart.wr(LCR, 0x1B)
    assert uart.rd(SCR) == 0x5A
    assert uart.rd(LCR) == 0x1B


def test_dlab_switches_offsets_0_and_1_to_the_divisor(uart: Uart) -> None:
    uart.wr(IER, 0x05)
    uart.wr(LCR, 0x83)
    assert (uart.rd(DATA), uart.rd(IER)) == (0x0C, 0x00)  # power-on divisor 12 = 9600 baud
    uart.wr(DATA, 0x01)
    uart.wr(IER, 0x02)
    assert (uart.rd(DATA), uart.rd(IER)) == (0x01, 0x02)
    assert uart.out == b""  # a divisor write is not output
    uart.wr(LCR, 0x03)
    assert uart.rd(IER) == 0x05  # IER was untouched by the DLM write
    uart.wr(DATA, ord("x"))
    assert uart.out == b"x"
    assert uart.dev.save().divisor_low == 0x01
    assert uart.dev.save().divisor_high == 0x02


def test_ier_keeps_only_the_four_16550_bits(uart: Uart) -> None:
    uart.wr(IER, 0xFF)
    assert uart.rd(IER) == 0x0F


def test_mcr_keeps_five_bits(uart: Uart) -> None:
    uart.wr(MCR, 0xFF & ~0x10)
    assert uart.rd(MCR) == 0x0F


def test_thr_writes_go_to_the_sink_in_order(uart: Uart) -> None:
    for byte in b"hello\n":
        uart.wr(DATA, byte)
    assert uart.out == b"hello\n"
    assert uart.rd(LSR) & 0x60 == 0x60


def test_wide_access_uses_the_low_byte(uart: Uart) -> None:
    uart.dev.write(SCR, b"\x11\x22\x33\x44")
    assert uart.dev.read(SCR, 4) == b"\x11\x00\x00\x00"
    uart.dev.write(DATA, b"ab")
    assert uart.out == b"a"


def test_offsets_past_the_registers_read_zero_and_ignore_writes(uart: Uart) -> None:
    uart.dev.write(0x10, b"\xff")
    assert uart.dev.read(0x10, 1) == b"\x00"
    assert uart.dev.save() == SerialState()


def test_fifo_fills_to_64_and_keeps_order(uart: Uart) -> None:
    uart.wr(FCR, 0x01)
    data = bytes(range(100))
    assert uart.dev.input_space() == FIFO_SIZE == 64
    assert uart.dev.enqueue_input(data) == 64
    assert uart.dev.input_space() == 0
    assert uart.dev.enqueue_input(b"more") == 0
    assert uart.rd(LSR) & 0x03 == 0x01  # data ready, no overrun: excess input stays with the caller
    got = bytes(uart.rd(DATA) for _ in range(64))
    assert got == data[:64]
    assert uart.rd(LSR) & 0x01 == 0
    assert uart.drained == 1
    assert uart.dev.enqueue_input(data[64:]) == 36


def test_fifo_disabled_holds_one_byte(uart: Uart) -> None:
    assert uart.dev.enqueue_input(b"ab") == 1
    assert uart.dev.input_space() == 0
    assert uart.rd(DATA) == ord("a")
    assert uart.drained == 1
    assert uart.dev.input_space() == 1


def test_reading_an_empty_receiver_returns_zero(uart: Uart) -> None:
    assert uart.rd(DATA) == 0
    assert uart.drained == 0


def test_fcr_clear_rx_and_mode_switch_empty_the_fifo(uart: Uart) -> None:
    uart.wr(FCR, 0x01)
    uart.dev.enqueue_input(b"abc")
    uart.wr(FCR, 0x01 | 0x04)  # clear TX only
    assert uart.rd(LSR) & 0x01
    uart.wr(FCR, 0x01 | 0x02)
    assert uart.rd(LSR) & 0x01 == 0
    assert uart.drained == 1
    uart.dev.enqueue_input(b"abc")
    uart.wr(FCR, 0x00)  # leaving FIFO mode
    assert uart.rd(LSR) & 0x01 == 0
    assert uart.drained == 2
    assert uart.dev.input_space() == 1


def test_iir_reports_fifos_enabled_in_its_top_bits(uart: Uart) -> None:
    uart.wr(FCR, 0xC1)
    assert uart.rd(IIR) == 0xC1
    assert uart.dev.save().fcr == 0xC1
    uart.wr(FCR, 0x00)
    assert uart.rd(IIR) == 0x01
    assert uart.dev.save().fcr == 0x00


def test_iir_priorities(uart: Uart) -> None:
    uart.wr(FCR, 0x01)
    uart.wr(MCR, 0x10)  # loopback, to make every source happen
    for byte in range(FIFO_SIZE + 1):  # one more than fits: overrun
        uart.wr(DATA, byte)
    uart.wr(MCR, 0x12)  # RTS -> CTS changes: modem status delta
    uart.wr(IER, 0x0F)
    assert uart.rd(IIR) == 0xC6  # line status first
    assert uart.rd(LSR) & 0x03 == 0x03  # overrun seen, and now cleared
    assert uart.rd(IIR) == 0xC4  # then received data
    for _ in range(FIFO_SIZE):
        uart.rd(DATA)
    assert uart.rd(IIR) == 0xC2  # then THR empty, acknowledged by this read
    assert uart.rd(IIR) == 0xC0  # then modem status
    assert uart.rd(MSR) & 0x0F == 0x0B  # CTS, DSR, DCD all changed on the way into loopback
    assert uart.rd(IIR) == 0xC1


def test_interrupt_sources_that_are_not_enabled_are_not_reported(uart: Uart) -> None:
    uart.dev.enqueue_input(b"x")
    uart.wr(DATA, ord("y"))
    assert uart.rd(IIR) == 0x01
    assert uart.irq.pulses == 0


def test_enabling_thr_empty_pulses_once_per_rising_edge(uart: Uart) -> None:
    uart.wr(IER, 0x02)
    assert uart.irq.pulses == 1
    uart.wr(IER, 0x02)  # unchanged: no new source
    assert uart.irq.pulses == 1
    assert uart.rd(IIR) == 0x02
    assert uart.rd(IIR) == 0x01  # acknowledged by the first read
    uart.wr(IER, 0x03)  # THRE bit stays set: not re-armed
    assert uart.rd(IIR) == 0x01
    assert uart.irq.pulses == 1
    uart.wr(IER, 0x00)
    uart.wr(IER, 0x02)  # off and on again re-arms, as Linux's THRE probe expects
    assert uart.irq.pulses == 2
    assert uart.rd(IIR) == 0x02


def test_every_thr_write_pulses_when_thr_empty_is_enabled(uart: Uart) -> None:
    uart.wr(IER, 0x02)
    uart.rd(IIR)
    pulses = uart.irq.pulses
    for byte in b"abc":
        uart.wr(DATA, byte)
    assert uart.irq.pulses == pulses + 3
    assert uart.rd(IIR) == 0x02
    uart.wr(IER, 0x00)
    uart.wr(DATA, ord("d"))
    assert uart.irq.pulses == pulses + 3
    assert uart.out == b"abcd"


def test_received_data_pulses_when_the_fifo_stops_being_empty(uart: Uart) -> None:
    uart.wr(FCR, 0x01)
    uart.wr(IER, 0x01)
    assert uart.irq.pulses == 0
    uart.dev.enqueue_input(b"ab")
    assert uart.irq.pulses == 1
    uart.dev.enqueue_input(b"c")  # already pending: no new edge
    assert uart.irq.pulses == 1
    assert uart.rd(IIR) == 0xC4
    assert bytes(uart.rd(DATA) for _ in range(3)) == b"abc"
    assert uart.rd(IIR) == 0xC1
    uart.dev.enqueue_input(b"d")
    assert uart.irq.pulses == 2


def test_enabling_received_data_with_data_waiting_pulses(uart: Uart) -> None:
    uart.dev.enqueue_input(b"a")
    assert uart.irq.pulses == 0
    uart.wr(IER, 0x01)
    assert uart.irq.pulses == 1
    uart.wr(IER, 0x00)
    uart.wr(IER, 0x01)
    assert uart.irq.pulses == 2


def test_empty_input_neither_pulses_nor_sets_data_ready(uart: Uart) -> None:
    uart.wr(IER, 0x01)
    assert uart.dev.enqueue_input(b"") == 0
    assert uart.irq.pulses == 0
    assert uart.rd(LSR) & 0x01 == 0


def test_loopback_returns_transmitted_bytes_to_the_receiver(uart: Uart) -> None:
    uart.wr(FCR, 0x01)
    uart.wr(MCR, 0x10)
    uart.wr(IER, 0x01)
    for byte in b"ping":
        uart.wr(DATA, byte)
    assert uart.out == b""
    assert uart.irq.pulses == 1
    assert bytes(uart.rd(DATA) for _ in range(4)) == b"ping"
    assert uart.dev.input_space() == 0  # the receiver only hears itself
    assert uart.dev.enqueue_input(b"host") == 0
    uart.wr(MCR, 0x08)
    assert uart.dev.input_space() == FIFO_SIZE
    uart.wr(DATA, ord("!"))
    assert uart.out == b"!"


def test_loopback_overrun_raises_line_status(uart: Uart) -> None:
    uart.wr(MCR, 0x10)  # FIFOs off: one byte fits
    uart.wr(IER, 0x04)
    uart.wr(DATA, ord("a"))
    assert uart.irq.pulses == 0
    uart.wr(DATA, ord("b"))
    assert uart.irq.pulses == 1
    assert uart.rd(IIR) == 0x06
    assert uart.rd(LSR) == 0x63  # overrun + data ready + THR empty + idle
    assert uart.rd(LSR) == 0x61  # overrun clears on read
    assert uart.rd(IIR) == 0x01
    assert uart.rd(DATA) == ord("a")  # the FIFO kept its byte, the new one was lost


def test_loopback_modem_lines_follow_mcr_as_linux_probes_them(uart: Uart) -> None:
    uart.wr(MCR, 0x10 | 0x0A)  # loopback, OUT2, RTS
    assert uart.rd(MSR) & 0xF0 == 0x90  # DCD, CTS
    uart.wr(MCR, 0x10 | 0x05)  # OUT1, DTR
    assert uart.rd(MSR) == 0x40 | 0x20 | 0x0B  # RI, DSR; CTS, DSR, DCD changed (RI rising: no delta)
    uart.wr(MCR, 0x10)
    assert uart.rd(MSR) == 0x04 | 0x02  # RI trailing edge, DSR changed
    assert uart.rd(MSR) == 0x00  # deltas clear on read


def test_modem_status_interrupt(uart: Uart) -> None:
    uart.wr(IER, 0x08)
    uart.wr(MCR, 0x10 | 0x02)  # entering loopback drops DSR, DCD; CTS stays (RTS)
    assert uart.irq.pulses == 1
    assert uart.rd(IIR) == 0x00
    assert uart.rd(MSR) == 0x10 | 0x02 | 0x08
    assert uart.rd(IIR) == 0x01
    uart.wr(MCR, 0x08)  # back to a present, ready peer
    assert uart.irq.pulses == 2
    assert uart.rd(MSR) == 0xB0 | 0x02 | 0x08


def _filled_uart() -> Uart:
    uart = Uart()
    uart.wr(LCR, 0x80)
    uart.wr(DATA, 0x01)
    uart.wr(IER, 0x00)
    uart.wr(LCR, 0x1B)
    uart.wr(FCR, 0x81)
    uart.wr(SCR, 0x42)
    uart.wr(IER, 0x0B)
    uart.dev.enqueue_input(b"the quick brown fox")
    assert bytes(uart.rd(DATA) for _ in range(4)) == b"the "
    return uart


def test_save_restore_mid_fifo_keeps_reading_the_same_bytes() -> None:
    uart = _filled_uart()
    state = uart.dev.save()
    copy = Uart(SerialState.from_dict(state.to_dict()))
    assert copy.dev.save() == state
    for device in (uart, copy):
        assert bytes(device.rd(DATA) for _ in range(15)) == b"quick brown fox"
        assert device.rd(LSR) & 0x01 == 0
        assert device.rd(LCR) == 0x1B
        assert device.rd(SCR) == 0x42
        device.wr(LCR, 0x9B)
        assert device.rd(DATA) == 0x01
    assert uart.dev.save() == copy.dev.save()


def test_restore_pulses_once_when_an_enabled_interrupt_is_pending() -> None:
    uart = _filled_uart()
    copy = Uart(uart.dev.save())
    assert copy.irq.pulses == 1
    quiet = Uart(SerialState())
    assert quiet.irq.pulses == 0


def test_restore_replaces_everything_in_a_used_device() -> None:
    uart = _filled_uart()
    other = Uart()
    other.wr(MCR, 0x10)
    other.wr(DATA, ord("z"))
    other.dev.restore(uart.dev.save())
    assert other.dev.save() == uart.dev.save()


def test_no_hidden_state_random_operations_agree_after_restore() -> None:
    """A copy restored from save() behaves exactly like the original under any sequence of accesses."""
    rng = random.Random(1234)
    original = Uart()
    for round_ in range(40):
        copy = Uart(original.dev.save())
        copy.irq.pulses = original.irq.pulses = 0
        copy.drained = original.drained = 0
        copy.out.clear()
        original.out.clear()
        for _ in range(50):
            kind = rng.randrange(4)
            offset = rng.randrange(8)
            value = rng.randrange(256)
            if offset == FCR and kind == 1:
                value |= 0x01  # mostly keep FIFOs on so the buffer fills
            if kind == 0:
                assert original.rd(offset) == copy.rd(offset), f"round {round_} read {offset}"
            elif kind == 1:
                original.wr(offset, value)
                copy.wr(offset, value)
            elif kind == 2:
                data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80)))
                assert original.dev.enqueue_input(data) == copy.dev.enqueue_input(data)
            else:
                assert original.dev.input_space() == copy.dev.input_space()
        assert original.out == copy.out
        assert original.irq.pulses == copy.irq.pulses
        assert original.drained == copy.drained
        assert original.dev.save() == copy.dev.save()


def test_to_dict_uses_plain_types() -> None:
    data = _filled_uart().dev.save().to_dict()
    assert data["rx_fifo"] == b"quick brown fox"
    assert {type(value) for value in data.values()} <= {int, bool, bytes}


def test_from_dict_rejects_unknown_field() -> None:
    data = SerialState().to_dict()
    data["tx_fifo"] = b""
    with pytest.raises(StateError, match="serial state: unknown field 'tx_fifo'"):
        SerialState.from_dict(data)


def test_from_dict_rejects_missing_field() -> None:
    data = SerialState().to_dict()
    del data["scr"]
    with pytest.raises(StateError, match="serial state: missing field 'scr'"):
        SerialState.from_dict(data)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("ier", True, "field 'ier' must be int, got bool"),
        ("rx_fifo", "abc", "field 'rx_fifo' must be bytes, got str"),
        ("overrun", 1, "field 'overrun' must be bool, got int"),
        ("lcr", 256, "field 'lcr' out of range"),
        ("scr", -1, "field 'scr' out of range"),
        ("ier", 0x10, "field 'ier' has bits outside"),
        ("fcr", 0x03, "field 'fcr' has bits outside"),
        ("msr", 0x00, "field 'msr' lines"),
        ("rx_fifo", b"ab", "field 'rx_fifo' holds 2 bytes"),  # FIFOs off: one byte at most
    ],
)
def test_from_dict_rejects_bad_values(field: str, value: object, message: str) -> None:
    data = SerialState().to_dict()
    data[field] = value
    with pytest.raises(StateError, match=message):
        SerialState.from_dict(data)


def test_from_dict_rejects_a_non_mapping() -> None:
    with pytest.raises(StateError, match="expected a mapping"):
        SerialState.from_dict([("ier", 0)])  # type: ignore[arg-type]


def test_fifo_of_64_is_valid_with_fifos_on_and_65_is_not() -> None:
    data = SerialState(fcr=0x01).to_dict()
    data["rx_fifo"] = bytes(64)
    assert len(SerialState.from_dict(data).rx_fifo) == 64
    data["rx_fifo"] = bytes(65)
    with pytest.raises(StateError):
        SerialState.from_dict(data)


@dataclasses.dataclass(frozen=True)
class _ContainerState(DeviceState):
    DEVICE = "example"

    name: str
    queues: list[int]


def test_state_base_checks_containers_by_their_outer_type() -> None:
    """The DeviceState base that SerialState uses also carries str and container fields."""
    assert _ContainerState.from_dict({"name": "rx", "queues": [1, 2]}) == _ContainerState("rx", [1, 2])
    with pytest.raises(StateError, match="example state: field 'queues' must be list, got tuple"):
        _ContainerState.from_dict({"name": "rx", "queues": (1, 2)})


# -- the plain transmit mode a VMM may serve without the model -------------------------------------------------


def test_power_on_transmits_plainly_with_the_idle_line_status(uart: Uart) -> None:
    assert uart.dev.transmits_plainly()
    assert uart.rd(LSR) == LINE_STATUS_IDLE


@pytest.mark.parametrize(
    "setup",
    [
        pytest.param(lambda u: u.wr(LCR, 0x83), id="divisor latch"),
        pytest.param(lambda u: u.wr(MCR, 0x18), id="loopback"),
        pytest.param(lambda u: u.wr(IER, 0x02), id="THR-empty interrupt"),
        pytest.param(lambda u: u.dev.enqueue_input(b"k"), id="byte received"),
    ],
)
def test_anything_a_thr_write_or_lsr_read_would_show_ends_plain_transmit(uart: Uart, setup: object) -> None:
    setup(uart)  # type: ignore[operator]
    assert not uart.dev.transmits_plainly()


def test_plain_transmit_returns_once_the_receiver_is_read_empty(uart: Uart) -> None:
    uart.dev.enqueue_input(b"k")
    assert uart.rd(LSR) == LINE_STATUS_IDLE | 0x01
    uart.rd(DATA)
    assert uart.dev.transmits_plainly()


def test_an_overrun_ends_plain_transmit_until_lsr_is_read(uart: Uart) -> None:
    uart.wr(MCR, 0x10)  # loopback, FIFOs off: the second byte overruns
    uart.wr(DATA, 1)
    uart.wr(DATA, 2)
    uart.wr(MCR, 0x08)
    uart.rd(DATA)
    assert not uart.dev.transmits_plainly()  # the overrun is still latched
    uart.rd(LSR)
    assert uart.dev.transmits_plainly()


def test_bytes_sent_outside_the_model_latch_thr_empty_as_a_write_would() -> None:
    by_model, outside = Uart(), Uart()
    by_model.wr(DATA, ord("x"))
    outside.dev.note_transmitted()
    assert outside.dev.save() == by_model.dev.save()
