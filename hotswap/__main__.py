import sys

if "upgrade" in sys.argv[1:]:  # first, before the imports below (hotswap/upgrade_placement.py says why)
    from hotswap.upgrade_placement import place_early

    place_early(sys.argv[1:])

from hotswap.cli import main

status = main()
if "upgrade" in sys.argv[1:]:  # it ends a few ms after the guest resumed: no teardown to compete with it
    from hotswap.quick_exit import leave_at_once

    leave_at_once(status)
sys.exit(status)
