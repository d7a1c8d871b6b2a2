"""`--net tap=NAME[,mac=MAC]` and `--net fd=N[,mac=MAC]`: parsing, the config dict that travels in a handover, and
the checks a handed-in tap fd must pass."""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from framework.taps import TAP_FLAGS, attach_tap

from devices.virtio import TapError
from devices.virtio.tap import IFF_NO_PI, IFF_TAP, IFF_VNET_HDR, TUNGETIFF, VNET_HDR_SIZE, adopt_tap_fd, check_tap_fd
from hotswap.cli import _check_net_fd, _parse_net
from hotswap.config import MachineConfig, NetConfig
from hotswap.errors import ConfigError

TUNGETVNETHDRSZ = 0x8004_54D7


# -- parsing -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec, index, expected",
    [
        ("tap=tap0", 0, NetConfig("tap0", "52:54:00:12:34:56")),
        ("tap=tap0", 2, NetConfig("tap0", "52:54:00:12:34:58")),
        ("tap=tap0,mac=02:00:00:00:00:09", 0, NetConfig("tap0", "02:00:00:00:00:09")),
        ("fd=7", 0, NetConfig("", "52:54:00:12:34:56", fd=7)),
        ("mac=02:00:00:00:00:09,fd=12", 1, NetConfig("", "02:00:00:00:00:09", fd=12)),
    ],
)
def test_parse_net(spec: str, index: int, expected: NetConfig) -> None:
    assert _parse_net(spec, index) == expected


@pytest.mark.parametrize(
    "spec, message",
    [
        ("tap=tap0,fd=3", "give exactly one of tap=NAME or fd=N"),
        ("fd=3,tap=tap0", "give exactly one of tap=NAME or fd=N"),
        ("mac=02:00:00:00:00:09", "give exactly one of tap=NAME or fd=N"),
        ("fd=x", "fd=x is not an integer"),
        ("fd=", "fd= is not an integer"),
        ("fd=3.0", "fd=3.0 is not an integer"),
        ("fd=0x10", "fd=0x10 is not an integer"),
        ("fd=-4", "fd=-4 is negative"),
        ("fd=2", "stdin, stdout or stderr"),
        ("tap=", "tap=NAME needs a name"),
        ("fd=3,fd=4", "expected tap=NAME[,mac=MAC] or fd=N[,mac=MAC]"),
        ("fd=3,vhost=on", "expected tap=NAME[,mac=MAC] or fd=N[,mac=MAC]"),
        ("tap0", "expected tap=NAME[,mac=MAC] or fd=N[,mac=MAC]"),
        ("", "expected tap=NAME[,mac=MAC] or fd=N[,mac=MAC]"),
    ],
)
def test_parse_net_rejects(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^--net .*" + message.replace("[", r"\[").replace("]", r"\]")) as caught:
        _parse_net(spec, 0)
    assert "\n" not in str(caught.value)


# -- the config dict -----------------------------------------------------------------------------------------------
def machine(*nets: NetConfig, kernel: str = "/bin/sh") -> MachineConfig:
    return MachineConfig(name="t", mem_size=64 << 20, cpus=1, kernel=kernel, nets=nets)


def test_tap_by_name_keeps_the_dict_older_builds_wrote() -> None:
    """A handover from (or to) an older build compares config dicts: a tap net has exactly tap and mac."""
    old = machine(NetConfig("tap0", "52:54:00:12:34:56")).to_dict()
    assert old["nets"] == [{"tap": "tap0", "mac": "52:54:00:12:34:56"}]
    restored = MachineConfig.from_dict(old)
    assert restored.nets == (NetConfig("tap0", "52:54:00:12:34:56"),)
    assert restored.to_dict() == old


def test_handed_in_fd_travels_in_the_dict() -> None:
    config = machine(NetConfig("hs0", "52:54:00:12:34:56", fd=9), NetConfig("tap1", "52:54:00:12:34:57"))
    data = config.to_dict()
    assert data["nets"] == [
        {"tap": "hs0", "mac": "52:54:00:12:34:56", "fd": 9},
        {"tap": "tap1", "mac": "52:54:00:12:34:57"},
    ]
    assert MachineConfig.from_dict(data) == config
    assert MachineConfig.from_dict(data).to_dict() == data


def test_from_dict_rejects_unknown_net_fields() -> None:
    data = machine(NetConfig("tap0", "52:54:00:12:34:56")).to_dict()
    data["nets"][0]["queues"] = 4
    with pytest.raises(ConfigError, match="machine config is incomplete"):
        MachineConfig.from_dict(data)


def test_validate_nets() -> None:
    fine = machine(NetConfig("hs0", "52:54:00:12:34:56", fd=9), NetConfig("", "52:54:00:12:34:57", fd=10))
    fine.validate()
    with pytest.raises(ConfigError, match="fd=9 is given twice"):
        replace(fine, nets=(fine.nets[0], replace(fine.nets[1], fd=9))).validate()
    with pytest.raises(ConfigError, match="give tap=NAME or fd=N"):
        machine(NetConfig("", "52:54:00:12:34:56")).validate()
    with pytest.raises(ConfigError, match="invalid MAC"):
        machine(NetConfig("", "52:54:00:12:34", fd=9)).validate()


# -- handed-in fds -------------------------------------------------------------------------------------------------
def test_check_rejects_a_closed_fd() -> None:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    with pytest.raises(ConfigError, match=f"^--net fd={fd}: fd {fd} is not an open file descriptor$"):
        _check_net_fd(NetConfig("", "52:54:00:12:34:56", fd=fd))


def test_check_rejects_what_is_not_a_tap(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        with pytest.raises(ConfigError, match=rf"fd {fd} is not a tap device \(TUNGETIFF failed: "):
            _check_net_fd(NetConfig("", "52:54:00:12:34:56", fd=fd))
    finally:
        os.close(fd)


def test_tap_by_name_is_not_checked_here() -> None:
    net = NetConfig("tap0", "52:54:00:12:34:56")
    assert _check_net_fd(net) is net


@pytest.fixture
def tap_name() -> Iterator[str]:
    if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        pytest.skip("needs /dev/net/tun")
    yield f"hsu{os.getpid() % 100000:05d}{os.urandom(2).hex()}"


def _attach(name: str, flags: int) -> int:
    try:
        return attach_tap(name, flags)
    except OSError as exc:
        pytest.skip(f"cannot create a tap here: {exc}")


def test_adopt_a_tap_fd(tap_name: str) -> None:
    fd = _attach(tap_name, TAP_FLAGS)
    try:
        assert os.get_blocking(fd)
        net = _check_net_fd(NetConfig("", "52:54:00:12:34:56", fd=fd))
        assert net == NetConfig(tap_name, "52:54:00:12:34:56", fd=fd)
        assert os.get_blocking(fd)  # checking changes nothing ...
        assert adopt_tap_fd(fd) == tap_name  # ... adopting configures it as open_tap does
        assert not os.get_blocking(fd)
        assert not os.get_inheritable(fd)
        assert struct.unpack("i", fcntl.ioctl(fd, TUNGETVNETHDRSZ, bytes(4)))[0] == VNET_HDR_SIZE
        assert fcntl.ioctl(fd, TUNGETIFF, bytes(40))[:16].rstrip(b"\0") == tap_name.encode()
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "flags, missing",
    [(IFF_TAP | IFF_VNET_HDR, "IFF_NO_PI"), (IFF_TAP | IFF_NO_PI, "IFF_VNET_HDR")],
)
def test_check_tap_fd_wants_no_pi_and_vnet_hdr(tap_name: str, flags: int, missing: str) -> None:
    fd = _attach(tap_name, flags)
    try:
        with pytest.raises(TapError, match=f"interface {tap_name}\\) was opened without {missing}:"):
            check_tap_fd(fd)
    finally:
        os.close(fd)
