"""CPU lists for --vcpu-cpus/--vmm-cpus and how the placement travels in a machine config."""

from __future__ import annotations

import argparse
import os

import pytest

from hotswap.cli import _affinity_from_args
from hotswap.config import MachineConfig
from hotswap.errors import ConfigError
from hotswap.machine.affinity import check_available, format_cpu_list, online_cpus, parse_cpu_list


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("1", (1,)), ("0,2", (0, 2)), ("2-5,8", (2, 3, 4, 5, 8)), ("3,1,1", (1, 3)), (" 0 - 1 ", (0, 1))],
)
def test_parse_cpu_list(text: str, cpus: tuple[int, ...]) -> None:
    assert parse_cpu_list(text, "--vcpu-cpus") == cpus


@pytest.mark.parametrize(("text", "message"), [("", "expected a CPU list"), ("x", "expected a CPU list"),
                                                 ("3-1", "ascending range"), ("-1", "expected a CPU list"),
                                                 ("1,,2", "expected a CPU list")])  # fmt: skip
def test_parse_cpu_list_rejects(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        parse_cpu_list(text, "--vcpu-cpus")
    assert "--vcpu-cpus" in str(raised.value)


@pytest.mark.parametrize(("cpus", "text"), [((0,), "0"), ((0, 2, 3), "0,2-3"), ((1, 2, 3, 7, 9, 10), "1-3,7,9-10")])
def test_format_cpu_list(cpus: tuple[int, ...], text: str) -> None:
    assert format_cpu_list(cpus) == text
    assert parse_cpu_list(text, "x") == cpus


def test_an_offline_cpu_is_refused() -> None:
    beyond = max(online_cpus()) + 1
    with pytest.raises(ConfigError, match=f"CPU {beyond} is not online"):
        check_available((beyond,), "--vcpu-cpus")


def _config(**placement: tuple[int, ...]) -> MachineConfig:
    return MachineConfig(name="a", mem_size=64 << 20, cpus=1, kernel="/k", **placement)


def test_unpinned_config_dict_is_what_older_builds_wrote() -> None:
    data = _config().to_dict()
    assert "vcpu_cpus" not in data and "vmm_cpus" not in data
    assert MachineConfig.from_dict(data) == _config()


def test_placement_travels_in_the_config_dict() -> None:
    config = _config(vcpu_cpus=(1,), vmm_cpus=(0,))
    data = config.to_dict()
    assert (data["vcpu_cpus"], data["vmm_cpus"]) == ([1], [0])
    assert MachineConfig.from_dict(data) == config


def test_vmm_cpus_default_to_the_other_cpus() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip(f"needs 2 CPUs, this process may use {allowed}")
    args = argparse.Namespace(vcpu_cpus=str(allowed[-1]), vmm_cpus=None)
    assert _affinity_from_args(args) == {"vcpu_cpus": (allowed[-1],), "vmm_cpus": tuple(allowed[:-1])}
    assert _affinity_from_args(argparse.Namespace(vcpu_cpus=None, vmm_cpus=None)) == {"vcpu_cpus": (), "vmm_cpus": ()}
