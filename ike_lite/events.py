"""Events an :class:`~ike_lite.endpoint.IkeEndpoint` hands to its driver (h11 style).

Every event names the session by ``handle`` (stable across IKE SA rekeys). A CHILD SA
travels as plain data (:class:`ChildSa`, ``as_dict()`` is the contract esp_udp accepts),
so ike_lite never imports the datapath. Rekeys are make-before-break: the driver gets
:class:`ChildSaUp` for the new SA (``rekey_of`` = the old ``spi_in``) before the
:class:`ChildSaDown` of the old one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Addr = tuple[str, int]

# Failure reasons (RFC 7296 error notify names where one exists).
AUTHENTICATION_FAILED = "AUTHENTICATION_FAILED"
NO_PROPOSAL_CHOSEN = "NO_PROPOSAL_CHOSEN"
TS_UNACCEPTABLE = "TS_UNACCEPTABLE"
INVALID_KE_PAYLOAD = "INVALID_KE_PAYLOAD"
TIMEOUT = "timeout"
DEAD_PEER = "dead_peer"
DELETED_BY_PEER = "deleted_by_peer"
CLOSED = "closed"
REKEYED = "rekeyed"
REPLACED = "replaced"  # the peer reconnected with INITIAL_CONTACT
PEER_ERROR = "peer_error"
PROTOCOL_ERROR = "protocol_error"


def fmt_addr(addr: Addr) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class ChildSa:
    """A negotiated ESP SA pair in the plain-data form esp_udp installs."""

    inner: str  # the peer's inner address (ULA)
    local_inner: str
    outer: Addr  # the peer's outer address (after NAT), UDP-encapsulated
    suite: str  # aes256gcm16 | aes128gcm16 | chacha20poly1305
    spi_in: bytes
    spi_out: bytes
    key_in: bytes  # key ‖ 4-byte salt protecting what this host receives
    key_out: bytes

    def as_dict(self) -> dict[str, Any]:
        return {
            "inner": self.inner,
            "outer": fmt_addr(self.outer),
            "suite": self.suite,
            "spi_in": self.spi_in.hex(),
            "spi_out": self.spi_out.hex(),
            "key_in": self.key_in.hex(),
            "key_out": self.key_out.hex(),
        }


@dataclass(frozen=True)
class Event:
    handle: int


@dataclass(frozen=True)
class IkeSaUp(Event):
    peer_addr: Addr
    peer_id: str
    initiator: bool
    suite: str  # e.g. aes256gcm16-prfsha256-x25519
    spi_i: bytes
    spi_r: bytes
    nat_local: bool  # we are behind a NAT (we send keepalives)
    nat_remote: bool  # the peer is behind a NAT (or fakes it to force encapsulation)


@dataclass(frozen=True)
class ChildSaUp(Event):
    """Install ``child``. With ``outbound=False`` (we answered a peer's rekey) install only its
    inbound half; :class:`ChildSaOutbound` follows once the peer has it too (its Delete of the
    old SA arrives, or after a short grace time) — strongSwan's order, so no packet is sent on
    an SA the peer has not installed yet."""

    child: ChildSa
    rekey_of: bytes | None  # spi_in of the CHILD SA this one replaces
    setup_s: float | None  # first request sent → SA ready (initiator of the IKE SA only)
    outbound: bool = True


@dataclass(frozen=True)
class ChildSaOutbound(Event):
    """Switch sending to ``child`` (announced earlier with ``outbound=False``)."""

    child: ChildSa


@dataclass(frozen=True)
class ChildSaDown(Event):
    spi_in: bytes
    spi_out: bytes
    inner: str
    reason: str  # REKEYED, DELETED_BY_PEER, CLOSED, ...


@dataclass(frozen=True)
class IkeSaRekeyed(Event):
    spi_i: bytes
    spi_r: bytes


@dataclass(frozen=True)
class PeerAddressChanged(Event):
    peer_addr: Addr


@dataclass(frozen=True)
class IkeSaDown(Event):
    """The session ended; ``reason`` is a code, ``message`` one sentence for a human."""

    reason: str
    message: str
    peer_addr: Addr
    peer_id: str
    established: bool


@dataclass(frozen=True)
class MessageLogged(Event):
    """One IKE message sent or received (for --verbose tables and keylogs)."""

    direction: str  # "in" | "out"
    exchange: str
    message_id: int
    response: bool
    payloads: tuple[str, ...]
    peer_addr: Addr
    length: int
    retransmission: bool = False


@dataclass(frozen=True)
class Dropped(Event):
    """A datagram was dropped (handle 0 if no SA matched); ``reason`` says why."""

    reason: str
    peer_addr: Addr


@dataclass(frozen=True)
class ChildSaFailed(Event):
    """A CHILD SA (or its rekey) could not be created; the IKE SA may stay up."""

    reason: str
    message: str
