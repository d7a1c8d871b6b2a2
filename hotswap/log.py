"""structlog set-up. Event names are stable (`vmm.started`, `upgrade.phase`, ...); fields carry pid, vm name,
phase and durations in microseconds (`*_us`)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import structlog

_configured = False
_settings = {"level": "warning", "json": False}


def configure(level: str = "info", json: bool = False, stream: TextIO | None = None) -> None:
    """Log to `stream` (stderr by default): human-readable key=value lines, or JSON lines with `json`."""
    global _configured
    _settings.update(level=level, json=json)
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.WriteLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    _configured = True


def bind(**fields: Any) -> None:
    """Fields added to every later log line of this process (e.g. vm name, generation)."""
    structlog.contextvars.bind_contextvars(pid=os.getpid(), **fields)


def get(name: str = "hotswap") -> Any:
    if not _configured:
        configure(os.environ.get("HOTSWAP_LOG_LEVEL", "warning"))
    return structlog.get_logger(name)


def environment() -> dict[str, str]:
    """Environment that makes a child hotswap process (a successor) log the way this one does."""
    return {"HOTSWAP_LOG_LEVEL": str(_settings["level"]), "HOTSWAP_LOG_JSON": "1" if _settings["json"] else "0"}


def configure_from_environment() -> None:
    configure(os.environ.get("HOTSWAP_LOG_LEVEL", "warning"), json=os.environ.get("HOTSWAP_LOG_JSON") == "1")
