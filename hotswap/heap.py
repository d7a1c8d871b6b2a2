"""Keep Python's full garbage collections short in a running VMM.

A full (generation 2) collection walks every tracked object and holds the GIL throughout, and a vCPU thread needs
the GIL at each exit it handles: measured here, every successor ran one about a second after it resumed the
guest, 15-31 ms long (the imported modules and the machine), and the guest's exits waited for it. What exists
once a VMM is built lives as long as the VMM does, so it is collected once and frozen out of every later scan
(gc.freeze: the objects move to a permanent generation the collector skips); later collections only walk what
was allocated since.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Collect once and freeze what survives: before the guest runs here (a VMM before booting it, a successor
    before READY), where a collection costs the guest nothing."""
    gc.collect()
    gc.freeze()
