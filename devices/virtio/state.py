"""Strict reading of saved device state: every field must be present with the right type, and no field may be
left over (a field the receiver does not understand is an error, never silently dropped)."""

from __future__ import annotations

from collections.abc import Mapping

from devices.errors import StateError


class StateReader:
    """Reads the fields of one saved dict; `finish()` rejects the fields nobody asked for."""

    def __init__(self, state: object, where: str) -> None:
        if not isinstance(state, Mapping):
            raise StateError(f"{where}: expected a dict, got {type(state).__name__}")
        self._state: Mapping[object, object] = state
        self._where = where
        self._seen: set[str] = set()

    def _get(self, name: str) -> object:
        if name not in self._state:
            raise StateError(f"{self._where}: missing field '{name}'")
        self._seen.add(name)
        return self._state[name]

    def _wrong(self, name: str, expected: str, value: object) -> StateError:
        return StateError(f"{self._where}: field '{name}' must be {expected}, got {value!r}")

    def get_int(self, name: str, lo: int = 0, hi: int = (1 << 64) - 1) -> int:
        value = self._get(name)
        # bool is an int subclass; a saved True where a number belongs is a malformed state.
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise self._wrong(name, f"an integer in [{lo}, {hi}]", value)
        return value

    def get_bool(self, name: str) -> bool:
        value = self._get(name)
        if not isinstance(value, bool):
            raise self._wrong(name, "a bool", value)
        return value

    def get_str(self, name: str) -> str:
        value = self._get(name)
        if not isinstance(value, str):
            raise self._wrong(name, "a string", value)
        return value

    def get_list(self, name: str) -> list[object]:
        value = self._get(name)
        if not isinstance(value, list):
            raise self._wrong(name, "a list", value)
        return value

    def get_raw(self, name: str) -> object:
        """A nested value handed to another reader (e.g. a sub-dict)."""
        return self._get(name)

    def where(self, name: str) -> str:
        """The location string for a nested field, for nested readers' messages."""
        return f"{self._where}.{name}"

    def finish(self) -> None:
        unknown = sorted(str(key) for key in self._state if key not in self._seen)
        if unknown:
            raise StateError(
                f"{self._where}: unknown field '{unknown[0]}'" + (f" (and {unknown[1:]})" if unknown[1:] else "")
            )
