"""A running machine: platform + devices + vCPU threads + I/O thread, with pause/resume and state capture/restore.

A Machine is built completely (VM, memory slots, vCPUs with CPUID, devices, eventfds) before it runs, either to
boot a kernel or, in a successor VMM, to take over a paused guest's state.
"""

from __future__ import annotations

import enum
import functools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotswap import log
from hotswap.boot import load_kernel
from hotswap.boot.ram import split_ram
from hotswap.config import MachineConfig
from hotswap.errors import HotswapError
from hotswap.machine.affinity import online_cpus, pin_this_thread
from hotswap.machine.after_pause import AfterPause
from hotswap.machine.boot_cpu import apply_boot_plan
from hotswap.machine.console import Console, ConsoleFds
from hotswap.machine.devices import DeviceSet
from hotswap.machine.eventloop import EventLoop
from hotswap.machine.exit_handler import Stop
from hotswap.machine.platform import Platform, build_platform
from hotswap.machine.signal_fd import Gate, drain
from hotswap.machine.state_tree import machine_info_from_tree, vcpu_state_from_tree, vm_state_from_tree
from hotswap.machine.vcpu_thread import VcpuThread
from hotswap.machine.virtio import virtio_specs
from hotswap.state import get_field, pack, unpack
from kvm import KvmError, RegionSpec, vcpu_state, vm_state
from kvm.batch import IoctlBatch
from kvm.lane import LaneLayout, LaneReader, LaneRegion, layout_of, slot_offsets

PAUSE_TIMEOUT = 5.0


class RunState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


@dataclass(frozen=True)
class PauseWindow:
    """CLOCK_MONOTONIC ns: when the first vCPU stopped and when the last one did."""

    first_paused_ns: int
    last_paused_ns: int


class Machine:
    def __init__(
        self,
        config: MachineConfig,
        platform: Platform,
        loop: EventLoop,
        console: Console,
        generation: int,
        booted_at_ns: int,
        virtio_fds: list[int | None] | None = None,
    ) -> None:
        self.config = config
        self._config_dict = config.to_dict()  # asdict() takes 50-70 us; the window needs it twice (capture, restore)
        self.platform = platform
        self.console = console
        self.generation = generation
        self.booted_at_ns = booted_at_ns
        self.loop = loop
        self.devices = DeviceSet(
            platform.vm,
            platform.memory,
            self.loop,
            console,
            on_reset=self._on_guest_reset,
            virtio=virtio_specs(config),
            virtio_fds=virtio_fds,
        )
        self._gate = Gate()
        self._running = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK | os.EFD_SEMAPHORE)
        self.vcpu_threads = [
            VcpuThread(
                vcpu,
                self.devices.pio,
                self.devices.mmio,
                self._on_vcpu_stop,
                self._gate,
                functools.partial(os.eventfd_write, self._running, 1),
                # With --vmm-cpus alone the vCPUs may still use any CPU, not the VMM's ones they would inherit.
                cpus=config.vcpu_cpus or (online_cpus() if config.vmm_cpus else ()),
                byte_queue=self.devices.serial_port.queue,
            )
            for vcpu in platform.vcpus
        ]
        self.state = RunState.CREATED
        self.stop_reason: Stop | None = None
        self._stopped = threading.Event()
        self._control = threading.RLock()  # serialises pause/resume/capture/stop between API and handover
        self._log = log.get("machine")

    @property
    def vcpus_apart(self) -> bool:
        """The vCPU threads have CPUs the VMM's other threads never use (--vcpu-cpus): parked vCPU threads may
        poll there instead of sleeping, and an upgrade's helpers may run at idle priority on the VMM's CPUs."""
        return bool(self.config.vcpu_cpus) and not set(self.config.vcpu_cpus) & set(self.config.vmm_cpus)

    # -- construction -----------------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        config: MachineConfig,
        *,
        memory_fds: list[int] | None = None,
        console_fds: ConsoleFds | None = None,
        virtio_fds: list[int | None] | None = None,
        generation: int = 1,
        booted_at_ns: int | None = None,
    ) -> Machine:
        """Build everything short of running. With memory_fds/console_fds, adopt a predecessor's resources.

        Call it from the thread that will control the machine: it and every thread the machine starts are placed
        on `config.vmm_cpus` (the vCPU threads then move to `config.vcpu_cpus`)."""
        pin_this_thread(config.vmm_cpus, "vmm")
        regions = [RegionSpec(gpa, size) for gpa, size in split_ram(config.mem_size)]
        platform = build_platform(config.cpus, regions, memory_fds)
        loop = EventLoop()
        console = Console(loop, use_stdio=config.console == "stdio")
        try:
            if console_fds is not None:
                console.adopt(console_fds)
            else:
                if config.console == "socket":
                    console.listen(config.console_socket)
                if config.console_log:
                    console.open_log(config.console_log)
            return cls(config, platform, loop, console, generation, booted_at_ns or time.time_ns(), virtio_fds)
        except BaseException:
            console.close()
            loop.stop()
            platform.close()
            raise

    # -- booting ----------------------------------------------------------------------------------------------
    def boot(self) -> None:
        """Load the kernel into fresh RAM and start every vCPU."""
        plan = load_kernel(
            self.platform.memory,
            Path(self.config.kernel),
            Path(self.config.initrd) if self.config.initrd else None,
            " ".join(filter(None, (self.config.cmdline, self.devices.kernel_cmdline()))),
            split_ram(self.config.mem_size),
            self.config.cpus,
            cpuid=self.platform.cpuid,
        )
        apply_boot_plan(self.platform.vcpus[0], plan)
        self.warm_up()
        self._start_kvm_workers()
        self._start_io()
        for thread in self.vcpu_threads:
            thread.start()
        self.state = RunState.RUNNING
        self._log.info("machine.booted", kernel=self.config.kernel, entry=hex(plan.rip), mode=plan.mode)

    def start_paused(self) -> None:
        """Start the vCPU threads parked (a successor, before its state arrives)."""
        self._start_kvm_workers()
        self._gate.close()
        for thread in self.vcpu_threads:
            thread.start(paused=True)
        # Each vCPU's first KVM_RUN from its own thread happens now (immediate_exit: no guest code runs), not
        # right after the resume: _start_kvm_workers() entered vCPU 0 from this thread, and a vCPU that changes
        # threads pays for it at its next entry (Vcpu.enter_step()).
        for thread in self.vcpu_threads:
            assert thread.vcpu.immediate_exit, "a parked vCPU keeps immediate_exit set until its resume"
            thread.post_batch(IoctlBatch(thread.vcpu.fd, [thread.vcpu.enter_step()]))
        for thread in self.vcpu_threads:
            thread.wait_posted(PAUSE_TIMEOUT)
        # A first restore on each vCPU's own thread (of its own fresh state: a no-op) warms that path and loads
        # the vCPU on its CPU, so the real one inside the pause window does not move it there (an IPI each way).
        for thread in self.vcpu_threads:
            thread.post_batch(vcpu_state.load(thread.vcpu, vcpu_state.capture(thread.vcpu)))
        for thread in self.vcpu_threads:
            thread.wait_posted(PAUSE_TIMEOUT)
        self.state = RunState.PAUSED

    def _start_kvm_workers(self) -> None:
        """Enter KVM_RUN once from this thread, with immediate_exit set (no guest code runs), before any vCPU
        thread does. KVM starts its per-VM worker (NX huge page recovery) at the VM's first KVM_RUN with the
        entering thread's CPUs; started here it gets the VMM's CPUs instead of a vCPU's. It also does the VM's
        teardown when the VMM exits: on a pinned vCPU's CPU, after an upgrade, that was a 3 ms gap for the guest
        running in the successor (ftrace sched events)."""
        vcpu = self.platform.vcpus[0]
        vcpu.immediate_exit = True
        try:
            vcpu.run()
        finally:
            vcpu.immediate_exit = False

    def _start_io(self) -> None:
        self.loop.start()
        self.devices.resume()

    # -- control ----------------------------------------------------------------------------------------------
    def pause(self, then: Callable[[], None] | None = None) -> PauseWindow:
        """Stop every vCPU (all kicked at once, then waited for). `then` runs once all are stopped, before this
        returns, on the thread of the vCPU that stopped last (after_pause.py); what it raises is raised here."""
        with self._control:
            self._gate.close()
            after = AfterPause(then, len(self.vcpu_threads)) if then is not None else None
            for thread in self.vcpu_threads:
                thread.request_pause(after)
            for thread in self.vcpu_threads:
                if not thread.wait_paused(PAUSE_TIMEOUT) and not (after is not None and after.started):
                    raise HotswapError(f"vCPU {thread.index} did not pause within {PAUSE_TIMEOUT} s")
            if self.state is RunState.RUNNING:
                self.state = RunState.PAUSED
            if after is not None:
                after.finish()
            stamps = [t.paused_at_ns for t in self.vcpu_threads]
            return PauseWindow(min(stamps), max(stamps))

    def resume(self) -> int:
        """Let every vCPU run again; returns CLOCK_MONOTONIC ns when the last one was back on its way into
        KVM_RUN (waited for, so a downtime measured to here is not cut short by threads still waking up)."""
        with self._control:
            drain(self._running)
            for thread in self.vcpu_threads:
                thread.prepare_resume()
            # One write releases every vCPU; each signals _running on its way into KVM_RUN.
            self._gate.open_and_wait(self._running, len(self.vcpu_threads), PAUSE_TIMEOUT)
            if self.state is RunState.PAUSED:
                self.state = RunState.RUNNING
            return max(thread.resumed_at_ns for thread in self.vcpu_threads)

    def request_stop(self, reason: Stop) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stopped.set()

    def wait(self, timeout: float | None = None) -> Stop | None:
        self._stopped.wait(timeout)
        return self.stop_reason

    def shutdown(self) -> None:
        """Stop the vCPU and I/O threads and release every resource."""
        with self._control:
            self._stop_threads(5.0)
            for thread in self.vcpu_threads:
                thread.close()
            os.close(self._running)
            self._gate.release()
            self.loop.stop()
            self.devices.close()
            self.platform.close()
            self.state = RunState.STOPPED

    def abandon(self) -> None:
        """After a handover committed: stop our threads without touching the guest (its new VMM runs it)."""
        with self._control:
            self._stop_threads(1.0)
            self.loop.stop()
            self.state = RunState.STOPPED

    def _stop_threads(self, timeout: float) -> None:
        for thread in self.vcpu_threads:
            thread.request_quit()
        self._gate.open()
        for thread in self.vcpu_threads:
            thread.join(timeout)

    def _on_vcpu_stop(self, index: int, reason: Stop) -> None:
        self._log.info("machine.vcpu_stopped", vcpu=index, kind=reason.kind, detail=reason.detail)
        self.request_stop(reason)

    def _on_guest_reset(self) -> None:
        self.request_stop(Stop("reset", "guest requested a reset through the i8042 controller"))

    # -- state ------------------------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Run the capture, encode, decode and restore paths once on vCPUs that have not run yet (restoring their
        own state: a no-op for the guest), so their first real use inside a pause window is not a cold one
        (first calls parse cffi types, fill caches and allocate buffers)."""
        tree = unpack(pack(self.capture_state())).tree
        vcpus = get_field(tree, "vcpus", list)
        parsed = [vcpu_state_from_tree(saved, index) for index, saved in enumerate(vcpus)]
        vm = vm_state_from_tree(tree["vm"])
        for thread, own in zip(self.vcpu_threads, parsed, strict=True):
            vcpu_state.restore(thread.vcpu, own)
        vm_state.restore(self.platform.vm, vm)
        self.devices.restore(get_field(tree, "devices", dict), self.console.history())

    def capture_state(self, console_since: int | None = None) -> dict[str, Any]:
        """The state tree of the paused guest (DESIGN.md "State"); `console_since`: see DeviceSet.save."""
        return {"vcpus": self.capture_vcpus(), **self.capture_platform(console_since)}

    def capture_vcpus(self) -> list[Any]:
        """The tree's "vcpus" (read first: a handover sends them ahead of the rest)."""
        return [vcpu_state.capture(t.vcpu).to_dict() for t in self.vcpu_threads]

    def capture_platform(self, console_since: int | None = None) -> dict[str, Any]:
        """The rest of the tree: "machine", "vm" and "devices"."""
        return {
            "machine": {
                "config": self._config_dict,
                "generation": self.generation,
                "booted_at_ns": self.booted_at_ns,
            },
            "vm": vm_state.capture(self.platform.vm).to_dict(),
            "devices": self.devices.save(console_since),
        }

    def restore_state(self, tree: dict[str, Any], console_prefix: bytes = b"") -> dict[str, int]:
        """Load a captured state into this (not yet running) machine: vCPUs, then the VM, then devices.

        Everything is parsed and checked before the first ioctl, so a malformed tree changes nothing.
        Returns how long each part took (us), for the upgrade report."""
        started = time.perf_counter_ns()
        self._check_machine(tree["machine"])
        vcpus = self._parse_vcpus(tree["vcpus"])
        vm = vm_state_from_tree(tree["vm"])
        parsed = time.perf_counter_ns()
        self._restore_vcpus(vcpus)
        vcpus_done = time.perf_counter_ns()
        return {
            "parse_us": (parsed - started) // 1000,
            "vcpus_us": (vcpus_done - parsed) // 1000,
            **self._restore_vm_and_devices(vm, tree["devices"], console_prefix),
        }

    def start_vcpu_restore(self, saved: object) -> dict[str, int]:
        """Load the tree's "vcpus" alone, ahead of the rest (a protocol-4 handover): parse and check them here,
        then each parked vCPU thread restores its own vCPU (on the CPU that will run it, while this thread goes on
        with the rest). finish_vcpu_restore() waits for them. Returns the parse time (us)."""
        started = time.perf_counter_ns()
        vcpus = self._parse_vcpus(saved)
        for thread, state in zip(self.vcpu_threads, vcpus, strict=True):
            thread.post_batch(vcpu_state.load(thread.vcpu, state), spin_after=self.vcpus_apart)
        return {"vcpus_parse_us": (time.perf_counter_ns() - started) // 1000}

    def finish_vcpu_restore(self) -> dict[str, int]:
        """Wait for start_vcpu_restore's restores; raises the first failure. Returns the longest one's time (us)."""
        return {"vcpus_us": max(thread.wait_posted(PAUSE_TIMEOUT) for thread in self.vcpu_threads)}

    def lane_layouts(self) -> list[LaneLayout]:
        """Each vCPU's state record layout (kvm/lane.py), for a protocol-5 handover."""
        return [layout_of(thread.vcpu) for thread in self.vcpu_threads]

    def accept_lane(self, layouts: list[LaneLayout], region_fd: int, notify_fds: list[int]) -> LaneRegion | str:
        """A successor before READY: have each parked vCPU thread take its vCPU's record from the old VMM's shared
        memory when it is signalled, and restore it (finish_lane_restore() waits). Returns the mapped region, or
        why the records cannot be taken (another layout: the state then comes as STATE_VCPUS). Takes no fd."""
        if len(layouts) != len(self.vcpu_threads) or len(notify_fds) != len(layouts):
            return f"{len(layouts)} vCPU layouts and {len(notify_fds)} eventfds for {len(self.vcpu_threads)} vCPUs"
        for thread, theirs in zip(self.vcpu_threads, layouts, strict=True):
            reason = layout_of(thread.vcpu).mismatch(theirs)
            if reason is not None:
                return f"vCPU {thread.index}: {reason}"
        offsets, size = slot_offsets(layouts)
        region = LaneRegion.adopt(os.dup(region_fd), size)
        try:
            readers = [
                LaneReader(thread.vcpu, region, offset, layout, notify, self.generation)
                for thread, offset, layout, notify in zip(self.vcpu_threads, offsets, layouts, notify_fds, strict=True)
            ]
        except KvmError as exc:
            region.close()
            return str(exc)
        for thread, reader in zip(self.vcpu_threads, readers, strict=True):
            thread.attach_lane(reader, spin_after=self.vcpus_apart)
        return region

    def finish_lane_restore(self) -> dict[str, int]:
        """Wait for the vCPU threads to have taken their records (accept_lane); raises the first failure. Returns
        the longest one's time (us)."""
        started = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        took = max(thread.wait_lane(PAUSE_TIMEOUT) for thread in self.vcpu_threads)
        ended = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        began = min(thread.lane_began_ns for thread in self.vcpu_threads)
        return {
            "vcpus_us": took,
            "vcpus_wait_us": (ended - started) // 1000,
            # how long before this thread looked for them the vCPU threads began taking the records
            "vcpus_lead_us": (started - began) // 1000,
        }

    def restore_platform(self, tree: dict[str, Any], console_prefix: bytes = b"") -> dict[str, int]:
        """Load "machine", "vm" and "devices", while (or after) start_vcpu_restore's threads restore the vCPUs."""
        started = time.perf_counter_ns()
        self._check_machine(tree["machine"])
        vm = vm_state_from_tree(tree["vm"])
        parsed = time.perf_counter_ns()
        return {
            "parse_us": (parsed - started) // 1000,
            **self._restore_vm_and_devices(vm, tree["devices"], console_prefix),
        }

    def _check_machine(self, machine: object) -> None:
        config, _generation, _booted = machine_info_from_tree(machine)
        if config != self._config_dict:
            raise HotswapError("the state belongs to a machine with another configuration")

    def _parse_vcpus(self, saved: object) -> list[vcpu_state.VcpuState]:
        if not isinstance(saved, list):
            raise HotswapError(f"state 'vcpus' is a {type(saved).__name__}, not a list")
        if len(saved) != len(self.vcpu_threads):
            raise HotswapError(f"state has {len(saved)} vCPUs, this machine {len(self.vcpu_threads)}")
        return [vcpu_state_from_tree(entry, index) for index, entry in enumerate(saved)]

    def _restore_vcpus(self, vcpus: list[vcpu_state.VcpuState]) -> None:
        for thread, saved in zip(self.vcpu_threads, vcpus, strict=True):
            vcpu_state.restore(thread.vcpu, saved)

    def _restore_vm_and_devices(
        self, vm: vm_state.VmState, devices: dict[str, Any], console_prefix: bytes
    ) -> dict[str, int]:
        started = time.perf_counter_ns()
        vm_state.restore(self.platform.vm, vm)
        vm_done = time.perf_counter_ns()
        self.devices.restore(devices, console_prefix)
        return {"vm_us": (vm_done - started) // 1000, "devices_us": (time.perf_counter_ns() - vm_done) // 1000}
