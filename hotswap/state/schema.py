"""State format versions, the N-1 -> N upgrade registry, and shape checks for state trees.

Three version numbers are separate: the wire protocol version (hotswap.wire), the state format version (here) and
the package version. A build reads exactly its current state format and the one before it; the previous format is
turned into the current one by one upgrade function. To add format N: set CURRENT_FORMAT = N, register one
function with `@FORMATS.upgrader(N)` that turns a format N-1 tree into a format N tree, and store a format N-1
state file from a real guest in tests/data/ so the upgrade stays tested.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from typing import TypeVar

from hotswap.state.errors import StateError, StateSchemaError, StateUpgradeError, UnsupportedVersionError
from hotswap.state.types import StateDict

CURRENT_FORMAT = 2  # 2: vCPU MSRs as raw kvm_msr_entry arrays (hotswap/state/upgrades.py)

TOP_LEVEL_FIELDS = frozenset({"machine", "vm", "vcpus", "devices"})

Upgrade = Callable[[StateDict], StateDict]
T = TypeVar("T")


class FormatRegistry:
    """The state formats one build reads: `current`, and `current - 1` if an upgrade to `current` is registered."""

    def __init__(self, current: int, upgrades: Mapping[int, Upgrade] | None = None) -> None:
        self.current = current
        self._upgrades: dict[int, Upgrade] = dict(upgrades or {})  # key N: turns a format N-1 tree into N

    @property
    def readable(self) -> frozenset[int]:
        if self.current in self._upgrades:
            return frozenset({self.current - 1, self.current})
        return frozenset({self.current})

    def upgrader(self, version: int) -> Callable[[Upgrade], Upgrade]:
        """Decorator: register the function that upgrades a format `version - 1` tree to format `version`."""

        def register(function: Upgrade) -> Upgrade:
            if version in self._upgrades:
                raise ValueError(f"state format: an upgrade to format {version} is already registered")
            self._upgrades[version] = function
            return function

        return register

    def upgrade(self, tree: StateDict, version: int) -> StateDict:
        """Bring a tree stored in format `version` to the current format."""
        if version == self.current:
            return tree
        if version not in self.readable:
            raise UnsupportedVersionError(version, self.readable)
        try:
            return self._upgrades[self.current](tree)
        except StateUpgradeError:
            raise
        except (StateError, KeyError, TypeError, ValueError) as err:
            detail = f"{type(err).__name__}: {err}" if not isinstance(err, StateError) else str(err)
            raise StateUpgradeError(f"state upgrade {version} -> {self.current} failed: {detail}") from err


# The shipping registry; its upgrade functions live in hotswap/state/upgrades.py.
FORMATS = FormatRegistry(CURRENT_FORMAT)


def field_path(path: str, key: str) -> str:
    """`vcpus[1]` + `regs` -> `vcpus[1].regs`; the top level has the empty path."""
    return f"{path}.{key}" if path else key


def index_path(path: str, index: int) -> str:
    """`vcpus` + 1 -> `vcpus[1]`."""
    return f"{path}[{index}]"


def _describe(path: str) -> str:
    return f"'{path}'" if path else "the state tree"


def _type_name(value: object) -> str:
    return "None" if value is None else type(value).__name__


def check_fields(
    d: object, required: AbstractSet[str], optional: AbstractSet[str] = frozenset(), path: str = ""
) -> StateDict:
    """Check that `d` is a dict holding every `required` field, and no field outside `required | optional`.

    A field the reader does not understand is an error, never silently dropped. Returns `d`, typed.
    """
    if not isinstance(d, dict):
        raise StateSchemaError(f"{_describe(path)} has type {_type_name(d)}, expected dict")
    problems = []
    unknown = sorted(k for k in d if k not in required and k not in optional)
    if unknown:
        names = ", ".join(f"'{field_path(path, k)}'" for k in unknown)
        problems.append(f"unknown field{'s' if len(unknown) > 1 else ''} {names}")
    missing = sorted(k for k in required if k not in d)
    if missing:
        names = ", ".join(f"'{field_path(path, k)}'" for k in missing)
        problems.append(f"missing field{'s' if len(missing) > 1 else ''} {names}")
    if problems:
        raise StateSchemaError("; ".join(problems))
    return d


def get_field(d: Mapping[str, object], key: str, kind: type[T], path: str = "") -> T:
    """`d[key]`, checked to be a `kind` (a bool is not accepted as an int)."""
    if key not in d:
        raise StateSchemaError(f"missing field '{field_path(path, key)}'")
    value = d[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise StateSchemaError(
            f"field '{field_path(path, key)}' has type {_type_name(value)}, expected {kind.__name__}"
        )
    return value


def validate_tree(tree: object) -> StateDict:
    """Check the top level of a current-format tree: machine, vm, vcpus and devices, and their types.

    The VMM and the devices check what is inside each part.
    """
    top = check_fields(tree, TOP_LEVEL_FIELDS)
    get_field(top, "machine", dict)
    get_field(top, "vm", dict)
    for index, vcpu in enumerate(get_field(top, "vcpus", list)):
        if not isinstance(vcpu, dict):
            raise StateSchemaError(f"'{index_path('vcpus', index)}' has type {_type_name(vcpu)}, expected dict")
    for name, device in get_field(top, "devices", dict).items():
        if not isinstance(device, dict):
            raise StateSchemaError(f"'{field_path('devices', name)}' has type {_type_name(device)}, expected dict")
    return top
