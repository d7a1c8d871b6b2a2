"""Parsing and printing of sizes and durations as users type them."""

from __future__ import annotations

import re

from hotswap.errors import ConfigError

_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(i?B?)?\s*$", re.IGNORECASE)
_MULTIPLIERS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str, default_unit: str = "M") -> int:
    """'512M', '2G', '1048576' (bytes when no unit and default_unit is ''), '4GiB' -> bytes."""
    match = _SIZE.match(text)
    if not match:
        raise ConfigError(f"invalid size {text!r}: expected a number with an optional K, M, G or T suffix")
    number, unit = int(match.group(1)), match.group(2).upper()
    if not unit and match.group(3) is None:
        unit = default_unit.upper()
    return number * _MULTIPLIERS[unit]


def format_size(size: int) -> str:
    for unit in ("T", "G", "M", "K"):
        multiplier = _MULTIPLIERS[unit]
        if size >= multiplier and size % multiplier == 0:
            return f"{size // multiplier}{unit}"
    return str(size)


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
