"""A base for device state records: frozen dataclasses of plain values with a strict dict form.

The VMM's versioned state codec carries devices as dicts of plain types. `from_dict` is the gate every saved
device state passes on its way back in, so it refuses anything it does not understand (an unknown field, a
missing one, a value of the wrong type) with a StateError that names the device and the field, instead of
guessing.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from devices.errors import StateError


@dataclasses.dataclass(frozen=True)
class DeviceState:
    """Base of a device's saved state. Subclasses are frozen dataclasses whose fields are plain types (int,
    bool, bytes, str) or plain containers (list[...], dict[...]); a container is checked by its outer type
    only, so a subclass's __post_init__ checks the elements."""

    DEVICE: ClassVar[str] = "device"  # names the device in error messages

    def to_dict(self) -> dict[str, object]:
        """The state as a dict of plain values, keyed by field name."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Self:
        """Rebuild a state from `to_dict()` output; unknown, missing or mistyped fields raise StateError."""
        if not isinstance(data, Mapping):
            raise StateError(f"{cls.DEVICE} state: expected a mapping, got {type(data).__name__}")
        hints = _field_types(cls)
        for name in data:
            if name not in hints:
                raise StateError(f"{cls.DEVICE} state: unknown field {name!r}")
        values: dict[str, Any] = {}
        for name, expected in hints.items():
            if name not in data:
                raise StateError(f"{cls.DEVICE} state: missing field {name!r}")
            value = data[name]
            # Exact type: bool is an int subclass, and a bool where a register belongs is a codec bug.
            if type(value) is not expected:
                raise StateError(
                    f"{cls.DEVICE} state: field {name!r} must be {expected.__name__}, got {type(value).__name__}"
                )
            values[name] = value
        return cls(**values)


_FIELD_TYPES: dict[type, dict[str, type]] = {}


def _field_types(cls: type[DeviceState]) -> dict[str, type]:
    # Cached: get_type_hints evaluates annotations on every call (~50-90 us), and from_dict runs inside the
    # guest's pause window during a live upgrade.
    cached = _FIELD_TYPES.get(cls)
    if cached is None:
        cached = _FIELD_TYPES[cls] = _evaluate_field_types(cls)
    return cached


def _evaluate_field_types(cls: type[DeviceState]) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    # list[int] is checked as list: the codec hands back plain containers.
    return {field.name: typing.get_origin(hints[field.name]) or hints[field.name] for field in dataclasses.fields(cls)}


def check_u8(device: str, name: str, value: int) -> None:
    """Refuse a register value that does not fit in a byte (for __post_init__ validation)."""
    if not 0 <= value <= 0xFF:
        raise StateError(f"{device} state: field {name!r} out of range 0..255: {value}")
