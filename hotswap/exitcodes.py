"""Exit statuses of hotswap commands and of the VMM process."""

OK = 0  # command succeeded; a VMM whose guest powered off or reset
ERROR = 1  # the command or the VMM failed (bad input, KVM error, upgrade failed)
USAGE = 2  # command-line syntax error (argparse's convention)
GUEST_FAILURE = 3  # the guest stopped on an error the VMM cannot continue from (emulation failure, ...)

STOP_KIND_EXIT = {"poweroff": OK, "reset": OK, "failure": GUEST_FAILURE}
