"""virtio-net (virtio 1.x §5.1) over a tap fd opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR and a 12-byte vnet
header (see tap.py): the tap's header and the virtio 1.x virtio_net_hdr have the same layout, so frames move between
the tap and guest RAM with os.readv/os.writev on views of guest memory, header included, no copies.

Queues: 0 = receiveq, 1 = transmitq. No control queue, no offloads to the guest, one buffer per received frame.

Receive path: a frame is read from the tap only into a receive buffer the guest has already posted, so frames wait
in the tap's kernel queue (which outlives the VMM process, the fd travels on upgrade), never in Python memory.
poll_fds() therefore offers the tap fd only while receive buffers are available; when the guest posts new ones it
notifies queue 0, and the event loop asks poll_fds() again.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from typing import Any

from devices.errors import StateError
from devices.virtio.constants import COMMON_FEATURES, DeviceId, bit
from devices.virtio.device import VirtioDevice
from devices.virtio.queue import DescriptorChain
from devices.virtio.sglist import gather, scatter, segments, total_length, views
from devices.virtio.state import StateReader

log = logging.getLogger(__name__)

RX_QUEUE = 0
TX_QUEUE = 1
DEFAULT_QUEUE_SIZE = 256
RX_BUDGET = 256  # frames per call, so one busy tap cannot starve the rest of the event loop

F_CSUM = 0
F_MAC = 5
F_STATUS = 16
S_LINK_UP = 1

HDR_F_NEEDS_CSUM = 1
GSO_NONE = 0
_HDR = struct.Struct("<BBHHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers
VNET_HDR_SIZE = _HDR.size
# What the guest sees in front of every received frame: no checksum/GSO information (GUEST_CSUM and the GUEST_*
# offloads are not offered) and num_buffers = 1 (no VIRTIO_NET_F_MRG_RXBUF). The tap writes only the first 10 bytes.
RX_HEADER = _HDR.pack(0, GSO_NONE, 0, 0, 0, 0, 1)

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


def parse_mac(text: str) -> bytes:
    if not _MAC_RE.match(text):
        raise ValueError(f"virtio-net: {text!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
    return bytes(int(part, 16) for part in text.split(":"))


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def random_mac() -> bytes:
    """A random locally administered unicast address."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFE) | 0x02
    return bytes(raw)


class VirtioNet(VirtioDevice):
    device_id = DeviceId.NET
    name = "virtio-net"

    def __init__(
        self, tap_fd: int, mac: str | None = None, *, offer_csum: bool = True, queue_size: int = DEFAULT_QUEUE_SIZE
    ) -> None:
        """Serve the tap open on `tap_fd` (the device owns the fd from now on: close() closes it). The fd is made
        non-blocking. Without `mac` a random locally administered address is used."""
        super().__init__([queue_size, queue_size])
        self.fd = tap_fd
        os.set_blocking(tap_fd, False)
        self.mac = parse_mac(mac) if mac is not None else random_mac()
        self.offer_csum = offer_csum
        self.rx_frames = 0
        self.tx_frames = 0
        self.rx_errors = 0
        self.tx_dropped = 0

    @property
    def device_features(self) -> int:
        features = COMMON_FEATURES | bit(F_MAC) | bit(F_STATUS)
        # CSUM: the guest may hand us frames with a partial checksum; the tap completes it.
        return features | bit(F_CSUM) if self.offer_csum else features

    def config_bytes(self) -> bytes:
        return self.mac + struct.pack("<HH", S_LINK_UP, 1)  # status, max_virtqueue_pairs

    # -- work ----------------------------------------------------------------------------------------------------
    def process_queue(self, index: int) -> None:
        if index == RX_QUEUE:
            self._receive()
        elif index == TX_QUEUE:
            self._transmit()

    def poll_fds(self) -> list[int]:
        rx = self.queue(RX_QUEUE) if self.active else None
        return [self.fd] if rx is not None and rx.active and rx.has_available() else []

    def on_fd_readable(self, fd: int) -> None:
        if fd == self.fd:
            self._receive()

    def recheck(self) -> None:
        self._transmit()
        self._receive()

    def _receive(self) -> None:
        queue = self.queue(RX_QUEUE)
        if not queue.active:
            return
        memory = self.memory()
        for _ in range(RX_BUDGET):
            chain = queue.pop()
            if chain is None:
                return
            if not self._usable(chain, writable=True):
                self.rx_errors += 1
                log.debug("virtio-net: receive buffer %d is not %d writable bytes or more", chain.head, VNET_HDR_SIZE)
                queue.add_used(chain.head, 0)
                continue
            buffers = views(memory, segments(chain.descriptors, 0, total_length(chain.descriptors)))
            try:
                received = os.readv(self.fd, buffers)
            except BlockingIOError:
                queue.unpop()  # nothing to read: the buffer stays with us for the next frame
                return
            except OSError as exc:
                queue.unpop()
                log.warning("virtio-net: reading the tap failed: %s", exc)
                return
            finally:
                for buffer in buffers:
                    buffer.release()
            if received < VNET_HDR_SIZE:
                self.rx_errors += 1
                queue.add_used(chain.head, 0)
                continue
            scatter(memory, chain.descriptors, 0, RX_HEADER)
            queue.add_used(chain.head, received)
            self.rx_frames += 1

    def _transmit(self) -> None:
        queue = self.queue(TX_QUEUE)
        if not queue.active:
            return
        memory = self.memory()
        while (chain := queue.pop()) is not None:
            if self._usable(chain, writable=False) and self._header_allowed(chain):
                buffers = views(memory, segments(chain.descriptors, 0, total_length(chain.descriptors)))
                try:
                    os.writev(self.fd, buffers)
                    self.tx_frames += 1
                except OSError as exc:  # a full or downed tap drops the frame, as a NIC would
                    self.tx_dropped += 1
                    log.debug("virtio-net: tap write failed: %s", exc)
                finally:
                    for buffer in buffers:
                        buffer.release()
            else:
                self.tx_dropped += 1
            queue.add_used(chain.head, 0)

    @staticmethod
    def _usable(chain: DescriptorChain, *, writable: bool) -> bool:
        """All buffers in the expected direction, and room for at least the header."""
        return all(d.writable == writable for d in chain.descriptors) and (
            total_length(chain.descriptors) >= VNET_HDR_SIZE
        )

    def _header_allowed(self, chain: DescriptorChain) -> bool:
        """Refuse what was not negotiated: GSO (never offered), partial checksums without VIRTIO_NET_F_CSUM."""
        flags, gso_type = gather(self.memory(), chain.descriptors, 0, 2)
        if gso_type != GSO_NONE:
            log.debug("virtio-net: dropped a frame with gso_type %d", gso_type)
            return False
        if flags & HDR_F_NEEDS_CSUM and not self.features & bit(F_CSUM):
            log.debug("virtio-net: dropped a frame needing a checksum without VIRTIO_NET_F_CSUM")
            return False
        return True

    # -- state ---------------------------------------------------------------------------------------------------
    def save(self) -> dict[str, Any]:
        return {"mac": format_mac(self.mac), "offer_csum": self.offer_csum}

    def restore_state(self, state: object, where: str) -> None:
        """The guest knows its MAC address: the saved one is kept."""
        reader = StateReader(state, where)
        mac = reader.get_str("mac")
        offer_csum = reader.get_bool("offer_csum")
        reader.finish()
        try:
            self.mac = parse_mac(mac)
        except ValueError as exc:
            raise StateError(f"{where}: field 'mac': {exc}") from None
        self.offer_csum = offer_csum

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
