"""`python -m bench.floor_vmm`: the test guest in one process built from hotswap's own machine code, for measuring
the floor under a live upgrade's pause on this host (bench.upgrade `--floor`).

Three operations, each answered with its downtime (first vCPU paused -> last vCPU back on its way into KVM_RUN, the
definition `hotswap upgrade` reports):

    pause-resume   stop every vCPU and let it run again at once: nothing captured, nothing restored. The least a
                   pause can cost: the kick out of KVM_RUN and the re-entry.
    move           what an upgrade does to the guest, minus the second process: a fresh VM adopting the guest's
                   memfds and console fds is built first (as a successor is, before the pause), then the vCPUs
                   are captured into shared-memory records and restored by the fresh VM's parked vCPU threads,
                   the VM and devices captured and restored, and the fresh VM resumed, all on the thread of the
                   vCPU that stopped last. No successor process, no socket, no STATE encoding, no cold interpreter:
                   what is left is the KVM work and hotswap's warm Python around it.
    move-bare      the same with only the KVM work inside the pause: the vCPU records (C) and the VM state's
                   two ioctl batches (C, behind a thin Python call each), then the resume. The devices are
                   restored into the fresh VM before the pause, from a state taken in a short pause of their own
                   60 ms earlier (which holds only for a guest that leaves its UART's registers alone meanwhile,
                   as the test guest does: this is a floor, not a handover); the only other work inside the
                   pause is sending on the guest output the old VM's UART queue still holds (one write, if any).

A `move`'s previous VM is torn down at the start of the next operation (before its pause; in an upgrade the old
VMM's exit does it), so the teardown's IPIs do not fall on the status lines that carry the pause.

Commands arrive on stdin, one per line (`pause`, `resume`, `pause-resume`, `move`, `move-bare`, `quit`); each
answer is one JSON line on stdout. The first line, once the guest runs, is `{"ready": true, "pid": N}`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from hotswap.config import MachineConfig
from hotswap.handover.vcpu_records import OutgoingRecords
from hotswap.machine.console import ConsoleFds
from hotswap.machine.machine import Machine
from kvm import vm_state
from kvm.lane import LaneRegion

DEVICES_AHEAD_S = 0.06  # move-bare: three status periods between the devices' own pause and the measured one


def _dup_console(fds: ConsoleFds) -> ConsoleFds:
    return ConsoleFds(
        listener=None if fds.listener is None else os.dup(fds.listener),
        log_file=None if fds.log_file is None else os.dup(fds.log_file),
        clients=[os.dup(fd) for fd in fds.clients],
    )


class FloorVmm:
    def __init__(self, config: MachineConfig) -> None:
        self.machine = Machine.create(config)
        self.machine.boot()
        self.machine.devices.resume()
        self._leftover: tuple[Machine, OutgoingRecords, LaneRegion] | None = None

    def pause(self) -> dict[str, Any]:
        self.machine.pause()
        return {"ok": True}

    def resume(self) -> dict[str, Any]:
        self.machine.resume()
        return {"ok": True}

    def pause_resume(self) -> dict[str, Any]:
        self._tear_down_previous()
        window = self.machine.pause()
        resumed = self.machine.resume()
        return _answer(window.first_paused_ns, resumed, {})

    def move(self) -> dict[str, Any]:
        """The guest to a fresh VM in this process (the module's docstring says what it leaves out)."""
        return self._move(bare=False)

    def move_bare(self) -> dict[str, Any]:
        """The same with only the KVM work inside the pause (the module's docstring says what that costs)."""
        return self._move(bare=True)

    def _move(self, bare: bool) -> dict[str, Any]:
        self._tear_down_previous()
        current = self.machine
        # Before the pause, as a successor builds its machine from CONFIG.
        built = time.perf_counter_ns()
        fresh = Machine.create(
            current.config,
            memory_fds=[os.dup(fd) for fd in current.platform.memory.fds],
            console_fds=_dup_console(current.console.fds()),
            generation=current.generation + 1,
            booted_at_ns=current.booted_at_ns,
        )
        fresh.warm_up()
        fresh.start_paused()
        fresh.loop.start()
        records = OutgoingRecords(current)
        region = fresh.accept_lane(records.layouts, records.region.fd, records.notify)
        if isinstance(region, str):
            raise RuntimeError(f"the fresh VM declined the vCPU records: {region}")
        records.arm(fresh.generation)
        history = current.console.history()
        mark = current.console.mark()
        current.console.stop_serving()
        if bare:
            current.pause()
            fresh.devices.restore(current.devices.save(console_since=mark), history)
            current.resume()
            time.sleep(DEVICES_AHEAD_S)
        prepared_us = (time.perf_counter_ns() - built) // 1000
        resumed: list[int] = []
        detail: dict[str, int] = {}

        def window_work() -> None:
            """On the vCPU thread that stopped last, as the old VMM's window runs; then what the successor does."""
            began = time.perf_counter_ns()
            current.devices.quiesce()
            records.send_all()
            sent = time.perf_counter_ns()
            tree = {**current.capture_platform(console_since=mark), "vcpus": []}
            captured = time.perf_counter_ns()
            detail.update(records_us=(sent - began) // 1000, capture_us=(captured - sent) // 1000)
            detail.update(fresh.restore_platform(tree, console_prefix=history))
            detail.update(fresh.finish_lane_restore())
            resumed.append(fresh.resume())

        def bare_window_work() -> None:
            began = time.perf_counter_ns()
            records.send_all()
            sent = time.perf_counter_ns()
            vm_state.restore(fresh.platform.vm, vm_state.capture(current.platform.vm))
            detail.update(records_us=(sent - began) // 1000, vm_us=(time.perf_counter_ns() - sent) // 1000)
            # Guest output the old VM's UART queue and console buffer still hold goes out before the fresh VM can
            # print more (the old VM's console is never served again: a line being printed at the pause lost its
            # head).
            current.devices.flush_output()
            current.console.flush()
            detail.update(fresh.finish_lane_restore())
            resumed.append(fresh.resume())

        work: Callable[[], None] = bare_window_work if bare else window_work
        window = current.pause(then=work)
        fresh.devices.resume()
        current.abandon()
        self.machine = fresh
        self._leftover = (current, records, region)
        return _answer(window.first_paused_ns, resumed[0], {"prepare_us": prepared_us, **detail})

    def _tear_down_previous(self) -> None:
        if self._leftover is None:
            return
        machine, records, region = self._leftover
        self._leftover = None
        machine.console.close()
        machine.devices.close()
        machine.platform.close()
        records.close()
        region.close()

    def close(self) -> None:
        self._tear_down_previous()
        self.machine.console.close()
        self.machine.shutdown()


def _answer(first_paused_ns: int, resumed_ns: int, detail: dict[str, int]) -> dict[str, Any]:
    return {
        "downtime_us": (resumed_ns - first_paused_ns) // 1000,
        "pause_start_ns": first_paused_ns,  # CLOCK_MONOTONIC, the clock the benchmark's console lines arrive on
        "detail_us": detail,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_vmm", description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", required=True)
    parser.add_argument("--cmdline", required=True)
    parser.add_argument("--cpus", type=int, default=1)
    parser.add_argument("--mem-mib", type=int, default=256)
    parser.add_argument("--console-socket", required=True)
    parser.add_argument("--console-log", required=True)
    parser.add_argument("--vcpu-cpus", default="", help="comma-separated host CPUs for the vCPU threads")
    parser.add_argument("--vmm-cpus", default="", help="comma-separated host CPUs for every other thread")
    return parser.parse_args(argv)


def _cpus(text: str) -> tuple[int, ...]:
    return tuple(int(cpu) for cpu in text.split(",") if cpu)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = MachineConfig(
        name="floor",
        mem_size=args.mem_mib << 20,
        cpus=args.cpus,
        kernel=args.kernel,
        cmdline=args.cmdline,
        console="socket",
        console_socket=args.console_socket,
        console_log=args.console_log,
        vcpu_cpus=_cpus(args.vcpu_cpus),
        vmm_cpus=_cpus(args.vmm_cpus),
    )
    config.validate()
    vmm = FloorVmm(config)
    commands = {
        "pause": vmm.pause,
        "resume": vmm.resume,
        "pause-resume": vmm.pause_resume,
        "move": vmm.move,
        "move-bare": vmm.move_bare,
    }
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "quit":
                break
            try:
                answer = commands[command]()
            except Exception as exc:  # the benchmark reports it as a failed operation
                answer = {"error": f"{command}: {type(exc).__name__}: {exc}"}
            print(json.dumps(answer), flush=True)
    finally:
        vmm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
