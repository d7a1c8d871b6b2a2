"""Benchmark tests: the helpers need nothing; the drivers need /dev/kvm (and QEMU), skipped loudly without them."""

from __future__ import annotations

import os
import shutil

import pytest


def _missing(item: pytest.Item) -> str | None:
    if "kvm" in item.keywords and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "NO KVM: /dev/kvm is missing or not usable; the benchmark drivers cannot run"
    if "qemu" in item.keywords and shutil.which("qemu-system-x86_64") is None:
        return "NO QEMU: qemu-system-x86_64 is not installed (Debian package qemu-system-x86)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        reason = _missing(item)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
