"""upgrade_target (hotswap/upgrade_placement.py): which VM `hotswap ARGV` upgrades, read before argparse is even
imported; anything it does not follow gives None (the command then places itself after parsing)."""

from __future__ import annotations

import pytest

from hotswap.upgrade_placement import upgrade_target


@pytest.mark.parametrize(
    ("argv", "target"),
    [
        (["upgrade", "web"], ("web", None)),
        (["upgrade", "--name", "web", "--json"], ("web", None)),
        (["upgrade", "--name=web"], ("web", None)),
        (["upgrade", "--pid", "4242"], (None, 4242)),
        (["upgrade", "--pid=4242", "--timeout", "5", "--mode", "exec"], (None, 4242)),
        (["--log-level", "debug", "upgrade", "web", "--exec", "/opt/hs"], ("web", None)),
        (["--log-level=debug", "upgrade", "--json", "web"], ("web", None)),
    ],
)
def test_the_vm_an_upgrade_names(argv: list[str], target: tuple[str | None, int | None]) -> None:
    assert upgrade_target(argv) == target


@pytest.mark.parametrize(
    "argv",
    [
        ["upgrade", "--all"],
        ["upgrade", "web", "--all"],
        ["upgrade"],
        ["upgrade", "--pid"],
        ["upgrade", "--pid", "many"],
        ["upgrade", "web", "other"],
        ["pause", "upgrade"],  # a VM named "upgrade", another command
        ["--log-level", "upgrade", "run"],
        [],
    ],
)
def test_what_it_does_not_follow_is_left_to_the_command(argv: list[str]) -> None:
    assert upgrade_target(argv) is None
