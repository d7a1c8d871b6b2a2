"""A successor (`hotswap _successor --fd N`) fed bad input by a test playing the old VMM over a socketpair.

Whatever arrives, the successor must give up without running the guest: exit non-zero, leave no process behind,
never touch guest RAM (the memfd it was given keeps its exact bytes, and nothing reaches the console), and, where
the stream is still in step, answer ERROR with a code and a message saying what was wrong.

The machine it is offered is real: 64 MiB, 1 vCPU, the test guest loaded into a memfd by this process, and a state
captured from that never-run vCPU at the guest's entry point, so a successor that resumed it would boot the guest
(test_the_checks_see_a_successor_that_runs_the_guest proves the checks notice). The state goes out as protocol 5
sends it (the vCPU's record in shared memory, written from that vCPU by hotswap's own writer, then STATE) or as
protocol 4 does (STATE_VCPUS, then STATE); where it goes out whole, the test first takes the ownership token back,
as a real old VMM does before it gives up: the successor must find it gone. Some cases speak protocol 2
(RESTORED/COMMIT, no token) or 3 (the whole state in STATE), as older VMMs do.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from framework.guest import guest_cmdline
from framework.vmm import kill_pids, pids_with_tag

from hotswap import exitcodes
from hotswap.boot import load_kernel, split_ram
from hotswap.config import MachineConfig
from hotswap.handover.layout import HandoverFds
from hotswap.handover.ownership import OwnershipToken
from hotswap.handover.vcpu_records import OutgoingRecords
from hotswap.machine.boot_cpu import apply_boot_plan
from hotswap.machine.console import ConsoleFds
from hotswap.machine.machine import Machine
from hotswap.sockets import make_listener
from hotswap.state import FORMATS, decode, encode, pack, pack_part
from hotswap.wire import PROTOCOL_VERSION, Channel, ErrorCode, Hello, MessageType, PeerClosed, WireError, decode_error
from hotswap.wire.messages import CRC, HEADER, encode_header

pytestmark = pytest.mark.kvm

MEM = 64 * 1024 * 1024
REPLY_TIMEOUT = 30.0  # the successor starts Python and builds a VM before it can answer CONFIG
EXIT_TIMEOUT = 30.0  # includes its 5 s wait to see whether a silent old VMM died (it does not: this is us)


@dataclass
class Offer:
    """What an old VMM hands over: config, a memfd with the guest loaded, and the state of its vCPU."""

    config: MachineConfig
    memory_fds: list[int]
    tree: dict[str, Any]
    booted_at_ns: int
    machine: Machine  # its never-run vCPU is what the records carry

    def digest(self) -> str:
        h = hashlib.blake2b()
        for fd in self.memory_fds:
            size = os.fstat(fd).st_size
            for offset in range(0, size, 1 << 24):
                h.update(os.pread(fd, 1 << 24, offset))
        return h.hexdigest()

    def ram(self) -> list[bytes]:
        return [os.pread(fd, os.fstat(fd).st_size, 0) for fd in self.memory_fds]

    def put_back(self, ram: list[bytes]) -> None:
        """Undo a run of the guest: the next successor gets the never-run guest again, as the state expects."""
        for fd, data in zip(self.memory_fds, ram, strict=True):
            os.pwrite(fd, data, 0)


@pytest.fixture(scope="module")
def offer(guest_elf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Offer]:
    where = tmp_path_factory.mktemp("offer")
    config = MachineConfig(
        name="offered",
        mem_size=MEM,
        cpus=1,
        kernel=str(guest_elf),
        cmdline=guest_cmdline(ws="4M", status_ms=50),
        console="stdio",
        console_log=str(where / "unused.log"),
        api_socket=str(where / "unused.sock"),
    )
    machine = Machine.create(config)
    try:
        plan = load_kernel(
            machine.platform.memory,
            guest_elf,
            None,
            config.cmdline,
            split_ram(MEM),
            config.cpus,
            cpuid=machine.platform.cpuid,
        )
        apply_boot_plan(machine.platform.vcpus[0], plan)  # never run here: the state is the guest's entry point
        yield Offer(config, machine.platform.memory.fds, machine.capture_state(), machine.booted_at_ns, machine)
    finally:
        machine.shutdown()


class OldVmm:
    """The test's side of the handover: a Channel to a freshly started successor, and the fds it may hand over."""

    def __init__(self, offer: Offer, where: Path) -> None:
        self.offer = offer
        self.tag = uuid.uuid4().hex
        self.console_log = where / "console.log"
        self.console_fd = os.open(self.console_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.api = make_listener(str(where / "api.sock"))
        self.stderr = where / "successor.stderr"
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {**os.environ, "HOTSWAP_RUN_DIR": str(where), "HOTSWAP_TEST_TAG": self.tag, "HOTSWAP_LOG_LEVEL": "info"}
        env.pop("HOTSWAP_FAULT", None)
        with open(self.stderr, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hotswap", "_successor", "--fd", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
            )
        theirs.close()
        self.channel = Channel(ours, peer="successor")
        self.closed = False
        self.ownership = OwnershipToken.create()
        self.records = OutgoingRecords(offer.machine)

    # -- the protocol, done right ---------------------------------------------------------------------------------
    def hello(self) -> Hello:
        return Hello.decode(self.channel.recv(REPLY_TIMEOUT, {MessageType.HELLO}).payload)

    def fds(self, protocol: int = PROTOCOL_VERSION) -> HandoverFds:
        return HandoverFds(
            memory=list(self.offer.memory_fds),
            console=ConsoleFds(log_file=self.console_fd),
            api_listener=self.api.fileno(),
            ownership=[self.ownership.fd],
            lane=self.records.fds() if protocol >= 5 else [],
        )

    def config_message(self, **changes: Any) -> dict[str, Any]:
        protocol = changes.get("protocol", PROTOCOL_VERSION)
        message: dict[str, Any] = {
            "protocol": protocol,
            "timeout_ms": 30_000,
            "config": self.offer.config.to_dict(),
            "console_history": b"",
            "generation": 2,
            "booted_at_ns": self.offer.booted_at_ns,
            "memory": [[gpa, size] for gpa, size in split_ram(MEM)],
            "fds": self.fds(protocol).counts(),
        }
        if protocol >= 5:
            message["lane"] = {"format": FORMATS.current, "vcpus": self.records.config()}
        message.update(changes)
        return message

    def send_config(self, payload: bytes | None = None, fds: list[int] | None = None, protocol: int = 5) -> None:
        self.channel.send(
            MessageType.CONFIG,
            encode(self.config_message(protocol=protocol)) if payload is None else payload,
            self.fds(protocol).flat() if fds is None else fds,
        )

    def ready(self, protocol: int = PROTOCOL_VERSION, **changes: Any) -> dict[str, Any]:
        """HELLO, CONFIG of `protocol` (3, 4 or 5: all carry the token; 5 the vCPU records), READY."""
        self.hello()
        self.send_config(payload=encode(self.config_message(protocol=protocol, **changes)), protocol=protocol)
        ready = decode(self.channel.recv(REPLY_TIMEOUT, {MessageType.READY}).payload)
        assert isinstance(ready, dict)
        if ready.get("lane") is True:
            self.records.arm(2)
        return ready

    def state_blob(self) -> bytes:
        """The whole state in one container (protocols 1-3)."""
        return pack(self.offer.tree)

    def vcpus_blob(self) -> bytes:
        return pack_part({"vcpus": self.offer.tree["vcpus"]})

    def rest_blob(self) -> bytes:
        return pack_part({k: v for k, v in self.offer.tree.items() if k != "vcpus"})

    def send_state(self, vcpus: bytes | None = None, rest: bytes | None = None) -> None:
        """Protocol 4: STATE_VCPUS, then STATE."""
        self.channel.send(MessageType.STATE_VCPUS, self.vcpus_blob() if vcpus is None else vcpus)
        self.channel.send(MessageType.STATE, self.rest_blob() if rest is None else rest)

    def send_records(self, rest: bytes | None = None, fault: str | None = None) -> None:
        """Protocol 5: the vCPU's record (written by hotswap's writer from the offer's vCPU), then STATE."""
        self.records.send_all(fault)
        self.channel.send(MessageType.STATE, self.rest_blob() if rest is None else rest)

    # -- endings ----------------------------------------------------------------------------------------------
    def take_back(self) -> None:
        """Take the ownership token, as an old VMM rolling back does: the guest is ours again."""
        assert self.ownership.take(), "the successor took the token"

    def close(self) -> None:
        """The old VMM goes away from the channel (it stays alive: the successor's parent is this test)."""
        self.channel.close()
        self.closed = True

    def reply(self) -> tuple[ErrorCode, str] | None:
        """The ERROR the successor answered with, or None if it ended the connection without one."""
        if self.closed:
            return None
        try:
            message = self.channel.recv(REPLY_TIMEOUT, {MessageType.ERROR})
        except PeerClosed:
            return None
        except WireError as exc:
            raise AssertionError(f"the successor answered something else than ERROR: {exc}") from None
        return decode_error(message.payload)

    def finish(self) -> tuple[int | None, list[int]]:
        """Close our end, give the successor time to exit; (its exit status, tagged processes still there), seen
        before anything left over is killed."""
        if not self.closed:
            self.close()
        os.close(self.console_fd)
        self.api.close()
        self.ownership.close()
        self.records.close()
        try:
            self.process.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        status, left_over = self.process.poll(), pids_with_tag(self.tag)
        kill_pids(left_over)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        return status, left_over


# -- the inputs --------------------------------------------------------------------------------------------------
def _header(magic: bytes, msg_type: int, nfds: int = 0, length: int = 0) -> bytes:
    head = HEADER.pack(magic, msg_type, 0, nfds, length)
    return head + CRC.pack(zlib.crc32(head))


def truncated_header(old: OldVmm) -> None:
    old.hello()
    old.channel.sock.sendall(encode_header(MessageType.CONFIG, 0, 0, 100)[:7])
    old.channel.sock.shutdown(socket.SHUT_WR)  # it can still answer; it cannot get the rest


def wrong_magic(old: OldVmm) -> None:
    old.hello()
    old.channel.sock.sendall(_header(b"XX", MessageType.CONFIG))


def unexpected_hello(old: OldVmm) -> None:
    old.hello()
    old.channel.send(MessageType.HELLO, Hello.local().encode())


def config_garbage(old: OldVmm) -> None:
    old.hello()
    old.send_config(payload=b"\x0a\xff\xff\xff\x7fnot a codec dict")


def config_fd_count(old: OldVmm) -> None:
    old.hello()
    old.send_config(fds=old.fds().flat()[:-1])  # the message says one API listener; none arrives


def config_unknown_config_field(old: OldVmm) -> None:
    old.hello()
    message = old.config_message()
    message["config"]["turbo"] = True
    old.send_config(payload=encode(message))


def config_unknown_protocol(old: OldVmm) -> None:
    old.hello()
    old.send_config(payload=encode(old.config_message(protocol=99)))


def config_unknown_field(old: OldVmm) -> None:
    old.hello()
    old.send_config(payload=encode(old.config_message(hint="from a newer build")))


def state_truncated(old: OldVmm) -> None:
    old.ready()
    blob = old.rest_blob()
    old.send_records(rest=blob[: len(blob) // 2])


def state_corrupted(old: OldVmm) -> None:
    old.ready()
    old.send_records(rest=corrupted(old.rest_blob()))


def corrupted(blob: bytes) -> bytes:
    flipped = bytearray(blob)
    flipped[len(flipped) // 2] ^= 0x01
    return bytes(flipped)


def with_version(blob: bytes, version: int) -> bytes:
    body = bytearray(blob[:-4])
    struct.pack_into("<H", body, 8, version)  # format version: the u16 after the 8-byte magic (checksum recomputed)
    return bytes(body) + struct.pack("<I", zlib.crc32(body))


def state_bad_version(old: OldVmm) -> None:
    old.ready()
    old.send_records(rest=with_version(old.rest_blob(), 99))


def state_unknown_vcpu_field(old: OldVmm) -> None:
    old.ready(protocol=4)
    vcpus = [{**old.offer.tree["vcpus"][0], "turbo": 1}]
    old.channel.send(MessageType.STATE_VCPUS, pack_part({"vcpus": vcpus}))  # a valid container


def vcpus_truncated(old: OldVmm) -> None:
    old.ready(protocol=4)
    blob = old.vcpus_blob()
    old.channel.send(MessageType.STATE_VCPUS, blob[: len(blob) // 2])


def vcpus_corrupted(old: OldVmm) -> None:
    old.ready(protocol=4)
    old.channel.send(MessageType.STATE_VCPUS, corrupted(old.vcpus_blob()))


def vcpus_bad_version(old: OldVmm) -> None:
    old.ready(protocol=4)
    old.channel.send(MessageType.STATE_VCPUS, with_version(old.vcpus_blob(), 99))


def vcpus_part_holds_more(old: OldVmm) -> None:
    old.ready(protocol=4)
    old.channel.send(MessageType.STATE_VCPUS, pack_part({"vcpus": old.offer.tree["vcpus"], "vm": {}}))


def state_parts_overlap(old: OldVmm) -> None:
    old.ready(protocol=4)
    old.send_state(rest=pack_part(old.offer.tree))  # STATE holds the vCPUs again


def state_parts_of_two_formats(old: OldVmm) -> None:
    old.ready(protocol=4)
    old.send_state(rest=with_version(old.rest_blob(), 1))


def close_after_vcpus(old: OldVmm) -> None:
    """The old VMM sent the vCPUs and went away: the successor restored them, but never runs them."""
    old.ready(protocol=4)
    old.channel.send(MessageType.STATE_VCPUS, old.vcpus_blob())
    old.close()


def close_before_hello(old: OldVmm) -> None:
    old.close()


def close_after_hello(old: OldVmm) -> None:
    old.hello()
    old.close()


def close_in_config(old: OldVmm) -> None:
    old.hello()
    payload = encode(old.config_message())
    header = encode_header(MessageType.CONFIG, 0, 0, len(payload))
    old.channel.sock.sendall(header + payload[: len(payload) // 2])
    old.close()


def close_after_config(old: OldVmm) -> None:
    old.hello()
    old.send_config()
    old.close()


def close_after_ready(old: OldVmm) -> None:
    old.ready()
    old.close()


def state_after_take_back(old: OldVmm) -> None:
    """The old VMM took the guest back (as after a timeout) by the time the successor restored the state."""
    old.ready()
    old.take_back()
    old.send_records()


def state_after_take_back_protocol_4(old: OldVmm) -> None:
    old.ready(protocol=4)
    old.take_back()
    old.send_state()


def abort_after_state(old: OldVmm) -> None:
    old.ready()
    old.take_back()
    old.send_records()
    old.channel.send_abort(ErrorCode.TIMEOUT, "the successor took too long")
    old.close()


def close_after_state(old: OldVmm) -> None:
    old.ready()
    old.take_back()
    old.send_records()
    old.close()


# -- protocol 5's vCPU records -------------------------------------------------------------------------------------
def record_corrupted(old: OldVmm) -> None:
    old.ready()
    old.send_records(fault="corrupt")


def record_truncated(old: OldVmm) -> None:
    old.ready()
    old.send_records(fault="truncate")


def record_bad_version(old: OldVmm) -> None:
    old.ready()
    old.send_records(fault="badversion")


def record_of_another_generation(old: OldVmm) -> None:
    old.ready()
    old.records.arm(3)  # written for generation 3; the successor becomes 2
    old.send_records()


def state_without_records(old: OldVmm) -> None:
    """STATE arrives, but no record was written: the successor waits for it (5 s), then gives up."""
    old.ready()
    old.channel.send(MessageType.STATE, old.rest_blob())


def state_holds_vcpus_beside_records(old: OldVmm) -> None:
    old.ready()
    old.send_records(rest=pack_part(old.offer.tree))


def vcpus_message_beside_records(old: OldVmm) -> None:
    """The records were accepted (READY "lane": true): STATE_VCPUS is out of order."""
    old.ready()
    old.channel.send(MessageType.STATE_VCPUS, old.vcpus_blob())


def close_after_records(old: OldVmm) -> None:
    """The records are written and the old VMM goes away before STATE: the successor restored the vCPU, but never
    runs it."""
    old.ready()
    old.records.send_all()
    old.close()


def config_records_malformed(old: OldVmm) -> None:
    old.hello()
    old.send_config(payload=encode(old.config_message(lane={"format": FORMATS.current, "vcpus": [{"version": 1}]})))


def config_records_without_fds(old: OldVmm) -> None:
    old.hello()
    fds = old.fds()
    fds.lane = []
    old.send_config(payload=encode(old.config_message(fds=fds.counts())), fds=fds.flat())


def config_records_in_protocol_4(old: OldVmm) -> None:
    old.hello()
    old.send_config(payload=encode(old.config_message(protocol=4, fds=old.fds().counts())), fds=old.fds().flat())


def state_after_take_back_protocol_3(old: OldVmm) -> None:
    """Protocol 3: the whole state in STATE; the guest taken back meanwhile."""
    old.ready(protocol=3)
    old.take_back()
    old.channel.send(MessageType.STATE, old.state_blob())


def whole_state_in_protocol_4(old: OldVmm) -> None:
    """Protocol 4 with the whole state in STATE (no STATE_VCPUS): out of order."""
    old.ready(protocol=4)
    old.channel.send(MessageType.STATE, old.state_blob())


def config_protocol_2(old: OldVmm) -> None:
    """CONFIG as an older VMM (protocol 2) sends it: no ownership token among the fds."""
    old.hello()
    fds = old.fds(protocol=2)
    fds.ownership = []
    old.send_config(payload=encode(old.config_message(protocol=2, fds=fds.counts())), fds=fds.flat())


def close_after_restored_protocol_2(old: OldVmm) -> None:
    """An older VMM (protocol 2: no token) leaves after RESTORED but stays alive: no takeover from a live peer."""
    config_protocol_2(old)
    old.channel.recv(REPLY_TIMEOUT, {MessageType.READY})
    old.channel.send(MessageType.STATE, old.state_blob())
    old.channel.recv(REPLY_TIMEOUT, {MessageType.RESTORED})
    old.close()


def config_protocol_2_with_token(old: OldVmm) -> None:
    """A protocol-2 CONFIG that carries a token: the successor would wait for COMMIT while nobody takes it."""
    old.hello()
    old.send_config(payload=encode(old.config_message(protocol=2)), protocol=2)


def config_without_token(old: OldVmm) -> None:
    old.hello()
    fds = old.fds()
    fds.ownership = []
    old.send_config(payload=encode(old.config_message(fds=fds.counts())), fds=fds.flat())


@dataclass(frozen=True)
class Case:
    drive: Callable[[OldVmm], None]
    code: ErrorCode | None = None  # the ERROR expected back; None: the stream is gone, no answer is owed
    words: tuple[str, ...] = ()  # the message must contain each


CASES = {
    "truncated-header": Case(truncated_header),
    "wrong-magic": Case(wrong_magic),
    "unexpected-hello": Case(
        unexpected_hello,
        ErrorCode.PROTOCOL,
        ("HELLO", "CONFIG"),
    ),
    "config-garbage": Case(config_garbage, ErrorCode.BAD_CONFIG, ("cannot build the machine",)),
    "config-fd-count": Case(config_fd_count, ErrorCode.BAD_CONFIG, ("fds", "arrived")),
    "config-unknown-config-field": Case(config_unknown_config_field, ErrorCode.BAD_CONFIG, ("turbo",)),
    "config-unknown-field": Case(config_unknown_field, ErrorCode.BAD_CONFIG, ("hint",)),
    "config-unknown-protocol": Case(config_unknown_protocol, ErrorCode.BAD_CONFIG, ("protocol 99",)),
    "state-truncated": Case(state_truncated, ErrorCode.BAD_STATE, ("length mismatch",)),
    "state-corrupted": Case(state_corrupted, ErrorCode.BAD_STATE, ("checksum",)),
    "state-bad-version": Case(
        state_bad_version,
        ErrorCode.VERSION_MISMATCH,
        ("format version 99",),
    ),
    "state-unknown-vcpu-field": Case(state_unknown_vcpu_field, ErrorCode.BAD_STATE, ("vcpus[0].turbo",)),
    "vcpus-truncated": Case(vcpus_truncated, ErrorCode.BAD_STATE, ("length mismatch",)),
    "vcpus-corrupted": Case(vcpus_corrupted, ErrorCode.BAD_STATE, ("checksum",)),
    "vcpus-bad-version": Case(vcpus_bad_version, ErrorCode.VERSION_MISMATCH, ("format version 99",)),
    "vcpus-part-holds-more": Case(vcpus_part_holds_more, ErrorCode.BAD_STATE, ("STATE_VCPUS holds",)),
    "state-parts-overlap": Case(state_parts_overlap, ErrorCode.BAD_STATE, ("both hold vcpus",)),
    "state-parts-of-two-formats": Case(state_parts_of_two_formats, ErrorCode.BAD_STATE, ("different formats",)),
    "whole-state-in-protocol-4": Case(whole_state_in_protocol_4, ErrorCode.PROTOCOL, ("STATE", "STATE_VCPUS")),
    "close-after-vcpus": Case(close_after_vcpus),
    "record-corrupted": Case(record_corrupted, ErrorCode.BAD_STATE, ("vCPU 0's state record", "bad checksum")),
    "record-truncated": Case(record_truncated, ErrorCode.BAD_STATE, ("vCPU 0's state record", "length mismatch")),
    "record-bad-version": Case(record_bad_version, ErrorCode.VERSION_MISMATCH, ("format version 99",)),
    "record-of-another-generation": Case(
        record_of_another_generation, ErrorCode.BAD_STATE, ("generation 3, expected 2",)
    ),
    "state-without-records": Case(state_without_records, ErrorCode.RESTORE_FAILED, ("record was not taken",)),
    "state-holds-vcpus-beside-records": Case(
        state_holds_vcpus_beside_records, ErrorCode.BAD_STATE, ("STATE holds 'vcpus'",)
    ),
    "vcpus-message-beside-records": Case(vcpus_message_beside_records, ErrorCode.PROTOCOL, ("STATE_VCPUS",)),
    "close-after-records": Case(close_after_records),
    "config-records-malformed": Case(config_records_malformed, ErrorCode.BAD_CONFIG, ("lane",)),
    "config-records-without-fds": Case(config_records_without_fds, ErrorCode.BAD_CONFIG, ("lane", "fds")),
    "config-records-in-protocol-4": Case(config_records_in_protocol_4, ErrorCode.BAD_CONFIG, ("record fds",)),
    "state-after-take-back-protocol-3": Case(state_after_take_back_protocol_3),
    "close-before-hello": Case(close_before_hello),
    "close-after-hello": Case(close_after_hello),
    "close-in-config": Case(close_in_config),
    "close-after-config": Case(close_after_config),
    "close-after-ready": Case(close_after_ready),
    "close-after-state": Case(close_after_state),
    "state-after-take-back": Case(state_after_take_back),
    "state-after-take-back-protocol-4": Case(state_after_take_back_protocol_4),
    "abort-after-state": Case(abort_after_state),
    "close-after-restored-protocol-2": Case(close_after_restored_protocol_2),
    "config-without-token": Case(config_without_token, ErrorCode.BAD_CONFIG, ("ownership token",)),
    "config-protocol-2-with-token": Case(config_protocol_2_with_token, ErrorCode.BAD_CONFIG, ("ownership token",)),
}


@dataclass
class Result:
    exit_status: int | None
    reply: tuple[ErrorCode, str] | None
    memory_changed: bool
    console: str
    left_over: list[int]
    log: str = field(repr=False)


@pytest.fixture(scope="module")
def results() -> dict[str, Result]:
    """Each case runs once; the safety test and the ERROR test both read its result."""
    return {}


@pytest.fixture
def run_case(
    offer: Offer, results: dict[str, Result], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Result]:
    def run(name: str) -> Result:
        if name not in results:
            before = offer.digest()
            old = OldVmm(offer, tmp_path_factory.mktemp(name))
            reply = None
            try:
                CASES[name].drive(old)
                reply = old.reply()
            finally:
                status, left_over = old.finish()
            results[name] = Result(
                exit_status=status,
                reply=reply,
                memory_changed=offer.digest() != before,
                console=old.console_log.read_text(errors="replace"),
                left_over=left_over,
                log=old.stderr.read_text(errors="replace")[-3000:],
            )
        return results[name]

    return run


# -- tests -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_successor_gives_up_without_running_the_guest(run_case: Callable[[str], Result], name: str) -> None:
    result = run_case(name)
    assert result.exit_status == exitcodes.ERROR, f"exit status {result.exit_status}\n{result.log}"
    assert not result.memory_changed, "guest RAM changed: a vCPU ran"
    assert result.console == "", f"the guest printed: {result.console[:200]!r}"
    assert result.left_over == [], f"processes left behind: {result.left_over}"
    assert "Traceback" not in result.log, result.log


@pytest.mark.parametrize("name", [name for name, case in CASES.items() if case.code is not None])
def test_successor_says_why(run_case: Callable[[str], Result], name: str) -> None:
    case, result = CASES[name], run_case(name)
    assert result.reply is not None, f"no ERROR before the connection closed\n{result.log}"
    code, text = result.reply
    assert code == case.code, f"answered {code.name}: {text}"
    for word in case.words:
        assert word in text, f"{word!r} not in {text!r}"


@pytest.mark.parametrize("protocol", [str(PROTOCOL_VERSION), "5-declined", "4", "3", "2"])
def test_the_checks_see_a_successor_that_runs_the_guest(offer: Offer, tmp_path: Path, protocol: str) -> None:
    """The whole handover done right, and the checks above see the guest run: in protocols 3-5 the successor takes
    the token and resumes (5: the vCPU from its record; 5-declined: records of another MSR list offered, so the
    successor declines them and the vCPU comes in STATE_VCPUS); from an older VMM (protocol 2, no token) it sends
    RESTORED and resumes only after COMMIT."""
    before, pristine = offer.digest(), offer.ram()
    old = OldVmm(offer, tmp_path)
    try:
        if protocol == str(PROTOCOL_VERSION):
            assert old.ready().get("lane") is True
            old.send_records()
            old.channel.recv(REPLY_TIMEOUT, {MessageType.RESUMED})
            assert not old.ownership.take(), "the successor runs the guest without holding the token"
        elif protocol == "5-declined":
            layouts = old.records.config()
            layouts[0]["msrs"] = layouts[0]["msrs"][1:]  # not this VMM's MSR list
            ready = old.ready(lane={"format": FORMATS.current, "vcpus": layouts})
            assert ready.get("lane") is False and "MSR list" in ready["lane_declined"], ready
            old.send_state()
            old.channel.recv(REPLY_TIMEOUT, {MessageType.RESUMED})
            assert not old.ownership.take(), "the successor runs the guest without holding the token"
        elif protocol == "4":
            old.ready(protocol=4)
            old.send_state()
            old.channel.recv(REPLY_TIMEOUT, {MessageType.RESUMED})
            assert not old.ownership.take(), "the successor runs the guest without holding the token"
        elif protocol == "3":
            old.ready(protocol=3)
            old.channel.send(MessageType.STATE, old.state_blob())
            old.channel.recv(REPLY_TIMEOUT, {MessageType.RESUMED})
            assert not old.ownership.take(), "the successor runs the guest without holding the token"
        else:
            config_protocol_2(old)
            old.channel.recv(REPLY_TIMEOUT, {MessageType.READY})
            old.channel.send(MessageType.STATE, old.state_blob())
            old.channel.recv(REPLY_TIMEOUT, {MessageType.RESTORED})
            time.sleep(0.5)
            assert offer.digest() == before and old.console_log.read_text() == "", "it ran the guest before COMMIT"
            old.channel.send(MessageType.COMMIT)
            old.channel.recv(REPLY_TIMEOUT, {MessageType.RESUMED})
        deadline = time.monotonic() + 30
        while "hsg: status" not in old.console_log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "hsg: boot " in old.console_log.read_text()
        assert offer.digest() != before
        assert old.process.poll() is None and pids_with_tag(old.tag) == [old.process.pid]
        old.process.kill()  # the checks' other half: a successor that is gone is no longer listed
        old.process.wait()
        assert pids_with_tag(old.tag) == []
    finally:
        old.finish()
        offer.put_back(pristine)
