"""The console tap: lines from sources in order, with arrival times: no KVM needed."""

from __future__ import annotations

import socket
import time

import pytest

from bench.console import ConsoleTap
from bench.report import BenchError

STATUS = "hsg: status seq={} cpus=1 steps=1 passes=0 ticks=0 integrity=ok gap_us=5 maxgap_us=5 uptime_us=9\r\n"


def pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


def test_lines_are_split_stamped_and_statuses_parsed() -> None:
    tap = ConsoleTap()
    ours, theirs = pair()
    tap.attach_socket(ours, "one")
    before = time.monotonic_ns()
    theirs.sendall(b"hsg: boot cpus=1\r\n" + STATUS.format(1).encode()[:20])
    theirs.sendall(STATUS.format(1).encode()[20:] + STATUS.format(2).encode())
    statuses = tap.wait_statuses(0, 2, timeout=5)
    assert [s.seq for s in statuses] == [1, 2]
    assert tap.lines[0][1] == "hsg: boot cpus=1"
    assert all(arrived >= before for arrived, _ in tap.lines)
    assert tap.wait_line("hsg: boot", timeout=1)[1] == "hsg: boot cpus=1"
    theirs.close()
    tap.close()


def test_a_later_source_waits_until_the_earlier_one_ends() -> None:
    """A migrated guest's line starts on the source QEMU and ends on the destination."""
    tap = ConsoleTap()
    src_ours, src_theirs = pair()
    dst_ours, dst_theirs = pair()
    tap.attach_socket(src_ours, "source")
    tap.attach_socket(dst_ours, "dest")
    line = STATUS.format(7).encode()
    dst_theirs.sendall(line[30:])  # the destination's bytes arrive first ...
    time.sleep(0.1)
    assert tap.last_seq() == 0
    src_theirs.sendall(line[:30])  # ... the source's before they are joined
    time.sleep(0.1)
    assert tap.last_seq() == 0
    src_theirs.close()  # the source QEMU is gone
    assert [s.seq for s in tap.wait_statuses(0, 1, timeout=5)] == [7]
    dst_theirs.close()
    tap.close()


def test_waiting_too_long_names_what_it_waited_for() -> None:
    tap = ConsoleTap()
    ours, theirs = pair()
    tap.attach_socket(ours, "x")
    with pytest.raises(BenchError, match="3 status lines after seq 0"):
        tap.wait_statuses(0, 3, timeout=0.2)
    theirs.close()
    tap.close()


def test_statuses_between_and_after() -> None:
    tap = ConsoleTap()
    ours, theirs = pair()
    tap.attach_socket(ours, "x")
    theirs.sendall(b"".join(STATUS.format(s).encode() for s in range(1, 6)))
    tap.wait_statuses(0, 5, timeout=5)
    assert [s.seq for s in tap.statuses_between(1, 3)] == [2, 3]
    assert [s.seq for s in tap.statuses_after(3)] == [4, 5]
    theirs.close()
    tap.close()
