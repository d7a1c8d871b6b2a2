"""The Python types a state tree is made of."""

from __future__ import annotations

from typing import TypeAlias

# A state tree holds only these. Ints may be of any size (64-bit is the common case); there are no floats.
StateValue: TypeAlias = "bool | int | bytes | str | list[StateValue] | dict[str, StateValue] | None"
StateDict: TypeAlias = "dict[str, StateValue]"
