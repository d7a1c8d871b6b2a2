"""Numbers from the virtio 1.x specification shared by the transport, the queues and the devices."""

from __future__ import annotations

from enum import IntEnum, IntFlag


class DeviceId(IntEnum):
    NET = 1
    BLOCK = 2
    RNG = 4


class Status(IntFlag):
    """Device status field (§2.1)."""

    ACKNOWLEDGE = 1
    DRIVER = 2
    DRIVER_OK = 4
    FEATURES_OK = 8
    DEVICE_NEEDS_RESET = 64
    FAILED = 128


class InterruptStatus(IntFlag):
    """virtio-mmio InterruptStatus bits (§4.2.2)."""

    USED_BUFFER = 1
    CONFIG_CHANGE = 2


# Transport-independent feature bits (§6).
F_INDIRECT_DESC = 28
F_EVENT_IDX = 29
F_VERSION_1 = 32


def bit(n: int) -> int:
    return 1 << n


# Every device here offers these: modern interface, indirect tables, event-index notification suppression.
COMMON_FEATURES = bit(F_VERSION_1) | bit(F_INDIRECT_DESC) | bit(F_EVENT_IDX)

U16_MASK = 0xFFFF
U32_MASK = 0xFFFF_FFFF
U64_MASK = 0xFFFF_FFFF_FFFF_FFFF
