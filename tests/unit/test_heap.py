"""heap.settle (hotswap/heap.py): what exists when a VMM is built is collected once and frozen, so later full
collections do not walk it."""

from __future__ import annotations

import gc

from hotswap import heap


def test_settle_freezes_what_exists_and_later_collections_skip_it() -> None:
    long_lived = [{"slot": index} for index in range(1000)]
    try:
        heap.settle()
        assert gc.get_freeze_count() >= len(long_lived)
        tracked = {id(obj) for obj in gc.get_objects()}  # what a collection would walk
        assert not any(id(obj) in tracked for obj in long_lived)
        garbage = [[]]
        garbage[0].append(garbage)  # a cycle made after the freeze is still collected
        del garbage
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()  # the rest of the test session keeps normal collection
