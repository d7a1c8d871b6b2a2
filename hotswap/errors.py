"""The hotswap package's exception hierarchy. Every message is one line a user can act on."""

from __future__ import annotations


class HotswapError(Exception):
    """Base of every error the VMM reports to a user."""


class ConfigError(HotswapError):
    """The requested machine cannot be built as asked (bad size, too many vCPUs, missing file, name in use)."""


class GuestFailure(HotswapError):
    """The guest stopped in a way the VMM cannot continue from (emulation failure, triple fault, entry failure)."""


class ApiError(HotswapError):
    """A control-API request failed; `status` is the HTTP status the server answered."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


class UpgradeError(HotswapError):
    """A live upgrade did not happen; the old VMM still runs the guest."""
