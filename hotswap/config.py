"""What a machine is made of, as users ask for it. Validated once here; travels as a plain dict in a handover."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hotswap.errors import ConfigError
from hotswap.layout import MIB, VIRTIO_MAX_DEVICES
from hotswap.machine.affinity import check_available

MIN_MEM = 16 * MIB
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MAC_PATTERN = re.compile(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")


@dataclass(frozen=True)
class DiskConfig:
    path: str
    read_only: bool = False


@dataclass(frozen=True)
class NetConfig:
    """A virtio-net device on a tap: `--net tap=NAME` (the VMM opens it) or `--net fd=N` (an open tap fd handed in,
    as QEMU's `-netdev tap,fd=N`; `tap` then holds its interface name as TUNGETIFF reported it, for display).

    `fd` is the number in the first VMM's fd table; successors keep it in the config (configs are compared across a
    handover) but use the fd they received, never this number. Without `fd` the dict is what older builds wrote."""

    tap: str
    mac: str
    fd: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"tap": self.tap, "mac": self.mac}
        if self.fd is not None:
            data["fd"] = self.fd
        return data


@dataclass(frozen=True)
class MachineConfig:
    name: str
    mem_size: int
    cpus: int
    kernel: str
    initrd: str | None = None
    cmdline: str = ""
    console: str = "stdio"  # "stdio": the VMM's stdin/stdout; "socket": a unix socket `hotswap console` attaches to
    console_log: str | None = None  # a file that also receives every byte the guest writes to its serial port
    api_socket: str = ""
    console_socket: str = ""
    disks: tuple[DiskConfig, ...] = field(default_factory=tuple)
    nets: tuple[NetConfig, ...] = field(default_factory=tuple)
    rng: bool = False
    # Host CPUs for the vCPU threads and for every other thread of the VMM (hotswap/machine/affinity.py); empty:
    # not pinned. Left out of the dict when empty, so configs of builds without them compare equal.
    vcpu_cpus: tuple[int, ...] = ()
    vmm_cpus: tuple[int, ...] = ()

    def validate(self, max_vcpus: int | None = None) -> None:
        if not NAME_PATTERN.match(self.name):
            raise ConfigError(f"invalid name {self.name!r}: use letters, digits, '.', '_' or '-' (at most 63)")
        if self.mem_size < MIN_MEM:
            raise ConfigError(f"memory size {self.mem_size} bytes is too small: at least {MIN_MEM // MIB} MiB")
        if self.mem_size % (2 * MIB):
            raise ConfigError("memory size must be a multiple of 2 MiB")
        if self.cpus < 1:
            raise ConfigError(f"--cpus {self.cpus}: need at least one vCPU")
        if max_vcpus is not None and self.cpus > max_vcpus:
            raise ConfigError(f"--cpus {self.cpus}: this host's KVM allows at most {max_vcpus} vCPUs")
        if self.cpus > 254:
            raise ConfigError(f"--cpus {self.cpus}: the xAPIC/MP-table machine supports at most 254 vCPUs")
        _check_file("kernel", self.kernel)
        if self.initrd is not None:
            _check_file("initrd", self.initrd)
        if self.console not in ("stdio", "socket"):
            raise ConfigError(f"unknown console mode {self.console!r}")
        for disk in self.disks:
            _check_file("disk", disk.path)
        handed_in = [net.fd for net in self.nets if net.fd is not None]
        for net in self.nets:
            if not MAC_PATTERN.match(net.mac):
                raise ConfigError(f"invalid MAC address {net.mac!r}")
            if net.fd is None and not net.tap:
                raise ConfigError("--net: give tap=NAME or fd=N")
            if net.fd is not None and handed_in.count(net.fd) > 1:
                raise ConfigError(f"--net fd={net.fd} is given twice: one fd can serve one device")
        if len(self.disks) + len(self.nets) + int(self.rng) > VIRTIO_MAX_DEVICES:
            raise ConfigError(f"at most {VIRTIO_MAX_DEVICES} virtio devices")
        check_available(self.vcpu_cpus, "--vcpu-cpus")
        check_available(self.vmm_cpus, "--vmm-cpus")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["disks"] = [asdict(d) for d in self.disks]
        data["nets"] = [n.to_dict() for n in self.nets]
        for pinned in ("vcpu_cpus", "vmm_cpus"):
            if data[pinned]:
                data[pinned] = list(data[pinned])
            else:
                del data[pinned]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MachineConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"machine config has unknown fields: {', '.join(sorted(unknown))}")
        values = dict(data)
        try:
            values["disks"] = tuple(DiskConfig(**d) for d in data.get("disks", ()))
            values["nets"] = tuple(NetConfig(**n) for n in data.get("nets", ()))  # older builds: tap and mac only
            for pinned in ("vcpu_cpus", "vmm_cpus"):
                values[pinned] = tuple(int(cpu) for cpu in data.get(pinned, ()))
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"machine config is incomplete: {exc}") from None


def _check_file(what: str, path: str) -> None:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{what} file {path} does not exist")
    if not p.is_file():
        raise ConfigError(f"{what} {path} is not a regular file")
    if not os.access(p, os.R_OK):
        raise ConfigError(f"{what} file {path} is not readable")
