"""The errors esp_udp raises — the only exceptions untrusted bytes can cause here.

Every drop has a :class:`DropReason`; the datapath counts drops per reason and per peer.
Contract (as in h11): parsing or opening a packet raises only :class:`EspError`
subclasses; any other exception escaping a parser is a bug.
"""

from __future__ import annotations

from enum import StrEnum


class DropReason(StrEnum):
    """Why a datagram or packet was not delivered (the counter names)."""

    TRUNCATED = "truncated"  # shorter than the smallest valid packet of its kind
    UNKNOWN_SPI = "unknown_spi"  # no inbound SA with this SPI (RFC 4303 §3.4.2)
    REPLAY = "replay"  # sequence number already seen (RFC 4303 §3.4.3)
    TOO_OLD = "too_old"  # left of the replay window, or sequence number 0
    AUTH_FAILED = "auth_failed"  # ICV did not verify (RFC 4303 §3.4.4)
    BAD_PADDING = "bad_padding"  # pad length too long or pad bytes not 1, 2, 3, ... (§2.4)
    BAD_NEXT_HEADER = "bad_next_header"  # not IPv6 (41) or IPv4 (4) (tunnel mode)
    DUMMY = "dummy"  # next header 59: a dummy packet, silently discarded (§2.6)
    BAD_INNER = "bad_inner"  # inner packet malformed or its source is not the peer's address
    NO_ROUTE = "no_route"  # outbound: inner destination has no peer
    NO_SA = "no_sa"  # outbound: peer has no outbound SA yet
    SEQ_EXHAUSTED = "seq_exhausted"  # outbound SA used up its sequence numbers: rekey
    TOO_BIG = "too_big"  # inner packet larger than the buffers
    SEND_FAILED = "send_failed"  # the socket or TUN write failed (EAGAIN, ENOBUFS, ...)
    PENDING_EXPIRED = "pending_expired"  # on-demand: held for a peer whose SA did not come in time
    PENDING_FULL = "pending_full"  # on-demand: the pending queue (per destination or total) is full


class EspError(Exception):
    """Base class: a packet was rejected (``reason``) or esp_udp was misused."""

    reason: DropReason = DropReason.TRUNCATED

    def __init__(self, message: str, reason: DropReason | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class DecodeError(EspError):
    """Malformed bytes: too short, bad padding, unknown next header, bad inner packet."""


class AuthenticationError(EspError):
    """The AEAD tag did not verify: forged, corrupted or wrong key."""

    reason = DropReason.AUTH_FAILED


class ReplayError(EspError):
    """Sequence number is a duplicate or left of the window (checked before decryption)."""

    reason = DropReason.REPLAY


class UnknownSpiError(EspError):
    """No SA with this SPI."""

    reason = DropReason.UNKNOWN_SPI


class SequenceExhaustedError(EspError):
    """An outbound SA sent its last allowed sequence number; it must be replaced (rekey)."""

    reason = DropReason.SEQ_EXHAUSTED


class ConfigError(EspError, ValueError):
    """Bad SA parameters (plain data from a file or from IKE): one line naming the field."""
