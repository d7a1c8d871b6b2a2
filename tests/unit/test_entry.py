"""The installed `hotswap` command and `python -m hotswap` take the same way in (hotswap/__main__.py): an upgrade
command places itself first and ends without the interpreter's teardown; every other command ends normally."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# An atexit handler shows whether the interpreter's teardown ran.
PROGRAM = """
import atexit, sys
atexit.register(lambda: print("teardown ran"))
sys.argv = ["hotswap", *sys.argv[1:]]
from hotswap.__main__ import run
run()
"""


def command(*argv: str, run_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {"HOTSWAP_RUN_DIR": str(run_dir), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", PROGRAM, *argv], capture_output=True, text=True, timeout=60, env=env)


def test_the_console_script_is_the_same_entry_as_python_dash_m() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["hotswap"] == "hotswap.__main__:run"


def test_an_upgrade_command_ends_without_teardown(tmp_path: Path) -> None:
    result = command("upgrade", "--pid", "999999", run_dir=tmp_path)
    assert result.returncode != 0 and "999999" in result.stderr  # its error still reaches the user
    assert "teardown ran" not in result.stdout


def test_other_commands_end_normally(tmp_path: Path) -> None:
    result = command("ls", run_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "teardown ran" in result.stdout
