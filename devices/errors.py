"""The devices package's exception hierarchy."""

from __future__ import annotations


class DeviceError(Exception):
    """Base of every error a device model raises."""


class GuestMemoryError(DeviceError):
    """A guest-physical access fell outside guest RAM (the guest's fault, never a VMM crash)."""


class StateError(DeviceError):
    """A saved device state cannot be restored (wrong shape, unknown field, impossible value)."""
