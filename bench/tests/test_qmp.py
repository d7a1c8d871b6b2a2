"""The QMP client against a scripted fake QEMU on a unix socket: no QEMU needed."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.qmp import Qmp, QmpError, event_time_ns

STOP: dict[str, object] = {"event": "STOP", "timestamp": {"seconds": 12, "microseconds": 345}}


class FakeQemu:
    """Greets, then answers each command from `replies` (a list of JSON lines to send per command)."""

    def __init__(self, path: Path, replies: dict[str, list[dict[str, object]]]) -> None:
        self.received: list[dict[str, object]] = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(1)
        self._replies = replies
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self._listener.accept()
        with conn, conn.makefile("rwb") as stream:
            stream.write(b'{"QMP": {"version": {}, "capabilities": ["oob"]}}\n')
            stream.flush()
            for raw in stream:
                message = json.loads(raw)
                self.received.append(message)
                for reply in self._replies.get(str(message["execute"]), [{"return": {}}]):
                    stream.write(json.dumps(reply).encode() + b"\n")
                stream.flush()

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def qemu_path(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "qmp.sock"


def test_negotiates_then_returns_results_and_keeps_events(qemu_path: Path) -> None:
    fake = FakeQemu(qemu_path, {"query-status": [STOP, {"return": {"status": "paused"}}]})
    with Qmp(str(qemu_path), timeout=5) as qmp:
        assert qmp.execute("query-status") == {"status": "paused"}
        assert qmp.events == [STOP]
        assert qmp.wait_event("STOP", timeout=1) == (0, STOP)
        assert event_time_ns(STOP) == 12_000_345_000
    assert fake.received[0] == {"execute": "qmp_capabilities"}
    assert fake.received[1] == {"execute": "query-status"}
    fake.close()


def test_arguments_are_sent_and_errors_raise_with_qemus_text(qemu_path: Path) -> None:
    error: dict[str, object] = {"error": {"class": "GenericError", "desc": "Parameter 'uri' is missing"}}
    fake = FakeQemu(qemu_path, {"migrate": [error]})
    with (
        Qmp(str(qemu_path), timeout=5) as qmp,
        pytest.raises(QmpError, match="qmp migrate: GenericError: Parameter 'uri' is missing"),
    ):
        qmp.execute("migrate", uri="unix:/x")
    assert fake.received[1] == {"execute": "migrate", "arguments": {"uri": "unix:/x"}}
    fake.close()


def test_waiting_for_an_event_that_never_comes_times_out(qemu_path: Path) -> None:
    fake = FakeQemu(qemu_path, {})
    with Qmp(str(qemu_path), timeout=5) as qmp, pytest.raises(QmpError, match="timed out waiting for event RESUME"):
        qmp.wait_event("RESUME", timeout=0.2)
    fake.close()


def test_a_socket_that_is_not_qmp_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "not-qmp.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        conn.sendall(b'{"hello": 1}\n')
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    with pytest.raises(QmpError, match="expected a greeting"):
        Qmp(str(path), timeout=5)
    listener.close()
