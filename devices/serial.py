"""A 16550A UART as a pure state machine: register offsets in, bytes and interrupt pulses out.

Behaviour follows the PC16550D data sheet, simplified the way VMMs do it: transmission is instantaneous (a byte
written to THR goes straight to the output sink, so THR and the transmitter are always empty again when the
write returns), and received bytes wait in a 64-byte FIFO (one byte when the guest has not enabled FIFOs).

Interrupts are edge pulses on an InterruptLine (an irqfd for the VMM): a pulse is sent whenever an enabled
interrupt source becomes pending. The pending sources themselves are kept (or derived from the registers), so the
IIR a driver reads is right whatever the pulses did. Sources, highest priority first:

    receiver line status   IER bit 2, an overrun (only possible in loopback)    cleared by reading LSR
    received data          IER bit 0, the receive FIFO holds data               cleared by reading it empty
    THR empty              IER bit 1, latched after each THR write, and when    cleared by an IIR read that
                           IER bit 1 goes from 0 to 1 (THR is always empty)     reports it, or a THR write
    modem status           IER bit 3, a delta bit set in MSR                    cleared by reading MSR

No character-timeout timer exists: the received-data interrupt is raised as soon as one byte is waiting, which a
driver treats the same as the FIFO trigger level being reached.

Everything the model knows is in SerialState: no transmit buffer, no timers, no hidden latches. A byte the guest
writes is in the sink before write() returns, so nothing is lost or sent twice across save() / restore().
The model is not thread-safe: the VMM serializes vCPU accesses and console input (one lock per device).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from devices.errors import StateError
from devices.interfaces import InterruptLine
from devices.state import DeviceState, check_u8

OutputSink = Callable[[bytes], None]
"""Receives each byte the guest transmits. Called on the vCPU thread: it must neither block nor raise (the
console writer it stands for buffers or drops when its reader is slow)."""

FIFO_SIZE = 64

# Register offsets (DLAB selects the divisor latch at 0 and 1).
_DATA, _IER, _IIR, _LCR, _MCR, _LSR, _MSR, _SCR = range(8)
_FCR = _IIR
REGISTER_COUNT = 8
THR_OFFSET, LSR_OFFSET = _DATA, _LSR  # the two registers a VMM's fast path serves (transmits_plainly)

IER_RX_DATA = 0x01
IER_THR_EMPTY = 0x02
IER_LINE_STATUS = 0x04
IER_MODEM_STATUS = 0x08
_IER_MASK = 0x0F

IIR_NONE = 0x01
IIR_MODEM_STATUS = 0x00
IIR_THR_EMPTY = 0x02
IIR_RX_DATA = 0x04
IIR_LINE_STATUS = 0x06
IIR_FIFO_ENABLED = 0xC0

FCR_ENABLE = 0x01
FCR_CLEAR_RX = 0x02
FCR_CLEAR_TX = 0x04
_FCR_KEPT = 0xC1  # the enable bit and the receive trigger level are remembered; the clear bits self-reset

LCR_DLAB = 0x80

MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOPBACK = 0x10
_MCR_MASK = 0x1F

LSR_DATA_READY = 0x01
LSR_OVERRUN = 0x02
LSR_THR_EMPTY = 0x20
LSR_TX_IDLE = 0x40

LINE_STATUS_IDLE = LSR_THR_EMPTY | LSR_TX_IDLE  # LSR with nothing received and no error pending

MSR_DELTA_CTS = 0x01
MSR_DELTA_DSR = 0x02
MSR_TRAILING_RI = 0x04
MSR_DELTA_DCD = 0x08
_MSR_DELTAS = 0x0F
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80
_MSR_LINES = 0xF0
_MSR_IDLE_LINES = MSR_DCD | MSR_DSR | MSR_CTS  # outside loopback: a peer that is present and ready

# Pending-source bits used internally for edge detection (not a register layout).
_SRC_LINE_STATUS = 8
_SRC_RX_DATA = 4
_SRC_THR_EMPTY = 2
_SRC_MODEM_STATUS = 1

_BYTES = tuple(bytes((value,)) for value in range(256))  # reads return these without allocating


def modem_lines(mcr: int) -> int:
    """The MSR line bits (CTS, DSR, RI, DCD) seen with modem control `mcr`.

    In loopback the outputs are wired back to the inputs: RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD.
    """
    if not mcr & MCR_LOOPBACK:
        return _MSR_IDLE_LINES
    lines = 0
    if mcr & MCR_RTS:
        lines |= MSR_CTS
    if mcr & MCR_DTR:
        lines |= MSR_DSR
    if mcr & MCR_OUT1:
        lines |= MSR_RI
    if mcr & MCR_OUT2:
        lines |= MSR_DCD
    return lines


def fifo_capacity(fcr: int) -> int:
    """Receive buffer size: the FIFO when enabled, else the single receive holding register."""
    return FIFO_SIZE if fcr & FCR_ENABLE else 1


@dataclasses.dataclass(frozen=True)
class SerialState(DeviceState):
    """Everything a 16550A model holds. The defaults are the power-on state."""

    DEVICE = "serial"

    divisor_low: int = 0x0C  # DLL/DLM: 115200 / 12 = 9600 baud
    divisor_high: int = 0x00
    ier: int = 0x00
    fcr: int = 0x00  # FIFO enable and trigger level as last written
    lcr: int = 0x03  # 8 data bits, no parity, 1 stop bit
    mcr: int = MCR_OUT2
    msr: int = _MSR_IDLE_LINES  # line bits plus the not yet read delta bits
    scr: int = 0x00
    overrun: bool = False  # LSR overrun error, latched until LSR is read
    thr_empty_pending: bool = False  # the THR-empty interrupt latch
    rx_fifo: bytes = b""

    def __post_init__(self) -> None:
        for name in ("divisor_low", "divisor_high", "ier", "fcr", "lcr", "mcr", "msr", "scr"):
            check_u8(self.DEVICE, name, getattr(self, name))
        for name, mask in (("ier", _IER_MASK), ("fcr", _FCR_KEPT), ("mcr", _MCR_MASK)):
            if getattr(self, name) & ~mask:
                raise StateError(f"serial state: field {name!r} has bits outside {mask:#04x}")
        if self.msr & _MSR_LINES != modem_lines(self.mcr):
            raise StateError(f"serial state: field 'msr' lines {self.msr:#04x} contradict mcr {self.mcr:#04x}")
        if len(self.rx_fifo) > fifo_capacity(self.fcr):
            raise StateError(
                f"serial state: field 'rx_fifo' holds {len(self.rx_fifo)} bytes, "
                f"more than the receiver's {fifo_capacity(self.fcr)}"
            )


class Serial:
    """A 16550A UART. `read`/`write` take register offsets (0..7; anything above reads 0 and ignores writes)."""

    def __init__(
        self,
        interrupt: InterruptLine,
        sink: OutputSink,
        on_rx_drained: Callable[[], None] | None = None,
    ) -> None:
        """`on_rx_drained` is called (on the vCPU thread) when the guest reads the receive FIFO empty, so the
        VMM can feed it the input it held back."""
        self._interrupt = interrupt
        self._sink = sink
        self._on_rx_drained = on_rx_drained
        self._load(SerialState())

    @classmethod
    def from_state(
        cls,
        state: SerialState,
        interrupt: InterruptLine,
        sink: OutputSink,
        on_rx_drained: Callable[[], None] | None = None,
    ) -> Serial:
        serial = cls(interrupt, sink, on_rx_drained)
        serial.restore(state)
        return serial

    def save(self) -> SerialState:
        return SerialState(
            divisor_low=self._dll,
            divisor_high=self._dlm,
            ier=self._ier,
            fcr=self._fcr,
            lcr=self._lcr,
            mcr=self._mcr,
            msr=self._msr,
            scr=self._scr,
            overrun=self._overrun,
            thr_empty_pending=self._thr_empty,
            rx_fifo=bytes(self._rx),
        )

    def restore(self, state: SerialState) -> None:
        """Take over `state`. If an enabled interrupt is pending it is pulsed once more: the previous owner's
        last pulse may still have been on its way through the irqfd when the irqchip state was captured, and
        a lost edge would stall the guest's driver where a spare one costs one spurious interrupt."""
        self._load(state)
        if self._pending_sources():
            self._interrupt.pulse()

    def _load(self, state: SerialState) -> None:
        self._dll = state.divisor_low
        self._dlm = state.divisor_high
        self._ier = state.ier
        self._fcr = state.fcr
        self._lcr = state.lcr
        self._mcr = state.mcr
        self._msr = state.msr
        self._scr = state.scr
        self._overrun = state.overrun
        self._thr_empty = state.thr_empty_pending
        self._rx = bytearray(state.rx_fifo)

    # A VMM's fast path.

    def transmits_plainly(self) -> bool:
        """True while writing THR does nothing but send the byte (and latch THR empty, which only an enabled
        THR-empty interrupt would show) and reading LSR returns LINE_STATUS_IDLE without side effects: divisor
        latch off, no loopback, THR-empty interrupt off, nothing received, no overrun. A VMM may then serve
        those two accesses without the model, then call note_transmitted()."""
        return not (
            self._lcr & LCR_DLAB or self._mcr & MCR_LOOPBACK or self._ier & IER_THR_EMPTY or self._rx or self._overrun
        )

    def note_transmitted(self) -> None:
        """Bytes were sent for the guest outside write() while transmits_plainly() held: THR is empty again."""
        self._thr_empty = True

    # Input from the host side.

    def input_space(self) -> int:
        """How many bytes enqueue_input would accept now (0 in loopback: the receiver hears only itself)."""
        if self._mcr & MCR_LOOPBACK:
            return 0
        return fifo_capacity(self._fcr) - len(self._rx)

    def enqueue_input(self, data: bytes) -> int:
        """Put as much of `data` into the receive FIFO as fits and return how many bytes were taken."""
        count = min(self.input_space(), len(data))
        if count <= 0:
            return 0
        was_empty = not self._rx
        self._rx += data[:count]
        if was_empty and self._ier & IER_RX_DATA:
            self._interrupt.pulse()
        return count

    # Guest accesses.

    def read(self, offset: int, size: int) -> bytes:
        value = self._read_register(offset) if offset < REGISTER_COUNT else 0
        if size == 1:
            return _BYTES[value]
        return _BYTES[value] + bytes(size - 1)  # a wider access sees the register in its low byte

    def write(self, offset: int, data: bytes) -> None:
        value = data[0]
        if offset == _DATA and not self._lcr & LCR_DLAB:
            self._transmit(value, data)
        elif offset < REGISTER_COUNT:
            self._write_register(offset, value)

    def _transmit(self, value: int, data: bytes) -> None:
        # Writing THR clears the THR-empty interrupt; the byte leaves at once, so THR is empty again and the
        # interrupt is pending anew: that is a fresh source, pulsed if enabled.
        if self._mcr & MCR_LOOPBACK:
            self._thr_empty = False
            before = self._pending_sources()
            self._loop_back(value)
            self._thr_empty = True
            self._pulse_if_new(before)
            return
        self._sink(data if len(data) == 1 else data[:1])
        self._thr_empty = True
        if self._ier & IER_THR_EMPTY:
            self._interrupt.pulse()

    def _loop_back(self, value: int) -> None:
        if len(self._rx) < fifo_capacity(self._fcr):
            self._rx.append(value)
        else:
            self._overrun = True  # as on the wire: the FIFO keeps its bytes and the new one is lost

    def _read_register(self, offset: int) -> int:
        if offset == _LSR:
            value = LSR_THR_EMPTY | LSR_TX_IDLE
            if self._rx:
                value |= LSR_DATA_READY
            if self._overrun:
                value |= LSR_OVERRUN
                self._overrun = False
            return value
        if offset == _DATA:
            if self._lcr & LCR_DLAB:
                return self._dll
            return self._receive()
        if offset == _IIR:
            return self._read_iir()
        if offset == _IER:
            return self._dlm if self._lcr & LCR_DLAB else self._ier
        if offset == _LCR:
            return self._lcr
        if offset == _MCR:
            return self._mcr
        if offset == _MSR:
            value = self._msr
            self._msr &= _MSR_LINES
            return value
        return self._scr

    def _receive(self) -> int:
        if not self._rx:
            return 0
        value = self._rx[0]
        del self._rx[0]
        if not self._rx and self._on_rx_drained is not None:
            self._on_rx_drained()
        return value

    def _read_iir(self) -> int:
        sources = self._pending_sources()
        if sources & _SRC_LINE_STATUS:
            value = IIR_LINE_STATUS
        elif sources & _SRC_RX_DATA:
            value = IIR_RX_DATA
        elif sources & _SRC_THR_EMPTY:
            value = IIR_THR_EMPTY
            self._thr_empty = False  # reading IIR acknowledges THR empty when it is the source reported
        elif sources & _SRC_MODEM_STATUS:
            value = IIR_MODEM_STATUS
        else:
            value = IIR_NONE
        if self._fcr & FCR_ENABLE:
            value |= IIR_FIFO_ENABLED
        return value

    def _write_register(self, offset: int, value: int) -> None:
        if offset == _DATA:  # DLAB set (THR is handled by write)
            self._dll = value
        elif offset == _IER:
            if self._lcr & LCR_DLAB:
                self._dlm = value
            else:
                self._write_ier(value & _IER_MASK)
        elif offset == _FCR:
            self._write_fcr(value)
        elif offset == _LCR:
            self._lcr = value
        elif offset == _MCR:
            self._write_mcr(value & _MCR_MASK)
        elif offset == _SCR:
            self._scr = value
        # LSR and MSR writes are factory-test features of the real part; ignored.

    def _write_ier(self, value: int) -> None:
        before = self._pending_sources()
        if value & ~self._ier & IER_THR_EMPTY:
            # Enabling the THR-empty interrupt samples THR, which is always empty here. Drivers rely on this
            # to start transmission (Linux toggles IER to kick the transmitter and to probe for THRE bugs).
            self._thr_empty = True
        self._ier = value
        self._pulse_if_new(before)

    def _write_fcr(self, value: int) -> None:
        had_data = bool(self._rx)
        if (value ^ self._fcr) & FCR_ENABLE:
            self._rx.clear()  # switching between FIFO and 16450 mode empties the FIFOs
        if value & FCR_ENABLE:
            if value & FCR_CLEAR_RX:
                self._rx.clear()
            self._fcr = value & _FCR_KEPT
        else:
            self._fcr = 0  # with FIFOs off the other FCR bits have no effect
        if had_data and not self._rx and self._on_rx_drained is not None:
            self._on_rx_drained()

    def _write_mcr(self, value: int) -> None:
        before = self._pending_sources()
        old_lines = self._msr & _MSR_LINES
        new_lines = modem_lines(value)
        changed = old_lines ^ new_lines
        # Each line's delta bit sits four bits below the line; RI reports only its trailing (1 -> 0) edge.
        deltas = (changed >> 4) & ~MSR_TRAILING_RI
        if old_lines & ~new_lines & MSR_RI:
            deltas |= MSR_TRAILING_RI
        self._mcr = value
        self._msr = new_lines | (self._msr & _MSR_DELTAS) | deltas
        self._pulse_if_new(before)

    def _pending_sources(self) -> int:
        ier = self._ier
        sources = 0
        if ier & IER_LINE_STATUS and self._overrun:
            sources |= _SRC_LINE_STATUS
        if ier & IER_RX_DATA and self._rx:
            sources |= _SRC_RX_DATA
        if ier & IER_THR_EMPTY and self._thr_empty:
            sources |= _SRC_THR_EMPTY
        if ier & IER_MODEM_STATUS and self._msr & _MSR_DELTAS:
            sources |= _SRC_MODEM_STATUS
        return sources

    def _pulse_if_new(self, before: int) -> None:
        if self._pending_sources() & ~before:
            self._interrupt.pulse()
