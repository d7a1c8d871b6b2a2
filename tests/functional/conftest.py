"""Fixtures for tests against real guests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from framework.guest import test_guest
from framework.vmm import GuestVm


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
