"""Same-host live upgrade: the running VMM hands its guest (memfds, fds, state) to a successor process.

sender     the old VMM's side: start the successor, send CONFIG + fds, pause, send STATE, wait for RESUMED, exit
successor  the new VMM's side: build everything before the pause, restore, take the token, resume
ownership  the token that decides who runs the guest once STATE is out
layout     which fd is which in the CONFIG message
faults     test-only fault injection at each protocol step (HOTSWAP_FAULT)
exec_mode  `--mode exec`: the VMM re-executes itself, keeping its pid
"""
