"""Bad input gets a one-line error, a non-zero exit, no traceback, and leaves nothing running."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from framework.guest import guest_cmdline
from framework.taps import TAP_FLAGS, attach_tap
from framework.vmm import HOTSWAP, GuestVm, kill_pids, pids_with_tag

from devices.virtio.tap import IFF_NO_PI, IFF_TAP, IFF_TUN, IFF_VNET_HDR

pytestmark = pytest.mark.kvm


@pytest.fixture
def runner(run_dir: Path) -> Iterator[tuple[dict[str, str], str]]:
    tag = "bad-" + os.urandom(4).hex()
    env = {**os.environ, "HOTSWAP_RUN_DIR": str(run_dir), "HOTSWAP_TEST_TAG": tag}
    yield env, tag
    kill_pids(pids_with_tag(tag))


def run_fails(env: dict[str, str], tag: str, *args: str, pass_fds: tuple[int, ...] = ()) -> str:
    result = subprocess.run([*HOTSWAP, *args], capture_output=True, text=True, timeout=60, env=env, pass_fds=pass_fds)
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(("hotswap: error:", "usage:", "hotswap run: error:")), lines
    assert pids_with_tag(tag) == [], "a process was left running"
    return lines[0]


def test_missing_kernel(runner: tuple[dict[str, str], str], run_dir: Path) -> None:
    line = run_fails(*runner, "run", "--kernel", str(run_dir / "nope"), "--daemon")
    assert "does not exist" in line


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"\x00" * 4096, "neither an ELF vmlinux nor a bzImage"),
        (os.urandom(100_000), "neither an ELF vmlinux nor a bzImage"),
        (b"\x7fELF\x02\x01\x01" + b"\x00" * 57, ""),  # a truncated ELF header
    ],
    ids=["zeros", "random", "truncated-elf"],
)
def test_corrupt_kernel(runner: tuple[dict[str, str], str], tmp_path: Path, content: bytes, expected: str) -> None:
    kernel = tmp_path / "kernel"
    kernel.write_bytes(content)
    line = run_fails(*runner, "run", "--kernel", str(kernel), "--mem", "64M")
    assert str(kernel) in line and expected in line


def test_corrupt_kernel_as_daemon(runner: tuple[dict[str, str], str], tmp_path: Path) -> None:
    kernel = tmp_path / "kernel"
    kernel.write_bytes(os.urandom(50_000))
    line = run_fails(*runner, "run", "--daemon", "--kernel", str(kernel), "--mem", "64M", "--name", "bad")
    assert "neither an ELF vmlinux nor a bzImage" in line


@pytest.mark.parametrize(
    "mem, expected",
    [
        ("0", "more than 0"),
        ("100T", "more than this host"),
        ("lots", "invalid size"),
        ("1M", "too small"),
        ("17M", "multiple of 2"),
    ],
)
def test_bad_memory_size(runner: tuple[dict[str, str], str], guest_elf: Path, mem: str, expected: str) -> None:
    assert expected in run_fails(*runner, "run", "--kernel", str(guest_elf), "--mem", mem)


@pytest.mark.parametrize("cpus, expected", [("0", "at least one"), ("5000", "at most")])
def test_bad_cpu_count(runner: tuple[dict[str, str], str], guest_elf: Path, cpus: str, expected: str) -> None:
    assert expected in run_fails(*runner, "run", "--kernel", str(guest_elf), "--mem", "64M", "--cpus", cpus)


def test_api_socket_in_use(runner: tuple[dict[str, str], str], vm: GuestVm, guest_elf: Path, run_dir: Path) -> None:
    vm.start(guest_elf, guest_cmdline())
    env, tag = runner
    line = run_fails(
        env,
        tag,
        "run",
        "--daemon",
        "--kernel",
        str(guest_elf),
        "--mem",
        "64M",
        "--name",
        "other",
        "--api-sock",
        str(run_dir / f"{vm.name}.sock"),
    )
    assert "in use" in line
    assert vm.info()["state"] == "running"  # the first VM is untouched


def test_name_in_use(runner: tuple[dict[str, str], str], vm: GuestVm, guest_elf: Path) -> None:
    vm.start(guest_elf, guest_cmdline())
    line = run_fails(*runner, "run", "--daemon", "--kernel", str(guest_elf), "--mem", "64M", "--name", vm.name)
    assert "in use" in line


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("tap=tap0,fd=3", "give exactly one of tap=NAME or fd=N"),
        ("mac=52:54:00:12:34:56", "give exactly one of tap=NAME or fd=N"),
        ("fd=three", "fd=three is not an integer"),
        ("fd=900", "fd 900 is not an open file descriptor"),
        ("fd=0", "stdin, stdout or stderr"),
        ("fd=7,speed=10", "expected tap=NAME[,mac=MAC] or fd=N[,mac=MAC]"),
    ],
    ids=["both", "neither", "not-a-number", "not-open", "stdin", "unknown-key"],
)
def test_bad_net_spec(runner: tuple[dict[str, str], str], guest_elf: Path, spec: str, expected: str) -> None:
    line = run_fails(*runner, "run", "--daemon", "--kernel", str(guest_elf), "--mem", "64M", "--net", spec)
    assert expected in line


def test_net_fd_that_is_not_a_tap(runner: tuple[dict[str, str], str], guest_elf: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(b"not a tap")
    fd = os.open(plain, os.O_RDONLY)
    try:
        args = ("run", "--daemon", "--kernel", str(guest_elf), "--mem", "64M", "--net", f"fd={fd}")
        line = run_fails(*runner, *args, pass_fds=(fd,))
    finally:
        os.close(fd)
    assert f"fd {fd} is not a tap device (TUNGETIFF failed" in line


@pytest.mark.parametrize(
    "flags, count, expected",
    [
        (IFF_TAP | IFF_VNET_HDR, 1, "opened without IFF_NO_PI:"),
        (IFF_TAP | IFF_NO_PI, 1, "opened without IFF_VNET_HDR:"),
        (IFF_TAP, 1, "opened without IFF_NO_PI and IFF_VNET_HDR:"),
        (IFF_TUN | IFF_NO_PI | IFF_VNET_HDR, 1, "is a tun device (IFF_TUN), not a tap"),
        (TAP_FLAGS, 2, "is given twice"),
    ],
    ids=["no-pi-missing", "vnet-hdr-missing", "both-missing", "tun", "twice"],
)
def test_net_fd_opened_wrongly(
    runner: tuple[dict[str, str], str], guest_elf: Path, flags: int, count: int, expected: str
) -> None:
    if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        pytest.skip("NO TUN: /dev/net/tun is missing or not usable")
    name = f"hsb{os.getpid() % 100000:05d}{os.urandom(2).hex()}"
    fd = attach_tap(name, flags)  # not persistent: the interface goes with the last fd
    try:
        args = ("run", "--daemon", "--kernel", str(guest_elf), "--mem", "64M", *["--net", f"fd={fd}"] * count)
        line = run_fails(*runner, *args, pass_fds=(fd,))
    finally:
        os.close(fd)
    assert expected in line and f"fd={fd}" in line, line


def raw_request(path: Path, data: bytes) -> tuple[int, dict[str, object]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(data)
        response = b""
        while b"\r\n\r\n" not in response:
            response += sock.recv(65536)
        head, _, body = response.partition(b"\r\n\r\n")
        length = int(
            next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        )
        while len(body) < length:
            body += sock.recv(65536)
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"PUT /vm/pause HTTP/1.1\r\nContent-Length: 5\r\n\r\n{oops", 400),
        (b"PUT /vm/pause HTTP/1.1\r\nContent-Length: 2\r\n\r\n[]", 400),
        (b"GET /nothing HTTP/1.1\r\n\r\n", 404),
        (b"DELETE /vm/pause HTTP/1.1\r\n\r\n", 405),
        (b'PUT /vm/upgrade HTTP/1.1\r\nContent-Length: 16\r\n\r\n{"mode": "fast"}', 400),
        (b"PUT /vm/pause HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
    ],
    ids=["bad-json", "not-object", "unknown-path", "wrong-method", "bad-upgrade-mode", "bad-length"],
)
def test_malformed_api_request(vm: GuestVm, guest_elf: Path, run_dir: Path, request_bytes: bytes, status: int) -> None:
    vm.start(guest_elf, guest_cmdline())
    code, body = raw_request(run_dir / f"{vm.name}.sock", request_bytes)
    assert code == status and isinstance(body.get("error"), str) and body["error"]
    assert vm.info()["state"] == "running"


def test_garbage_on_the_api_socket_does_not_hurt(vm: GuestVm, guest_elf: Path, run_dir: Path) -> None:
    vm.start(guest_elf, guest_cmdline())
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(run_dir / f"{vm.name}.sock"))
        sock.sendall(os.urandom(4096))
    first = vm.wait_statuses(1)[-1]
    assert vm.info()["state"] == "running"
    assert vm.wait_statuses(1, after=first.seq)
