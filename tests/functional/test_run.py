"""The foundation on a real guest: boot the test guest, watch it work, list it, pause and resume it, stop it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from framework.guest import guest_cmdline, statuses
from framework.vmm import HOTSWAP, GuestVm, kill_pids, pids_with_tag

pytestmark = pytest.mark.kvm


@pytest.mark.parametrize("cpus", [1, 2])
def test_test_guest_boots_and_works(vm: GuestVm, guest_elf: Path, cpus: int) -> None:
    vm.start(guest_elf, guest_cmdline(), cpus=cpus)
    lines = vm.wait_statuses(6)
    assert f"hsg: boot cpus={cpus}" in vm.output()
    assert all(f"hsg: cpu {i} " in vm.output() for i in range(cpus))
    assert [s.seq for s in lines] == list(range(lines[0].seq, lines[0].seq + len(lines)))
    assert all(s.integrity == "ok" and s.cpus == cpus for s in lines)
    assert lines[-1].steps > lines[0].steps  # the ring-3 workload makes progress
    assert lines[-1].passes > lines[0].passes  # and completes generations over its working set
    assert lines[-1].ticks > lines[0].ticks  # LAPIC timer interrupts arrive


def test_ls_shows_running_vm(vm: GuestVm, guest_elf: Path) -> None:
    vm.start(guest_elf, guest_cmdline())
    vm.wait_statuses(1)
    rows = json.loads(vm.cli("ls", "--json").stdout)
    assert [(r["name"], r["pid"], r["state"]) for r in rows] == [(vm.name, vm.pid, "running")]
    text = vm.cli("ls").stdout
    assert vm.name in text and str(vm.pid) in text


def test_pause_stops_the_guest_and_resume_continues_it(vm: GuestVm, guest_elf: Path) -> None:
    vm.start(guest_elf, guest_cmdline(status_ms=50))
    vm.wait_statuses(3)
    assert json.loads(vm.cli("pause", vm.name, "--json").stdout)["state"] == "paused"
    time.sleep(0.3)  # a status line being printed when the pause came has finished by now
    frozen = vm.output()
    time.sleep(1.0)
    assert vm.output() == frozen, "the guest printed while paused"
    last = statuses(frozen)[-1]
    vm.cli("resume", vm.name)
    after = vm.wait_statuses(2, after=last.seq)
    assert after[0].seq == last.seq + 1  # the counter continues where it stopped
    assert after[0].steps > last.steps
    # The guest measured the pause itself (TSC in ring 3): a gap of about the 1.3 s we kept it paused. It shows
    # in the first line after resume, or in the second when the pause caught the guest half-way through printing
    # a line whose figures it had already taken (the console only shows whole lines).
    assert max(after[0].gap_us, after[1].gap_us) >= 1_000_000
    assert after[1].uptime_us - last.uptime_us >= 1_000_000
    assert all(s.integrity == "ok" for s in after)


def test_stop_ends_the_vmm_and_cleans_up(vm: GuestVm, guest_elf: Path, run_dir: Path) -> None:
    vm.start(guest_elf, guest_cmdline())
    vm.wait_statuses(1)
    vm.cli("stop", vm.name)
    deadline = time.monotonic() + 10
    while pids_with_tag(vm.tag) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pids_with_tag(vm.tag) == []
    assert not (run_dir / f"{vm.name}.sock").exists()
    assert json.loads(vm.cli("ls", "--json").stdout) == []


def test_guest_reset_ends_the_vmm_with_status_0(run_dir: Path, guest_elf: Path) -> None:
    tag = "reset-" + os.urandom(4).hex()
    env = {**os.environ, "HOTSWAP_RUN_DIR": str(run_dir), "HOTSWAP_TEST_TAG": tag}
    try:
        result = subprocess.run(
            [
                *HOTSWAP,
                "run",
                "--kernel",
                str(guest_elf),
                "--cmdline",
                guest_cmdline(extra="exit_after=3"),
                "--mem",
                "128M",
                "--name",
                "fg",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    finally:
        kill_pids(pids_with_tag(tag))
    assert result.returncode == 0, result.stderr
    assert len(statuses(result.stdout)) == 3 and "hsg: exit" in result.stdout
    assert "reset" in result.stderr and "Traceback" not in result.stderr


def test_console_command_shows_the_guest_output(vm: GuestVm, guest_elf: Path) -> None:
    vm.start(guest_elf, guest_cmdline(status_ms=50))
    vm.wait_statuses(2)
    attached = subprocess.Popen(
        [*HOTSWAP, "console", vm.name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, **vm.env},
    )
    try:
        assert attached.stdout is not None
        seen = b""
        deadline = time.monotonic() + 10
        while seen.count(b"hsg: status") < 5 and time.monotonic() < deadline:
            seen += os.read(attached.stdout.fileno(), 65536)
        assert b"hsg: boot" in seen  # the history a new client is shown first
        assert seen.count(b"hsg: status") >= 5  # then the live output
        vm.cli("stop", vm.name)
        assert attached.wait(10) == 0  # the VM stopped: the console ends
    finally:
        if attached.poll() is None:
            attached.kill()
            attached.wait()


def test_api_socket_is_private_to_its_user(vm: GuestVm, guest_elf: Path) -> None:
    # A directory anyone may enter (the run directory itself is 0700), so only the socket guards itself.
    public = Path(tempfile.mkdtemp(prefix="hotswap-api-", dir="/tmp"))
    public.chmod(0o755)
    socket_path = public / "api.sock"
    try:
        vm.start(guest_elf, guest_cmdline(), 1, "256M", "--api-sock", str(socket_path))
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600
        # A client of another uid, even one the file mode would let in, is refused by SO_PEERCRED.
        os.chmod(socket_path, 0o666)
        _assert_refused_for_nobody(socket_path)
        assert vm.info()["state"] == "running"
    finally:
        vm.kill()
        shutil.rmtree(public, ignore_errors=True)


def _assert_refused_for_nobody(socket_path: Path) -> None:
    child = os.fork()
    if child == 0:  # the child turns into uid 65534 (nobody) and asks for /vm
        try:
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(str(socket_path))
                try:
                    sock.sendall(b"GET /vm HTTP/1.1\r\n\r\n")
                    answer = sock.recv(4096)
                except (ConnectionResetError, BrokenPipeError):
                    answer = b""  # closed on us with the request unread
            os._exit(0 if answer == b"" else 1)
        except BaseException:
            os._exit(2)  # could not even connect: the test would prove nothing
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "another uid got an answer (or could not connect)"


def test_uart_output_is_served_in_c_until_console_input_needs_the_model(vm: GuestVm, guest_elf: Path) -> None:
    """The guest prints through the MMIO UART: those exits are served in the vCPU's C run loop (kvm/byte_queue.py)
    and every line still arrives whole and in order. Input makes the model hold a byte the guest never reads (the
    test guest does not read its UART), so from then on every access goes through the model, and the output goes
    on, still whole and in order."""
    vm.start(guest_elf, guest_cmdline(status_ms=20))
    first = vm.wait_statuses(3)
    info = vm.info()
    served = info["serial_exits_in_c"]
    assert info["state_codec"] == "c"  # the state codec's C happy path is built and loaded (hotswap/state/_fastcodec.c)
    later = vm.wait_statuses(5, after=first[-1].seq)
    assert vm.info()["serial_exits_in_c"] > served + 5 * 40  # a status line is well over 40 bytes
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(vm.info()["console_socket"])
        client.sendall(b"x")
        # the model holds the byte once the I/O thread fed it: the next lines go through Python
        vm.wait_statuses(3, after=later[-1].seq)
        closed_at = vm.info()["serial_exits_in_c"]
        after = vm.wait_statuses(10, after=later[-1].seq + 3)
        assert vm.info()["serial_exits_in_c"] == closed_at
    finally:
        client.close()
    lines = vm.statuses()
    assert [s.seq for s in lines] == list(range(lines[0].seq, lines[0].seq + len(lines)))
    assert all(s.integrity == "ok" for s in lines) and after[-1].seq > later[-1].seq
