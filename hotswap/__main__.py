"""`python -m hotswap` and the installed `hotswap` command (pyproject.toml's console script): both come here.

For `hotswap upgrade`, two things happen outside cli.main: the command places itself before it imports the rest of
hotswap (hotswap/upgrade_placement.py says why), and it ends without the interpreter's teardown, which would
otherwise run a few ms after the guest resumed in the successor (hotswap/quick_exit.py says why).
"""

import sys
from typing import NoReturn


def run() -> NoReturn:
    upgrading = "upgrade" in sys.argv[1:]
    if upgrading:  # first, before the imports below
        from hotswap.upgrade_placement import place_early

        place_early(sys.argv[1:])

    from hotswap.cli import main

    status = main()
    if upgrading:
        from hotswap.quick_exit import leave_at_once

        leave_at_once(status)
    sys.exit(status)


if __name__ == "__main__":
    run()
