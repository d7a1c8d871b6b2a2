"""`hotswap upgrade` of a pinned VMM: onto the VMM's CPUs, at idle priority, before the rest of hotswap is imported.

A VMM pinned with --vcpu-cpus keeps its guest's CPUs to the vCPUs; the upgrade command's own start-up is work the
guest should never wait for (hotswap/machine/priority.py says why). upgrade_cli places the command once it has
parsed its arguments, but by then it has spent ~0.1 s importing at normal priority on the VMM's CPU, which is where
the guest saw its largest gaps of an upgrade: measured on the pinned 1-vCPU test guest, each upgrade's largest
status-line gaps placed against its pause, 5 ms gaps (one GIL switch interval: an old-VMM thread holding the GIL
was kept off its CPU) while the command started; with the command at idle priority from here, most upgrades'
largest gap was 1.8-2.7 ms, though gaps of 5.5 ms remained (load on the VMM's CPU alone gives this nested host's
guest such gaps: docs/design-notes.md, "Load on the other CPU alone").

Best effort and cheap (standard library and two small hotswap modules): for an argument list it does not follow,
`--all`, or a VM it cannot find, it does nothing and leaves it all to upgrade_cli, which places the command again
per VM in any case.
"""

from __future__ import annotations

import os

from hotswap import registry
from hotswap.machine import priority
from hotswap.machine.affinity import follow_process

STARTED_ON = frozenset(os.sched_getaffinity(0))  # the CPUs this command may use, before any placement
_GLOBAL_WITH_VALUE = frozenset({"--log-level"})
_UPGRADE_WITH_VALUE = frozenset({"--name", "--pid", "--exec", "--mode", "--timeout"})


def upgrade_target(argv: list[str]) -> tuple[str | None, int | None] | None:
    """(name, pid) of the VM that `hotswap ARGV` upgrades, or None if ARGV is not an upgrade of one VM or is not
    understood here."""
    position = 0
    while position < len(argv) and argv[position].startswith("-"):
        position += 2 if argv[position] in _GLOBAL_WITH_VALUE else 1
    if argv[position : position + 1] != ["upgrade"]:
        return None
    name: str | None = None
    pid: str | None = None
    words = iter(argv[position + 1 :])
    for word in words:
        option, has_value, inline = word.partition("=")
        if word == "--all":
            return None
        if option in _UPGRADE_WITH_VALUE:
            value = inline if has_value else next(words, None)
            if value is None:
                return None
            if option == "--name":
                name = value
            elif option == "--pid":
                pid = value
        elif word.startswith("-"):
            continue
        elif name is None:
            name = word
        else:
            return None  # a second name: argparse will say what is wrong
    if name is None and pid is None:
        return None
    try:
        return name, int(pid) if pid is not None else None
    except ValueError:
        return None


def place_early(argv: list[str]) -> bool:
    """If ARGV upgrades one pinned VMM, move this process onto its VMM's CPUs at idle priority. True if it did."""
    target = upgrade_target(argv)
    if target is None:
        return False
    try:
        pid = registry.find(name=target[0], pid=target[1]).pid
    except Exception:  # no such VM, a bad record: the command says what is wrong, after parsing
        return False
    return follow_vmm(pid)


def follow_vmm(pid: int) -> bool:
    """Run this command where VMM `pid` runs its own threads: narrowed to its CPUs at idle priority when it is
    pinned apart from its vCPUs, else on the CPUs it started with at normal priority (`--all` upgrades pinned
    and unpinned VMMs in turn). True if narrowed."""
    if follow_process(pid, STARTED_ON):
        if priority.can_restore_priority():  # idle only where it can come back for an unpinned VMM after this one
            priority.background_all_threads()
        return True
    priority.foreground_all_threads()
    return False
