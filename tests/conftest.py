"""Test-suite wide set-up: KVM/QEMU availability, loud skips, and the per-test hotswap run directory."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

KVM_PATH = "/dev/kvm"


def kvm_missing_reason() -> str | None:
    if not os.path.exists(KVM_PATH):
        return f"NO KVM: {KVM_PATH} does not exist on this machine; tests against real guests cannot run"
    if not os.access(KVM_PATH, os.R_OK | os.W_OK):
        return f"NO KVM: {KVM_PATH} is not readable and writable by uid {os.getuid()}"
    return None


def qemu_missing_reason() -> str | None:
    if shutil.which("qemu-system-x86_64") is None:
        return "NO QEMU: qemu-system-x86_64 is not installed (Debian package qemu-system-x86)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_kvm = kvm_missing_reason()
    no_qemu = qemu_missing_reason()
    slow_enabled = os.environ.get("HOTSWAP_SLOW") == "1"
    for item in items:
        if no_kvm and "kvm" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=no_kvm))
        if no_qemu and "qemu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=no_qemu))
        if "slow" in item.keywords and not slow_enabled:
            item.add_marker(
                pytest.mark.skip(
                    reason="slow tier: needs a host with hardware virtualization; set HOTSWAP_SLOW=1 to run it"
                )
            )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for reason in filter(None, (kvm_missing_reason(), qemu_missing_reason())):
        terminalreporter.write_sep("!", reason, red=True, bold=True)


@pytest.fixture
def run_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private HOTSWAP_RUN_DIR, so tests never see each other's (or a user's) VMs."""
    path = tmp_path_factory.mktemp("run")
    monkeypatch.setenv("HOTSWAP_RUN_DIR", str(path))
    yield path
