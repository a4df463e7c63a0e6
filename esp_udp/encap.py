"""RFC 3948 UDP encapsulation: what arrives on the shared UDP port, and what to send.

How this works: IKE and ESP share one UDP port (4500). A datagram is

* exactly one byte 0xFF — a NAT-keepalive (RFC 3948 §2.3), ignored on receipt;
* four zero bytes (the non-ESP marker, §2.2) then an IKE message — handed to IKE with the
  marker stripped;
* otherwise an ESP packet whose first four bytes are its (non-zero) SPI (§2.1).

:class:`KeepaliveTimer` decides when a keepalive is due: after ``interval`` seconds
(20 s, RFC 3948 §4) in which nothing was sent to the peer. Sans-I/O: ``now`` is a
parameter.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from esp_udp.errors import DecodeError, DropReason

NON_ESP_MARKER = b"\x00\x00\x00\x00"
KEEPALIVE = b"\xff"
KEEPALIVE_INTERVAL = 20.0
_SPI = struct.Struct("!I")
ESP_MIN = 8  # SPI + sequence number; the SA checks the full minimum


class Kind(IntEnum):
    KEEPALIVE = 1
    IKE = 2
    ESP = 3


def classify(datagram: bytes | bytearray | memoryview) -> Kind:
    """The kind of a datagram received on the shared port (DecodeError if none)."""
    n = len(datagram)
    if n == 1 and datagram[0] == 0xFF:
        return Kind.KEEPALIVE
    if n < 4:
        raise DecodeError(f"{n}-byte datagram is neither a keepalive, IKE nor ESP",
                          DropReason.TRUNCATED)
    if datagram[0] == 0 and datagram[1] == 0 and datagram[2] == 0 and datagram[3] == 0:
        if n == 4:
            raise DecodeError("non-ESP marker without an IKE message", DropReason.TRUNCATED)
        return Kind.IKE
    if n < ESP_MIN:
        raise DecodeError(f"{n}-byte datagram is too short for ESP", DropReason.TRUNCATED)
    return Kind.ESP


def esp_spi(datagram: bytes | bytearray | memoryview) -> int:
    """The SPI of a datagram :func:`classify` called ESP."""
    if len(datagram) < 4:
        raise DecodeError("datagram too short for an SPI", DropReason.TRUNCATED)
    return int(_SPI.unpack_from(datagram, 0)[0])


def ike_payload(datagram: bytes | bytearray | memoryview) -> bytes:
    """The IKE message inside a datagram :func:`classify` called IKE (marker stripped)."""
    if classify(datagram) is not Kind.IKE:
        raise DecodeError("datagram does not start with the non-ESP marker", DropReason.TRUNCATED)
    return bytes(datagram[4:])


def build_ike(message: bytes) -> bytes:
    """An IKE message as sent on port 4500: the non-ESP marker, then the message."""
    return NON_ESP_MARKER + message


def build_keepalive() -> bytes:
    return KEEPALIVE


@dataclass
class KeepaliveTimer:
    """Keepalive due after ``interval`` seconds without sending to the peer."""

    interval: float = KEEPALIVE_INTERVAL
    last_sent: float = 0.0

    def note_sent(self, now: float) -> None:
        self.last_sent = now

    def due(self, now: float) -> bool:
        return now - self.last_sent >= self.interval

    def next_deadline(self) -> float:
        return self.last_sent + self.interval
