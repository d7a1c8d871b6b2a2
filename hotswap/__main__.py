import sys

if "upgrade" in sys.argv[1:]:  # first, before the imports below (hotswap/upgrade_placement.py says why)
    from hotswap.upgrade_placement import place_early

    place_early(sys.argv[1:])

from hotswap.cli import main

sys.exit(main())
