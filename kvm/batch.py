"""`IoctlBatch`: a fixed sequence of ioctls on one fd, run by one C call.

Built once, run many times: the arguments are buffers the caller owns and fills before each run. Used where every
microsecond of Python between ioctls counts (a vCPU's state inside the guest's pause window: ten ioctls, each
with a few us of interpreter work around it when called one by one). cffi releases the GIL for the call.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kvm._ffi import CData, ffi, lib
from kvm.errors import KvmError

ANY = -1  # a step that may return any non-negative value
ADVISORY = -2  # a step whose result, even an error, does not matter (nothing after it depends on it)


@dataclass(frozen=True)
class Step:
    request: int
    arg: CData
    name: str  # the ioctl's name, for errors: "KVM_SET_MSRS"
    expect: int = ANY  # the return value required (KVM_GET/SET_MSRS return how many MSRs they handled)
    short: Callable[[int], str] | None = None  # says what a short count (the value returned) means


class IoctlBatch:
    def __init__(self, fd: int, steps: Sequence[Step]) -> None:
        self.fd = fd
        self._names = [step.name for step in steps]
        self._expect = [step.expect for step in steps]
        self._short = [step.short for step in steps]
        self._args = [step.arg for step in steps]  # keeps every buffer alive as long as the batch
        self._count = len(steps)
        self._steps = ffi.new("struct hs_ioctl_step[]", self._count)
        for index, step in enumerate(steps):
            self._steps[index].request = step.request
            self._steps[index].arg = step.arg
            self._steps[index].expect = step.expect
        self._rc = ffi.new("int *")

    @property
    def steps(self) -> CData:
        """The C array of steps (`struct hs_ioctl_step[]`), for C code that runs the batch itself (hs_park)."""
        return self._steps

    @property
    def count(self) -> int:
        return self._count

    def run(self) -> None:
        """Run every step in order; KvmError names the first that failed (and nothing after it ran)."""
        self.check(lib.hs_ioctl_batch(self.fd, self._steps, self._count, self._rc), int(self._rc[0]))

    def check(self, done: int, rc: int) -> None:
        """Raise for the result of a run (C's: `done` steps succeeded, `rc` the last step's return or -errno)."""
        if done == self._count:
            return
        name = self._names[done]
        if rc < 0:
            raise KvmError(name, -rc)
        short = self._short[done]
        raise KvmError(name, errno.EINVAL, short(rc) if short else f"handled {rc} of {self._expect[done]} entries")
