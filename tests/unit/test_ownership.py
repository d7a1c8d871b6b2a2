"""The ownership token (protocol 3): exactly one of two processes ever takes it."""

from __future__ import annotations

import os
import subprocess
import sys

from hotswap.handover.ownership import OwnershipToken


def test_the_first_take_wins_and_every_later_one_fails() -> None:
    token = OwnershipToken.create()
    other = OwnershipToken(os.dup(token.fd))  # what the successor holds after SCM_RIGHTS: the same eventfd
    try:
        assert other.take()
        assert not token.take()
        assert not other.take()
    finally:
        token.close()
        other.close()
    token.close()  # closing twice is harmless
    assert token.fd == -1


def test_two_processes_racing_for_it_get_it_once() -> None:
    script = (
        "import sys; from hotswap.handover.ownership import OwnershipToken; "
        "print(int(OwnershipToken(int(sys.argv[1])).take()))"
    )
    for _ in range(20):
        token = OwnershipToken.create()
        children = [
            subprocess.Popen(
                [sys.executable, "-c", script, str(token.fd)], pass_fds=[token.fd], stdout=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        mine = token.take()
        outputs = [child.communicate(timeout=30)[0].strip() for child in children]
        token.close()
        assert [mine, *(out == "1" for out in outputs)].count(True) == 1, (mine, outputs)
