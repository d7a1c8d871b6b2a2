"""Which host CPUs a VMM's threads may run on: `--vcpu-cpus` for the vCPU threads, `--vmm-cpus` for the rest.

On a host with CPUs to spare, keeping the VMM's own work (its event loop, the API, and above all an upgrade's
successor start-up, the old VMM's exit and the `hotswap upgrade` command) off the CPUs the guest's vCPUs run on is
what keeps those from taking the guest's CPU in turns (docs/design-notes.md, "Where the guest's larger gap comes
from"). libvirt calls the two sets vcpupin and emulatorpin; Cloud Hypervisor has `--cpus affinity=`.

CPU lists use the kernel's (and taskset's) syntax: "1", "0,2", "2-5,8".
"""

from __future__ import annotations

import os

from hotswap.errors import ConfigError

CpuSet = tuple[int, ...]  # sorted, no duplicates; empty: not pinned


def parse_cpu_list(text: str, option: str) -> CpuSet:
    """'0,2-3' -> (0, 2, 3); a clear ConfigError naming `option` for anything else."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, sep, last = part.strip().partition("-")
        try:
            low = int(first)
            high = int(last) if sep else low
        except ValueError:
            raise ConfigError(f"{option} {text!r}: expected a CPU list such as 1 or 0,2-3") from None
        if low < 0 or high < low:
            raise ConfigError(f"{option} {text!r}: {part.strip()!r} is not a CPU number or an ascending range")
        cpus.update(range(low, high + 1))
    return tuple(sorted(cpus))


def format_cpu_list(cpus: CpuSet) -> str:
    """(0, 2, 3) -> '0,2-3'."""
    parts: list[str] = []
    index = 0
    while index < len(cpus):
        end = index
        while end + 1 < len(cpus) and cpus[end + 1] == cpus[end] + 1:
            end += 1
        parts.append(str(cpus[index]) if end == index else f"{cpus[index]}-{cpus[end]}")
        index = end + 1
    return ",".join(parts)


ONLINE_CPUS = "/sys/devices/system/cpu/online"


def online_cpus() -> CpuSet:
    """The host's online CPUs (not just the ones this process may use: a VMM may be asked for others)."""
    try:
        with open(ONLINE_CPUS) as file:
            return parse_cpu_list(file.read().strip(), ONLINE_CPUS)
    except (OSError, ConfigError):
        return tuple(sorted(os.sched_getaffinity(0)))


def check_available(cpus: CpuSet, option: str) -> None:
    """Every CPU of `cpus` must be online."""
    online = online_cpus()
    missing = [cpu for cpu in cpus if cpu not in online]
    if missing:
        raise ConfigError(
            f"{option} {format_cpu_list(cpus)}: CPU {format_cpu_list(tuple(missing))} is not online "
            f"(online: {format_cpu_list(online)})"
        )


def complement(cpus: CpuSet) -> CpuSet:
    """The CPUs this process may use that are not in `cpus` (empty if none are left)."""
    return tuple(sorted(os.sched_getaffinity(0) - set(cpus)))


def pin_this_thread(cpus: CpuSet, what: str) -> bool:
    """Restrict the calling thread (and the threads it starts later) to `cpus`; no-op for an empty set.

    A successor can land on a host whose CPUs changed since the first VMM checked them: then the thread runs
    unpinned and a warning says so, rather than failing a handover over a placement preference."""
    if not cpus:
        return False
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as exc:
        from hotswap import log  # here, not at the top: `hotswap upgrade` imports this module before logging's

        log.get("affinity").warning(
            "affinity.unavailable", what=what, cpus=format_cpu_list(cpus), error=exc.strerror or str(exc)
        )
        return False
    return True


def follow_process(pid: int, base: frozenset[int]) -> bool:
    """Run the calling process on the CPUs VMM `pid`'s main thread may use, within `base` (the CPUs the caller
    started with): a `hotswap upgrade` then runs on the VMM's `--vmm-cpus`, away from its guest's vCPUs. When the
    two share no CPU, or the VMM may use all of `base`, the caller runs on `base`. True if it was narrowed."""
    try:
        theirs = os.sched_getaffinity(pid)
    except OSError:
        theirs = set(base)
    narrowed = base & theirs
    if not narrowed or narrowed == base:
        os.sched_setaffinity(0, base)
        return False
    os.sched_setaffinity(0, narrowed)
    return True
