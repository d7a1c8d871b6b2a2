"""save_file / load_file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from hotswap.state import CURRENT_FORMAT, BadChecksumError, StateEncodeError, load_file, save_file
from hotswap.state.sample import sample_tree


def test_save_and_load(tmp_path: Path) -> None:
    tree = sample_tree(vcpus=2)
    path = tmp_path / "vm.state"
    save_file(path, tree)
    assert load_file(path) == (CURRENT_FORMAT, tree)
    assert os.listdir(tmp_path) == ["vm.state"]


def test_save_replaces_an_existing_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "vm.state"
    save_file(path, sample_tree(vcpus=4))
    save_file(path, sample_tree(vcpus=1, seed=3))
    assert load_file(str(path)).tree == sample_tree(vcpus=1, seed=3)


def test_a_failed_save_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "vm.state"
    save_file(path, sample_tree(vcpus=1))
    before = path.read_bytes()
    bad: Any = sample_tree(vcpus=1)
    bad["machine"]["ratio"] = 0.5
    with pytest.raises(StateEncodeError, match=r"machine\.ratio"):
        save_file(path, bad)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["vm.state"]


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "vm.state"
    save_file(path, sample_tree(vcpus=1))
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(BadChecksumError, match=rf"^{path}: state container: bad checksum"):
        load_file(path)


def test_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_file(tmp_path / "absent.state")
