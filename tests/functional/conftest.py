"""Fixtures for tests against real guests."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from framework.guest import test_guest
from framework.vmm import GuestVm

from hotswap.machine.platform import Platform, build_platform
from kvm.memory import RegionSpec


@pytest.fixture(scope="session")
def guest_elf() -> Path:
    return test_guest()


@pytest.fixture
def vm(run_dir: Path) -> Iterator[GuestVm]:
    """A test VM (not started yet); every process it ever had is killed by pid at the end."""
    machine = GuestVm(run_dir)
    try:
        yield machine
    finally:
        machine.kill()


def _bare_platform() -> Iterator[Platform]:
    built = build_platform(1, [RegionSpec(0, 16 << 20)])
    try:
        yield built
    finally:
        built.close()


@pytest.fixture
def platform() -> Iterator[Platform]:
    """A bare KVM platform (VM, 16 MiB of RAM, one vCPU that never runs), for state capture and restore."""
    yield from _bare_platform()


@pytest.fixture
def second_platform() -> Iterator[Platform]:
    """Another one, for a state that goes from one VM to another (as from an old VMM to its successor)."""
    yield from _bare_platform()


@pytest.fixture
def tap() -> Iterator[str]:
    """A fresh tap interface, up, with IPv6 off (no chatter in frame counts); deleted afterwards."""
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("NO TUN: /dev/net/tun is missing, cannot create a tap device")
    name = f"hst{os.getpid() % 100000:05d}{os.urandom(1).hex()}"
    subprocess.run(["ip", "tuntap", "add", "mode", "tap", "name", name], check=True)
    try:
        subprocess.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{name}.disable_ipv6=1"], check=False)
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)
