"""Compatibility across versions: an older hotswap hands its guest to the working tree's, the stored state file of
every format this build reads loads and restores, and `hotswap upgrade --all` reports on every VM.

An old build is installed from `git archive <commit>` into its own venv (`--system-site-packages` for cffi,
structlog and prctl) with its version stamped `<version>+g<commit>`, so the two builds can be told apart. The old VMM
runs from a directory outside the repository (so `-m hotswap` cannot pick up the working tree) and hands over with
`--exec` to a wrapper that runs the working tree's hotswap.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from framework.guest import REPO, guest_cmdline
from framework.vmm import GuestVm
from test_upgrade import assert_continues, vmm_pids

import hotswap
from hotswap.config import MachineConfig
from hotswap.machine.machine import Machine
from hotswap.machine.state_tree import machine_info_from_tree, vcpu_state_from_tree, vm_state_from_tree
from hotswap.state import FORMATS, UnsupportedVersionError, load_file

pytestmark = pytest.mark.kvm

# The earliest commit with a working `hotswap upgrade` (`git log`: hotswap/handover/ and hotswap/upgrade_cli.py
# arrive together here; the CLI named the command earlier, but it could not run).
FIRST_UPGRADE_COMMIT = "02c5a7e"
# The last build whose old VMM speaks protocol 2 (RESTORED/COMMIT); protocol 3 (the ownership token) follows it.
LAST_PROTOCOL_2_COMMIT = "4150543"
# The last build whose old VMM speaks protocol 3 (the whole state in STATE); protocol 4 (STATE_VCPUS) follows it.
LAST_PROTOCOL_3_COMMIT = "e177a83"
# The last build whose old VMM speaks protocol 4 (STATE_VCPUS); protocol 5 (the vCPU records) follows it.
LAST_PROTOCOL_4_COMMIT = "816d1cd"
PACKAGES = ("kvm", "devices", "hotswap")
MEM = "64M"


@dataclass(frozen=True)
class Stored:
    """A stored state file (tests/data/README.md says how each was made)."""

    version: int
    name: str
    sha256: str

    @property
    def path(self) -> Path:
        return REPO / "tests" / "data" / self.name


STORED = (
    Stored(1, "state-format1-testguest.hsstate", "06e9d14c0cf01c8e04438b6f8089070b20dface9da9e4f6d13246090775001a9"),
    Stored(2, "state-format2-testguest.hsstate", "59a5714258d23db6ac60561f0badbcb339991adfd32105e25f59dce37e92e274"),
)


class UpgradeRefused(AssertionError):
    """The upgrade did not happen (the guest stayed, safely, with the old VMM)."""


class NotInWheel(AssertionError):
    """Modules of the source tree that a plain (non-editable) install would not have."""


# -- old builds --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Build:
    commit: str
    python: Path
    version: str


def _git(*args: str) -> bytes:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, timeout=60).stdout


def install(commit: str, where: Path) -> Build:
    """`git archive` the commit, stamp its version, pip-install it into a venv of its own."""
    sha = _git("rev-parse", "--short", commit).decode().strip()
    source = where / "src"
    with tarfile.open(fileobj=io.BytesIO(_git("archive", sha))) as archive:
        archive.extractall(source, filter="data")
    pyproject = source / "pyproject.toml"
    text = pyproject.read_text()
    text, stamped = re.subn(r'^version = "([^"]+)"', rf'version = "\1+g{sha}"', text, count=1, flags=re.M)
    assert stamped == 1, f"{sha}: no version in pyproject.toml"
    # Builds before 0dde158 list only the top-level packages (see test_a_plain_install_has_every_module): install
    # every subpackage, or the old VMM would quietly import the working tree's through the editable install.
    text = text.replace(
        'packages = ["kvm", "devices", "hotswap"]\n',
        'packages = { find = { include = ["kvm*", "devices*", "hotswap*"] } }\n',
        1,
    )
    pyproject.write_text(text)
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", str(source)],
        check=True,
        capture_output=True,
        timeout=600,
        cwd=where,
    )
    probe = (
        "import importlib, json, pkgutil, sys\n"
        f"roots = [importlib.import_module(n) for n in {PACKAGES!r}]\n"
        "names = [m.name for r in roots for m in pkgutil.walk_packages(r.__path__, r.__name__ + '.')\n"
        "         if not m.name.endswith(('__main__', '_build'))]\n"
        "files = [importlib.import_module(n).__file__ for n in names]\n"
        "print(json.dumps({'version': roots[2].__version__, 'files': files}))\n"
    )
    found = json.loads(subprocess.run([str(python), "-c", probe], check=True, capture_output=True, cwd=where).stdout)
    strays = [f for f in found["files"] if not f.startswith(str(venv))]
    assert not strays, f"the {sha} venv imports modules from elsewhere: {strays[:5]}"
    return Build(sha, python, found["version"])


@pytest.fixture(scope="session")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Build]:
    made: dict[str, Build] = {}

    def get(commit: str) -> Build:
        if commit not in made:
            made[commit] = install(commit, tmp_path_factory.mktemp(f"build-{commit}"))
        return made[commit]

    return get


@pytest.fixture
def working_tree_hotswap(tmp_path: Path) -> Path:
    """What `--exec` starts: the working tree's hotswap, whatever directory the old VMM runs in."""
    script = tmp_path / "hotswap-working-tree"
    script.write_text(
        "#!/bin/sh\n"
        f'export PYTHONPATH={shlex.quote(str(REPO))}"${{PYTHONPATH:+:$PYTHONPATH}}"\n'
        f'exec {shlex.quote(sys.executable)} -m hotswap "$@"\n'
    )
    script.chmod(0o755)
    return script


def start_with(build: Build, vm: GuestVm, kernel: Path, cpus: int, outside: Path, *extra: str) -> None:
    """`hotswap run --daemon` with the old build, from a directory where `-m hotswap` finds only that build."""
    options = ["--kernel", str(kernel), "--cmdline", guest_cmdline(ws="8M", status_ms=50), "--cpus", str(cpus)]
    options += ["--mem", MEM, "--name", vm.name, "--console-log", str(vm.console), *extra]
    result = subprocess.run(
        [str(build.python), "-m", "hotswap", "run", "--daemon", "--json", *options],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=outside,
        env={**os.environ, **vm.env},
    )
    assert result.returncode == 0, f"{build.commit} could not start the guest: {result.stderr}"
    vm.pid = json.loads(result.stdout)["pid"]


# -- an old VMM hands over to the working tree -------------------------------------------------------------------
@pytest.mark.parametrize(
    "commit",
    [
        pytest.param(FIRST_UPGRADE_COMMIT, id="first-upgrade-build"),
        pytest.param(LAST_PROTOCOL_2_COMMIT, id="last-protocol-2-build"),
        pytest.param(LAST_PROTOCOL_3_COMMIT, id="last-protocol-3-build"),
        pytest.param(LAST_PROTOCOL_4_COMMIT, id="last-protocol-4-build"),
        pytest.param("HEAD", id="last-commit"),
    ],
)
def test_an_old_vmm_hands_its_guest_to_the_working_tree(
    commit: str,
    builds: Callable[[str], Build],
    vm: GuestVm,
    guest_elf: Path,
    working_tree_hotswap: Path,
    tmp_path: Path,
) -> None:
    build = builds(commit)
    assert build.version != hotswap.__version__
    start_with(build, vm, guest_elf, 2, tmp_path)
    old_pid = vm.pid
    assert vm.info()["version"] == build.version  # the working tree's CLI reads the old VMM's API
    before = vm.wait_statuses(3)
    result = vm.cli("upgrade", vm.name, "--json", "--exec", str(working_tree_hotswap), check=False)
    if result.returncode != 0:
        # Whatever the versions disagree on, the old VMM must keep the guest.
        assert vmm_pids(vm) == [old_pid], "a refused upgrade must leave the guest with the old VMM"
        assert_continues(vm, before)
        raise UpgradeRefused(result.stderr.strip())
    data = json.loads(result.stdout)
    assert (data["old_pid"], data["old_version"], data["new_version"]) == (old_pid, build.version, hotswap.__version__)
    assert vmm_pids(vm) == [data["new_pid"]]
    info = vm.info()
    assert (info["pid"], info["version"], info["generation"]) == (data["new_pid"], hotswap.__version__, 2)
    seen = assert_continues(vm, before)
    again = vm.upgrade()  # and the new VMM upgrades like any other
    assert again["generation"] == 3 and vmm_pids(vm) == [again["new_pid"]]
    assert_continues(vm, seen)


def test_an_old_vmm_hands_its_tap_to_the_working_tree(
    builds: Callable[[str], Build],
    vm: GuestVm,
    guest_elf: Path,
    working_tree_hotswap: Path,
    tmp_path: Path,
    tap: str,
) -> None:
    """A build from before `--net fd=N` sends nets as tap and mac only; the working tree reads that config and
    compares it with the one in the state as equal (its own dict for a tap opened by name is the same)."""
    build = builds(LAST_PROTOCOL_2_COMMIT)
    start_with(build, vm, guest_elf, 1, tmp_path, "--net", f"tap={tap}")
    nets = vm.info()["config"]["nets"]
    assert nets == [{"tap": tap, "mac": "52:54:00:12:34:56"}]
    before = vm.wait_statuses(3)
    data = vm.upgrade("--exec", str(working_tree_hotswap))
    assert data["new_version"] == hotswap.__version__
    assert vm.info()["config"]["nets"] == nets
    assert_continues(vm, before)
    vm.upgrade()  # and the working tree hands the same config on to itself
    assert vm.info()["config"]["nets"] == nets


COMPILED = ("kvm/_kvm_cffi.", "hotswap/state/_fastcodec.")


def test_a_plain_install_has_every_module(tmp_path: Path) -> None:
    """What an apt hook or a release installs is a wheel, not the editable checkout the tests run from."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        (source / name).write_bytes((REPO / name).read_bytes())
    wanted = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")) + sorted((REPO / package).rglob("*.c")):
            relative = path.relative_to(REPO)
            if path.suffix == ".py":
                wanted.append(relative.as_posix())
            (source / relative).parent.mkdir(parents=True, exist_ok=True)
            (source / relative).write_bytes(path.read_bytes())
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps", "-w", "dist", str(source)],
        check=True,
        capture_output=True,
        timeout=600,
        cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "dist").glob("hotswap-*.whl")
    present = set(zipfile.ZipFile(wheel).namelist())
    missing = [name for name in wanted if name not in present]
    # and the compiled modules: the KVM bindings, and the state codec's C part (without it every handover takes
    # the slower Python codec)
    missing += [prefix for prefix in COMPILED if not any(name.startswith(prefix) for name in present)]
    if missing:
        raise NotInWheel(f"{len(missing)} of {len(wanted)} modules are not in the wheel, e.g. {missing[:6]}")


# -- the stored state files, one per format ------------------------------------------------------------------------
def stored_params() -> list[object]:
    return [pytest.param(stored, id=f"format{stored.version}") for stored in STORED]


def test_every_format_this_build_reads_has_a_stored_file() -> None:
    """Adding format N means storing a file written by the build that writes N (tests/data/README.md)."""
    assert FORMATS.readable <= {stored.version for stored in STORED}


@pytest.mark.parametrize("stored", stored_params())
def test_the_stored_file_is_unchanged(stored: Stored) -> None:
    """Never regenerated: a new format gets a new file."""
    blob = stored.path.read_bytes()
    assert hashlib.sha256(blob).hexdigest() == stored.sha256
    assert blob[:8] == b"HSVMSTAT" and int.from_bytes(blob[8:10], "little") == stored.version


@pytest.mark.parametrize("stored", stored_params())
def test_the_current_build_loads_the_stored_file(stored: Stored) -> None:
    if stored.version not in FORMATS.readable:  # N-2 and older: refused, saying what this build reads
        with pytest.raises(UnsupportedVersionError, match=r"format version \d+ is not supported \(this build reads"):
            load_file(stored.path)
        return
    loaded = load_file(stored.path)
    assert loaded.version == stored.version
    tree: dict[str, Any] = loaded.tree
    config = MachineConfig.from_dict(tree["machine"]["config"])
    assert (config.cpus, config.mem_size, len(tree["vcpus"])) == (2, 64 * 1024 * 1024, 2)
    assert b"hsg: status seq=" in tree["devices"]["console"]["state"]["history"]


def readable_tree(stored: Stored) -> dict[str, Any]:
    if stored.version not in FORMATS.readable:
        pytest.skip(f"this build no longer reads format {stored.version}")
    tree: dict[str, Any] = load_file(stored.path).tree
    return tree


@pytest.mark.parametrize("stored", stored_params())
def test_every_part_of_the_stored_file_parses(stored: Stored) -> None:
    tree = readable_tree(stored)
    config, generation, _booted = machine_info_from_tree(tree["machine"])
    MachineConfig.from_dict(config)
    assert generation == 1
    vm_state_from_tree(tree["vm"])
    for index, vcpu in enumerate(tree["vcpus"]):
        vcpu_state_from_tree(vcpu, index)


@pytest.fixture
def fresh_machine(guest_elf: Path, tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], Machine]]:
    """A fresh machine built from a stored tree's config, with today's test guest and fresh host paths (the tree's
    config is changed to match)."""
    made: list[Machine] = []

    def build(tree: dict[str, Any]) -> Machine:
        config = replace(
            MachineConfig.from_dict(tree["machine"]["config"]),
            kernel=str(guest_elf),
            console_log=str(tmp_path / "console.log"),
            api_socket=str(tmp_path / "api.sock"),
            console_socket=str(tmp_path / "console.sock"),
        )
        config.validate()
        tree["machine"]["config"] = config.to_dict()
        made.append(Machine.create(config))
        return made[-1]

    try:
        yield build
    finally:
        for machine in made:
            machine.console.close(unlink=machine.config.console_socket)
            machine.shutdown()


@pytest.mark.parametrize("stored", stored_params())
def test_the_stored_file_restores_into_a_fresh_machine(
    stored: Stored, fresh_machine: Callable[[dict[str, Any]], Machine]
) -> None:
    """Every vCPU, VM and device ioctl accepts the stored state (the guest is not run: its RAM is not stored)."""
    tree = readable_tree(stored)
    machine = fresh_machine(tree)
    machine.restore_state(tree)
    for thread, saved in zip(machine.vcpu_threads, tree["vcpus"], strict=True):
        assert thread.vcpu.get_regs().rip == int.from_bytes(saved["regs"][128:136], "little")  # kvm_regs.rip


# -- hotswap upgrade --all ---------------------------------------------------------------------------------------
@pytest.fixture
def two_vms(run_dir: Path) -> Iterator[Callable[[str], tuple[GuestVm, GuestVm]]]:
    made: list[GuestVm] = []

    def make(fault_for_b: str = "") -> tuple[GuestVm, GuestVm]:
        a = GuestVm(run_dir, name="a")
        b = GuestVm(run_dir, name="b", env={"HOTSWAP_FAULT": fault_for_b} if fault_for_b else None)
        made.extend((a, b))
        return a, b

    try:
        yield make
    finally:
        for machine in made:
            machine.kill()


def test_upgrade_all_upgrades_every_vm(two_vms: Callable[..., tuple[GuestVm, GuestVm]], guest_elf: Path) -> None:
    a, b = two_vms()
    for machine in (a, b):
        machine.start(guest_elf, guest_cmdline(ws="8M", status_ms=50), 1, MEM)
    before = {m.name: m.wait_statuses(2) for m in (a, b)}
    old = {m.name: m.pid for m in (a, b)}

    same = a.cli("upgrade", "--all")  # both already run this version
    assert same.stdout.strip().splitlines() == ["0 upgraded, 2 skipped, 0 failed"]

    result = a.cli("upgrade", "--all", "--force")
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3, result.stdout
    for line, name in zip(lines[:2], ("a", "b"), strict=True):
        assert line.startswith(f"upgraded {name}: pid {old[name]} -> "), line
        assert "generation 2" in line and "downtime" in line
    assert lines[2] == "2 upgraded, 0 skipped, 0 failed"
    for machine in (a, b):
        machine.info()
        assert machine.pid != old[machine.name] and vmm_pids(machine) == [machine.pid]
        assert_continues(machine, before[machine.name])


def test_upgrade_all_says_which_vm_failed(two_vms: Callable[..., tuple[GuestVm, GuestVm]], guest_elf: Path) -> None:
    # A fault fires once: the first --all meets the successor's, the second the sender's (its step comes later).
    a, b = two_vms(fault_for_b="successor@2:after_hello:kill,sender@1:state:corrupt")
    for machine in (a, b):
        machine.start(guest_elf, guest_cmdline(ws="8M", status_ms=50), 1, MEM)
    before = {m.name: m.wait_statuses(2) for m in (a, b)}
    b_pid = b.pid

    result = a.cli("upgrade", "--all", "--force", check=False)
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3, result.stdout
    assert lines[0].startswith("upgraded a: ")
    assert lines[1].startswith(f"FAILED b: upgrade failed, the guest keeps running in pid {b_pid}: "), lines[1]
    assert lines[2] == "1 upgraded, 0 skipped, 1 failed"
    assert "Traceback" not in result.stderr

    as_json = a.cli("upgrade", "--all", "--force", "--json", check=False)
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert (report["upgraded"], report["skipped"], report["failed"]) == (1, 0, 1)
    outcomes = {o["name"]: o for o in report["outcomes"]}
    assert outcomes["a"]["outcome"] == "upgraded" and outcomes["a"]["result"]["generation"] == 3
    assert outcomes["b"]["outcome"] == "failed" and f"pid {b_pid}" in outcomes["b"]["error"]

    assert b.info()["pid"] == b_pid and vmm_pids(b) == [b_pid]
    assert a.info()["generation"] == 3 and vmm_pids(a) == [a.pid]
    for machine in (a, b):
        assert_continues(machine, before[machine.name])
