"""Where running VMMs can be found: one runtime directory holding, per VM name, the API socket, the console socket
and a small record file. `hotswap ls`, `--name` and `--pid` lookups read it; a VMM writes its record when it starts
and every successor rewrites it with its own pid when it takes over."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from hotswap.errors import ConfigError


def run_dir() -> Path:
    """$HOTSWAP_RUN_DIR, else /run/hotswap for root, else $XDG_RUNTIME_DIR/hotswap, else /tmp/hotswap-<uid>."""
    explicit = os.environ.get("HOTSWAP_RUN_DIR")
    if explicit:
        path = Path(explicit)
    elif os.geteuid() == 0:
        path = Path("/run/hotswap")
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "hotswap"
    else:
        path = Path(f"/tmp/hotswap-{os.getuid()}")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def api_socket_path(name: str) -> str:
    return str(run_dir() / f"{name}.sock")


def console_socket_path(name: str) -> str:
    return str(run_dir() / f"{name}.console")


def log_path(name: str) -> str:
    return str(run_dir() / f"{name}.log")


@dataclass(frozen=True)
class VmRecord:
    name: str
    pid: int
    api_socket: str
    console_socket: str


def record_path(name: str) -> Path:
    return run_dir() / f"{name}.json"


def write_record(record: VmRecord) -> None:
    publish_record(stage_record(record))


@dataclass(frozen=True)
class StagedRecord:
    """A record written beside its place, waiting to be published with one rename."""

    temporary: Path
    path: Path


def staged_path(name: str, pid: int) -> Path:
    return run_dir() / f"{name}.json.{pid}.tmp"  # not *.json: never read as a record


def stage_record(record: VmRecord) -> StagedRecord:
    """Write `record` beside its place. A successor stages its record before the guest's pause, so that taking
    over costs one rename (which runs without the GIL): writing the file had taken ~0.3 ms of its first
    millisecond after resuming the guest, much of it holding the GIL the vCPU threads need for their exits."""
    temporary = staged_path(record.name, record.pid)
    temporary.write_text(json.dumps(asdict(record)))
    os.chmod(temporary, 0o600)
    return StagedRecord(temporary, record_path(record.name))


def publish_record(staged: StagedRecord) -> None:
    os.replace(staged.temporary, staged.path)  # atomic: readers see the old or the new record, never half of one


def discard_staged(name: str, pid: int) -> None:
    """Remove what process `pid` staged for `name` and never published (a successor that gave up or died)."""
    staged_path(name, pid).unlink(missing_ok=True)


def remove_record(name: str, pid: int) -> None:
    """Remove the record if it is still ours (a successor may already have rewritten it)."""
    record = read_record(name)
    if record is not None and record.pid == pid:
        try:
            record_path(name).unlink()
        except FileNotFoundError:
            pass


def read_record(name: str) -> VmRecord | None:
    try:
        data = json.loads(record_path(name).read_text())
        return VmRecord(**data)
    except (FileNotFoundError, ValueError, TypeError):
        return None


def all_records() -> list[VmRecord]:
    records = []
    for path in sorted(run_dir().glob("*.json")):
        record = read_record(path.stem)
        if record is not None:
            records.append(record)
    return records


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find(name: str | None = None, pid: int | None = None) -> VmRecord:
    """The record of a running VMM by name or pid; a clear error when there is none."""
    if name is not None:
        record = read_record(name)
        if record is None:
            raise ConfigError(f"no VM named {name!r} (looked in {run_dir()})")
        return record
    if pid is not None:
        for record in all_records():
            if record.pid == pid:
                return record
        raise ConfigError(f"no hotswap VMM with pid {pid} (looked in {run_dir()})")
    raise ConfigError("name a VM with --name NAME or --pid PID")
