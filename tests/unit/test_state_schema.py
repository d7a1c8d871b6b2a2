"""check_fields, get_field and the top-level shape check."""

from __future__ import annotations

import pytest

from hotswap.state import StateSchemaError, check_fields, field_path, get_field, index_path, validate_tree
from hotswap.state.sample import sample_tree


def test_paths() -> None:
    assert field_path("", "vm") == "vm"
    assert field_path(index_path("vcpus", 1), "regs") == "vcpus[1].regs"


def test_check_fields_accepts_required_and_optional() -> None:
    d = {"a": 1, "b": 2}
    assert check_fields(d, {"a"}, {"b", "c"}, "x") is d


def test_unknown_field_is_named_with_its_path() -> None:
    with pytest.raises(StateSchemaError) as info:
        check_fields({"id": 0, "foo": 1}, {"id"}, set(), "vcpus[1]")
    assert str(info.value) == "unknown field 'vcpus[1].foo'"


def test_several_unknown_and_missing_fields_are_all_named() -> None:
    with pytest.raises(StateSchemaError) as info:
        check_fields({"x": 1, "y": 2}, {"a", "b"}, {"c"}, "vm")
    assert str(info.value) == "unknown fields 'vm.x', 'vm.y'; missing fields 'vm.a', 'vm.b'"


def test_missing_field_at_the_top_level() -> None:
    with pytest.raises(StateSchemaError, match=r"^missing field 'vcpus'$"):
        check_fields({}, {"vcpus"})


def test_check_fields_needs_a_dict() -> None:
    with pytest.raises(StateSchemaError, match=r"'devices.serial0' has type list, expected dict"):
        check_fields([], {"a"}, path="devices.serial0")


def test_get_field_checks_the_type() -> None:
    d: dict[str, object] = {"id": 3, "flag": True, "regs": b"x", "none": None}
    assert get_field(d, "id", int) == 3
    assert get_field(d, "flag", bool) is True
    assert get_field(d, "regs", bytes, "vcpus[0]") == b"x"
    with pytest.raises(StateSchemaError, match=r"field 'vcpus\[0\].flag' has type bool, expected int"):
        get_field(d, "flag", int, "vcpus[0]")
    with pytest.raises(StateSchemaError, match=r"field 'regs' has type bytes, expected str"):
        get_field(d, "regs", str)
    with pytest.raises(StateSchemaError, match=r"field 'none' has type None, expected int"):
        get_field(d, "none", int)
    with pytest.raises(StateSchemaError, match=r"missing field 'vm.clock'"):
        get_field(d, "clock", bytes, "vm")


def test_validate_tree_accepts_the_sample() -> None:
    tree = sample_tree(vcpus=2)
    assert validate_tree(tree) is tree


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.update(extra=1), "unknown field 'extra'"),
        (lambda t: t.pop("vm"), "missing field 'vm'"),
        (lambda t: t.update(machine=[]), "field 'machine' has type list, expected dict"),
        (lambda t: t.update(vcpus={}), "field 'vcpus' has type dict, expected list"),
        (lambda t: t["vcpus"].append(b"x"), "'vcpus[2]' has type bytes, expected dict"),
        (lambda t: t["devices"].update(serial1=5), "'devices.serial1' has type int, expected dict"),
    ],
)
def test_validate_tree_rejects_a_bad_top_level(edit: object, message: str) -> None:
    tree = sample_tree(vcpus=2)
    edit(tree)  # type: ignore[operator]
    with pytest.raises(StateSchemaError) as info:
        validate_tree(tree)
    assert str(info.value) == message


def test_validate_tree_needs_a_dict() -> None:
    with pytest.raises(StateSchemaError, match="the state tree has type list, expected dict"):
        validate_tree([])
