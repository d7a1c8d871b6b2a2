"""Where a benchmark's threads run: shared (the scheduler decides) or pinned (`--pin`).

Pinned is how production hosts run VMs (libvirt's vcpupin and emulatorpin, Cloud Hypervisor's `--cpus
affinity=`): the guest's vCPU threads get CPUs of their own and everything else shares the rest. Both VMMs get the
same placement: hotswap through `--vcpu-cpus`/`--vmm-cpus` (its `upgrade` command follows the VMM's CPUs); QEMU
started under `taskset` on the VMM CPUs with its vCPU threads (QMP `query-cpus-fast`) moved to the vCPU CPUs. The
benchmark process itself, which reads the consoles, runs on the VMM CPUs too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from bench.report import BenchError


@dataclass(frozen=True)
class Placement:
    vcpu_cpus: tuple[int, ...]
    vmm_cpus: tuple[int, ...]

    def describe(self) -> str:
        return f"vCPU threads on CPU {cpu_list(self.vcpu_cpus)}, every other thread on CPU {cpu_list(self.vmm_cpus)}"


def cpu_list(cpus: tuple[int, ...]) -> str:
    return ",".join(str(cpu) for cpu in cpus)


def pinned_placement(vcpus: int) -> Placement | None:
    """The last `vcpus` CPUs we may use for the guest, the others for everything else; None if there are too few."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) <= vcpus:
        return None
    return Placement(tuple(allowed[-vcpus:]), tuple(allowed[:-vcpus]))


def pin_threads(thread_ids: list[int], cpus: tuple[int, ...], what: str) -> None:
    for tid in thread_ids:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError as exc:
            raise BenchError(f"{what}: cannot move thread {tid} to CPU {cpu_list(cpus)}: {exc}") from exc
