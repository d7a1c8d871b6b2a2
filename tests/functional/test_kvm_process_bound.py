"""Why every upgrade builds a fresh VM: KVM ties a VM and its vCPUs to the process (mm) that created them, so a
successor cannot take over the old VMM's VM fds (shared/DESIGN.md). Checked on the real /dev/kvm, because
bench.upgrade --floor rests on it: the least an upgrade can cost the guest is a move to a fresh VM."""

from __future__ import annotations

import errno
import os

import pytest

from hotswap.machine.platform import Platform
from kvm import KvmError, vm_state

pytestmark = pytest.mark.kvm


def _in_child(action: str, platform: Platform) -> int:
    """Run one KVM call on the inherited fds in a forked child (another mm); its errno, or 0 if it worked."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            if action == "vcpu":
                platform.vcpus[0].get_regs()
            else:
                vm_state.capture(platform.vm)
        except KvmError as exc:
            code = exc.errno
        except BaseException:
            code = 255
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.parametrize("action", ["vcpu", "vm"])
def test_another_process_cannot_use_a_vms_fds(platform: Platform, action: str) -> None:
    platform.vcpus[0].get_regs()  # works here
    assert _in_child(action, platform) == errno.EIO
    platform.vcpus[0].get_regs()  # and still here
