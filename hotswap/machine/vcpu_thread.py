"""One thread per vCPU running KVM_RUN, with pause/resume.

Pausing: set kvm_run.immediate_exit and send the thread a signal. A vCPU inside KVM_RUN returns EINTR; one about to
enter returns at once because of immediate_exit. A thread whose last exit was port I/O or MMIO enters once more
with immediate_exit set, so KVM completes that access (a read's data, RIP past the instruction) and the state read
while paused is consistent (the KVM API documents this for immediate_exit); one interrupted inside KVM_RUN has
nothing to complete and parks at once (that re-entry cost ~40 us of every pause). The thread then waits at the
machine's gate; its vCPU is touched by other threads only while it is parked there. Resuming opens the gate:
one eventfd write releases every vCPU at once.

Parked, the thread can do work for the machine: the last vCPU to stop runs the work after a pause (a handover's
capture and send, after_pause.py), and a parked thread runs an ioctl batch posted to it, in C (a successor's vCPU
restore). Both keep the work on the CPU that runs the vCPU and spare a wake-up across CPUs.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from collections.abc import Callable

from hotswap.errors import HotswapError
from hotswap.machine import priority
from hotswap.machine.affinity import pin_this_thread
from hotswap.machine.after_pause import AfterPause
from hotswap.machine.exit_handler import ExitBus, Stop, handle_exit
from hotswap.machine.signal_fd import Gate, SignalFd, drain
from hotswap.proctitle import set_thread_name
from kvm import KvmError, Vcpu
from kvm._ffi import ffi, lib
from kvm.batch import IoctlBatch
from kvm.byte_queue import ByteQueue
from kvm.exits import INTERRUPTED
from kvm.lane import LaneReader

# How long a parked thread that ran posted work polls the gate before it sleeps: covers a successor's remaining
# restore (~0.2-0.5 ms measured), so the release costs no wake-up (70-130 us across CPUs on this host).
SPIN_AFTER_POSTED_NS = 3_000_000
KICK_SIGNAL = signal.SIGRTMIN + 1  # SIGRTMIN itself is taken by some libcs' thread internals
_kick_handler_installed = False


def install_kick_handler() -> None:
    """A no-op C-level handler: the signal only interrupts KVM_RUN and never wakes the Python main thread."""
    global _kick_handler_installed
    if not _kick_handler_installed:
        rc = lib.hs_install_kick_handler(KICK_SIGNAL)
        if rc < 0:
            raise KvmError("sigaction", -rc, "vCPU kick signal")
        _kick_handler_installed = True


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class VcpuThread:
    """Runs one vCPU. `on_stop(index, Stop)` is called (from this thread) when the guest must stop.

    `gate` is shared by all vCPUs of a machine and owned by the machine, which closes it before asking vCPUs to
    pause and opens it to resume them; `running` (a semaphore eventfd) gets one count per vCPU as it resumes."""

    def __init__(
        self,
        vcpu: Vcpu,
        pio: ExitBus,
        mmio: ExitBus,
        on_stop: Callable[[int, Stop], None],
        gate: Gate,
        on_running: Callable[[], None],
        cpus: tuple[int, ...] = (),
        byte_queue: ByteQueue | None = None,
    ) -> None:
        """`byte_queue`: UART exits served in C while it is open (kvm/byte_queue.py)."""
        install_kick_handler()
        self.vcpu = vcpu
        self._byte_queue = byte_queue
        self._pio = pio
        self._mmio = mmio
        self._on_stop = on_stop
        self._gate = gate
        self._on_running = on_running
        self._cpus = cpus
        self._pause_requested = False
        self._after_pause: AfterPause | None = None
        self._quit = False
        self._paused = SignalFd()
        # A batch posted to the parked thread (post_batch) and the parked wait, in C without the GIL (hs_park).
        self._posted_batch: IoctlBatch | None = None
        self._lane: LaneReader | None = None
        self._wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._done_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._park_ctl = ffi.new("struct hs_park *")
        self._park_ctl.gate_fd = gate.fd
        self._park_ctl.wake_fd = self._wake_fd
        self._park_ctl.done_fd = self._done_fd
        self._park_ctl.steps = ffi.NULL
        self._park_ctl.lane = ffi.NULL
        self._thread = threading.Thread(target=self._loop, name=f"vcpu{vcpu.id}", daemon=True)
        self._ident: int | None = None
        self.paused_at_ns = 0
        self.resumed_at_ns = 0

    @property
    def index(self) -> int:
        return self.vcpu.id

    @property
    def native_id(self) -> int | None:
        """The thread's kernel thread id, once it runs."""
        return self._thread.native_id

    def start(self, paused: bool = False) -> None:
        """Start the thread; with paused=True it parks at the gate before its first KVM_RUN."""
        if paused:
            self._pause_requested = True
            self.vcpu.immediate_exit = True
        self._thread.start()

    # -- pause / resume (called from the controlling thread, with the gate closed) ----------------------------
    def request_pause(self, after: AfterPause | None = None) -> None:
        """Ask the vCPU to stop; wait_paused() waits for it. Split so several vCPUs stop in parallel. `after`:
        told when this vCPU parks (the last one runs its work before it reports paused)."""
        self._after_pause = after
        self._pause_requested = True
        self.vcpu.immediate_exit = True
        ident = self._ident
        if ident is not None and not self._paused.is_set():
            try:
                signal.pthread_kill(ident, KICK_SIGNAL)
            except ProcessLookupError:
                pass  # the thread already ended

    def wait_paused(self, timeout: float | None = None) -> bool:
        return self._paused.wait(timeout)

    @property
    def is_paused(self) -> bool:
        return self._paused.is_set()

    def prepare_resume(self) -> None:
        """Let the vCPU run once the gate opens."""
        self._pause_requested = False
        self.vcpu.immediate_exit = False
        self._paused.clear()

    def request_quit(self) -> None:
        """End the thread for good (shutdown, or handed over); the caller then opens the gate and joins."""
        self._quit = True
        self.request_pause()

    # -- the loop ---------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        self._ident = threading.get_ident()
        set_thread_name(f"vcpu{self.vcpu.id}")  # `top -H`, `ps -L` and /proc show which thread runs the guest
        pin_this_thread(self._cpus, f"vcpu{self.vcpu.id}")
        vcpu = self.vcpu
        pio, mmio, byte_queue = self._pio, self._mmio, self._byte_queue
        # True while the last exit was an I/O exit: KVM completes it (the data of a read, RIP past the
        # instruction) only at the next KVM_RUN. A kick that interrupted KVM_RUN leaves nothing to complete.
        io_pending = False
        try:
            while not self._quit:
                if self._pause_requested:
                    if io_pending:
                        # Enter once with immediate_exit set: completes the I/O before we report paused.
                        vcpu.run()
                        io_pending = False
                    if self._pause_requested:
                        self._park()
                    continue
                exit = vcpu.run(byte_queue)
                io_pending = exit is not INTERRUPTED
                result = handle_exit(exit, pio, mmio, vcpu)
                if isinstance(result, Stop):
                    if result.kind == "failure":
                        result = Stop(result.kind, f"vCPU {vcpu.id}: {result.detail}{self._where()}")
                    self._on_stop(vcpu.id, result)
                    self._park_until_quit()
                    return
        except KvmError as exc:
            self._on_stop(vcpu.id, Stop("failure", f"vCPU {vcpu.id}: {exc}"))
            self._park_until_quit()

    def _where(self) -> str:
        """Where the guest was, for failure reports (best effort: the vCPU may be unreadable)."""
        try:
            regs = self.vcpu.get_regs()
            sregs = self.vcpu.get_sregs()
        except KvmError:
            return ""
        return f" at RIP {regs.rip:#x} (CS {sregs.cs.selector:#x}, CPL {sregs.cs.dpl}, CR0 {sregs.cr0:#x})"

    def _park(self) -> None:
        self.paused_at_ns = now_ns()
        after, self._after_pause = self._after_pause, None
        if after is None:
            self._paused.set()  # first: the controlling thread starts capturing while we boost
        # Parked at real-time priority, so that on a busy host the release is not followed by a wait for a time
        # slice; back to normal before any guest code runs (hotswap/machine/priority.py). The work after a pause
        # is on the guest's critical path too.
        boosted = priority.boost()
        if after is not None:
            after.vcpu_parked()
            self._paused.set()
        while self._pause_requested and not self._quit:
            # Sleeps (or polls, after a batch posted with spin_after) until the gate opens, running posted
            # batches itself.
            woke = lib.hs_park(self._park_ctl)
            if woke < 0:
                raise KvmError("poll", -woke, "parked vCPU thread")
        self.resumed_at_ns = now_ns()
        if boosted:
            priority.unboost()
        if not self._quit:
            self._on_running()

    # -- work on a parked vCPU's own thread ------------------------------------------------------------------
    # A successor restores each vCPU on the vCPU's own thread: on the CPU that will run it, in parallel with the
    # rest of the restore, and as a C batch, so it never waits for the GIL that the controlling thread holds.
    def post_batch(self, batch: IoctlBatch, spin_after: bool = False) -> None:
        """Have the parked thread run `batch` (its buffers filled), without the GIL; wait_posted() waits for it.
        With `spin_after` the thread then polls the gate for up to SPIN_AFTER_POSTED_NS instead of sleeping: only
        for a vCPU on a CPU of its own, where nothing else waits for that CPU while the guest is paused."""
        self._posted_batch = batch
        ctl = self._park_ctl
        ctl.batch_fd = batch.fd
        ctl.count = batch.count
        ctl.spin_ns = SPIN_AFTER_POSTED_NS if spin_after else 0
        ctl.steps = batch.steps
        drain(self._done_fd)
        os.eventfd_write(self._wake_fd, 1)

    def wait_posted(self, timeout: float) -> int:
        """Wait for the posted batch; returns how long it ran (us), or raises KvmError naming the step KVM
        refused."""
        self._wait_done(timeout, "the batch posted to its thread did not finish")
        assert self._posted_batch is not None, "wait_posted() without post_batch()"
        self._posted_batch.check(self._park_ctl.done, self._park_ctl.rc)
        return int(self._park_ctl.ran_ns) // 1000

    # A successor's vCPU whose state comes as a record in shared memory (protocol 5, kvm/lane.py): the parked
    # thread takes it when the old VMM's vCPU thread signals it, in C: no thread of this process wakes it first.
    def attach_lane(self, reader: LaneReader, spin_after: bool = False) -> None:
        """Have the parked thread take its vCPU's record (once) when it arrives; wait_lane() waits for that.
        `spin_after`: as for post_batch."""
        self._lane = reader
        ctl = self._park_ctl
        ctl.spin_ns = SPIN_AFTER_POSTED_NS if spin_after else 0
        drain(self._done_fd)
        ctl.lane = reader.c
        os.eventfd_write(self._wake_fd, 1)  # a thread already asleep in hs_park polls the record's fd from now on

    def wait_lane(self, timeout: float) -> int:
        """Wait until the parked thread took the record; returns how long its check and restore took (us), or
        raises (LaneRecordError: the record was refused, nothing written into the vCPU; KvmError: KVM refused a
        step of the restore)."""
        assert self._lane is not None, "wait_lane() without attach_lane()"
        self._wait_done(timeout, "its state record was not taken")
        return self._lane.check()

    def _wait_done(self, timeout: float, failure: str) -> None:
        """Wait for the parked thread to signal its posted work (a batch or a record) done, or raise `failure`."""
        done = select.poll()
        done.register(self._done_fd, select.POLLIN)
        if not done.poll(int(timeout * 1000)):
            raise HotswapError(f"vCPU {self.index}: {failure} within {timeout} s")
        drain(self._done_fd)

    @property
    def lane_began_ns(self) -> int:
        """When the parked thread started taking its record (CLOCK_MONOTONIC ns), 0 without one."""
        return self._lane.began_ns if self._lane is not None else 0

    def _park_until_quit(self) -> None:
        self._paused.set()
        while not self._quit:
            self._gate.wait(1.0)
            time.sleep(0.05)

    def close(self) -> None:
        """Release the wake-up fds (after the thread ended)."""
        self._paused.close()
        for fd in (self._wake_fd, self._done_fd):
            os.close(fd)

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)
