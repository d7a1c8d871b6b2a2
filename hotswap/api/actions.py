"""What a user can ask a running VMM to do. The HTTP API (and so the CLI, which speaks it) turns each request into
one of these; the VMM's controller decides in one place which are legal in which state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from hotswap.errors import ApiError


@dataclass(frozen=True)
class Describe:
    pass


@dataclass(frozen=True)
class Pause:
    pass


@dataclass(frozen=True)
class Resume:
    pass


@dataclass(frozen=True)
class Shutdown:
    pass


@dataclass(frozen=True)
class Upgrade:
    executable: str | None = None  # the hotswap to hand over to; default: the one installed now
    mode: str = "transfer"  # "transfer": a new process; "exec": this process re-executes itself
    timeout: float = 30.0


Action = Describe | Pause | Resume | Shutdown | Upgrade


class Controller(Protocol):
    def execute(self, action: Action) -> dict[str, Any]: ...

    def replied(self, action: Action) -> None:
        """Called once the answer to `action` has been written (a handed-over VMM waits for it to exit)."""
        ...


ROUTES: dict[tuple[str, str], type] = {
    ("GET", "/vm"): Describe,
    ("PUT", "/vm/pause"): Pause,
    ("PUT", "/vm/resume"): Resume,
    ("PUT", "/vm/shutdown"): Shutdown,
    ("PUT", "/vm/upgrade"): Upgrade,
}


def parse_action(method: str, path: str, body: dict[str, Any]) -> Action:
    """Map a request to an action; unknown paths and bad bodies raise ApiError with the HTTP status to answer."""
    if method == "POST":
        method = "PUT"  # both are accepted for the action endpoints
    path = path.rstrip("/") or "/"
    kind = ROUTES.get((method, path))
    if kind is None:
        if any(p == path for _, p in ROUTES):
            raise ApiError(f"method {method} not allowed on {path}", 405)
        raise ApiError(f"no such resource: {path}", 404)
    if kind is Upgrade:
        return _parse_upgrade(body)
    if body:
        raise ApiError(f"{path} takes no request body fields, got {', '.join(sorted(body))}", 400)
    action: Action = kind()
    return action


def _parse_upgrade(body: dict[str, Any]) -> Upgrade:
    allowed = {"exec", "mode", "timeout"}
    unknown = set(body) - allowed
    if unknown:
        raise ApiError(f"unknown upgrade fields: {', '.join(sorted(unknown))}", 400)
    executable = body.get("exec")
    if executable is not None and not isinstance(executable, str):
        raise ApiError("upgrade field 'exec' must be a string (a path to a hotswap executable)", 400)
    mode = body.get("mode", "transfer")
    if mode not in ("transfer", "exec"):
        raise ApiError(f"upgrade mode must be 'transfer' or 'exec', not {mode!r}", 400)
    timeout = body.get("timeout", 30.0)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= 600:
        raise ApiError("upgrade field 'timeout' must be a number of seconds in (0, 600]", 400)
    return Upgrade(executable, mode, float(timeout))
