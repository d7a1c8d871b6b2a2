"""The CONFIG message: the machine config plus where each fd in the message belongs.

fds travel in this order: guest RAM memfds, console listener?, console log?, console clients, API listener, the
virtio devices' host fds (disk images, taps) in slot order, skipping devices without one (rng), then the ownership
token (protocol 3; ownership.py), then the vCPU state records' memfd and one eventfd per vCPU (protocol 5;
kvm/lane.py). The payload's "fds" map gives the counts, so the receiver can split the list and
check that nothing is missing or extra; a map without "ownership" (protocols 1-2, exec images) means none."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hotswap.machine.console import ConsoleFds
from hotswap.state import check_fields, get_field
from hotswap.state.errors import StateSchemaError


@dataclass
class HandoverFds:
    memory: list[int]
    console: ConsoleFds
    api_listener: int
    virtio: list[int] = field(default_factory=list)
    ownership: list[int] = field(default_factory=list)  # the token's eventfd, or nothing
    lane: list[int] = field(default_factory=list)  # the vCPU records' memfd, then an eventfd per vCPU, or nothing

    def flat(self) -> list[int]:
        fds = list(self.memory)
        if self.console.listener is not None:
            fds.append(self.console.listener)
        if self.console.log_file is not None:
            fds.append(self.console.log_file)
        fds += self.console.clients
        fds.append(self.api_listener)
        return fds + self.virtio + self.ownership + self.lane

    def counts(self) -> dict[str, int]:
        """How many fds of each kind; "ownership" only when there is a token (older builds do not know the name)."""
        counts = {
            "memory": len(self.memory),
            "console_listener": int(self.console.listener is not None),
            "console_log": int(self.console.log_file is not None),
            "console_clients": len(self.console.clients),
            "api_listener": 1,
            "virtio": len(self.virtio),
        }
        if self.ownership:
            counts["ownership"] = len(self.ownership)
        if self.lane:
            counts["lane"] = len(self.lane)
        return counts

    @classmethod
    def split(cls, counts: dict[str, Any], fds: tuple[int, ...] | list[int]) -> HandoverFds:
        """Rebuild the layout from the received fds; a count mismatch is an error (the caller closes the fds)."""
        counts = {"ownership": 0, "lane": 0, **counts} if isinstance(counts, dict) else counts
        check_fields(counts, frozenset(cls.example_counts()), path="fds")
        wanted = {name: get_field(counts, name, int, "fds") for name in cls.example_counts()}
        if sum(wanted.values()) != len(fds):
            raise StateSchemaError(f"CONFIG announces {sum(wanted.values())} fds but {len(fds)} arrived")
        queue = list(fds)

        def take(n: int) -> list[int]:
            taken = queue[:n]
            del queue[:n]
            return taken

        memory = take(wanted["memory"])
        listener = take(wanted["console_listener"])
        log_file = take(wanted["console_log"])
        clients = take(wanted["console_clients"])
        api = take(wanted["api_listener"])
        if len(api) != 1:
            raise StateSchemaError("CONFIG must carry exactly one API listener fd")
        console = ConsoleFds(
            listener=listener[0] if listener else None, log_file=log_file[0] if log_file else None, clients=clients
        )
        virtio = take(wanted["virtio"])
        ownership = take(wanted["ownership"])
        if len(ownership) > 1:
            raise StateSchemaError("CONFIG may carry at most one ownership token fd")
        lane = take(wanted["lane"])  # how many belong to each vCPU is the successor's check (CONFIG's "lane")
        return cls(memory, console, api[0], virtio, ownership, lane)

    @staticmethod
    def example_counts() -> dict[str, int]:
        return dict.fromkeys(
            (
                "memory", "console_listener", "console_log", "console_clients", "api_listener", "virtio", "ownership",
                "lane",
            ),
            0,
        )  # fmt: skip


def virtio_fds_for(kinds: list[str], fds: list[int]) -> list[int | None]:
    """Spread the received virtio host fds over the device slots (`kinds` in slot order; rng has no fd)."""
    queue = list(fds)
    placed: list[int | None] = []
    for kind in kinds:
        if kind == "rng":
            placed.append(None)
        elif queue:
            placed.append(queue.pop(0))
        else:
            raise StateSchemaError(f"CONFIG carries too few virtio fds for devices {kinds}")
    if queue:
        raise StateSchemaError(f"CONFIG carries {len(queue)} virtio fds more than devices {kinds} need")
    return placed
