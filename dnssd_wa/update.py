"""One atomic UPDATE per registration (RFC 2136), TSIG-signed (RFC 8945), with a lease.

How this works
--------------
:func:`register_update` turns a host's record set into ONE UpdateMessage: for each own
RRset "delete RRset by type" then "add" (so a re-registration replaces exactly what was
there and is idempotent), for shared PTR RRsets "add" only. :func:`remove_update` deletes
own RRsets by type (Knot refuses "delete all RRsets at a name" under a type-restricted
ACL) and our own rdata from shared service PTRs.

:func:`sign` renders the message and appends a TSIG HMAC-SHA256 record computed with
``dns.tsig.sign`` at the given ``now`` (the clock is a parameter, so tests can sign with
a skewed clock). :func:`parse_reply` checks the reply's TSIG (a TSIG error such as BADSIG
is decoded from the unverified reply so the message can say what went wrong, including
the server's time for BADTIME) and reads the Update Lease option.

Update Lease (RFC 9664, EDNS option 2): 4 bytes LEASE, or 8 bytes LEASE + KEY-LEASE.
:class:`LeaseRefresh` is the sans-I/O refresh timer: refresh at 80 % of the granted
lease plus 0–5 % jitter, the jitter fraction being a parameter.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import dns.edns
import dns.exception
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TSIG
import dns.tsig
import dns.update

from dnssd_wa.errors import DecodeError
from dnssd_wa.records import RRSet

LEASE_OPTION = 2
DEFAULT_LEASE = 7200
TSIG_FUDGE = 300


@dataclass(frozen=True)
class Lease:
    """An Update Lease option value (RFC 9664 §4): seconds, and KEY-LEASE when 8-byte form."""

    lease: int
    key_lease: int | None = None

    def build(self) -> bytes:
        if not 0 <= self.lease < 2**32 or not (self.key_lease is None or 0 <= self.key_lease < 2**32):
            raise ValueError("lease values must fit in 32 bits")
        if self.key_lease is None:
            return struct.pack("!I", self.lease)
        return struct.pack("!II", self.lease, self.key_lease)

    @classmethod
    def parse(cls, data: bytes) -> Lease:
        if len(data) == 4:
            return cls(struct.unpack("!I", data)[0])
        if len(data) == 8:
            lease, key_lease = struct.unpack("!II", data)
            return cls(lease, key_lease)
        raise DecodeError(f"Update Lease option has {len(data)} bytes; RFC 9664 allows 4 or 8")

    def option(self) -> dns.edns.Option:
        return dns.edns.GenericOption(dns.edns.OptionType.make(LEASE_OPTION), self.build())


@dataclass(frozen=True)
class TsigKey:
    name: str
    secret: bytes
    algorithm: str = "hmac-sha256"

    def dns_key(self) -> dns.tsig.Key:
        return dns.tsig.Key(dns.name.from_text(self.name), self.secret, self.algorithm)


def _new_update(zone: dns.name.Name, lease: Lease | None) -> dns.update.UpdateMessage:
    msg = dns.update.UpdateMessage(zone)
    if lease is not None:
        msg.use_edns(0, payload=1232, options=[lease.option()])
    return msg


def register_update(zone: dns.name.Name, rrsets: tuple[RRSet, ...], lease: Lease | None,
                    msg_id: int | None = None) -> dns.update.UpdateMessage:
    """Delete-then-add of own RRsets, add of shared PTRs: one atomic UPDATE."""
    msg = _new_update(zone, lease)
    if msg_id is not None:
        msg.id = msg_id
    for rr in rrsets:
        if not rr.shared:
            msg.delete(rr.name, rr.rdtype)
    for rr in rrsets:
        for rd in rr.rdatas:
            msg.add(rr.name, rr.ttl, rd)
    return msg


def remove_update(zone: dns.name.Name, rrsets: tuple[RRSet, ...],
                  msg_id: int | None = None) -> dns.update.UpdateMessage:
    """Delete own RRsets by type and our rdata from shared service PTRs."""
    msg = _new_update(zone, None)
    if msg_id is not None:
        msg.id = msg_id
    for rr in rrsets:
        if not rr.shared:
            msg.delete(rr.name, rr.rdtype)
        elif rr.removable:
            for rd in rr.rdatas:
                msg.delete(rr.name, rd)
    return msg


@dataclass(frozen=True)
class SignedMessage:
    """Wire bytes of a signed message and what is needed to check its reply."""

    wire: bytes
    msg_id: int
    mac: bytes
    key: TsigKey | None
    time_signed: int


def sign(msg: dns.message.Message, key: TsigKey | None, now: int,
         fudge: int = TSIG_FUDGE) -> SignedMessage:
    """Render ``msg`` and append a TSIG record signed at ``now`` (or leave it unsigned)."""
    wire = msg.to_wire(max_size=65535)
    if key is None:
        return SignedMessage(wire, msg.id, b"", None, now)
    dkey = key.dns_key()
    tsig_cls: Any = dns.rdtypes.ANY.TSIG.TSIG
    template = tsig_cls(dns.rdataclass.ANY, dns.rdatatype.TSIG, dkey.algorithm, 0, fudge, b"", msg.id, 0, b"")
    tsig_sign: Any = dns.tsig.sign
    signed, _ = tsig_sign(wire, dkey, template, now, b"")
    rdata: bytes = signed.to_wire()
    owner = dkey.name.to_wire() or b""
    rr = owner + struct.pack("!HHIH", dns.rdatatype.TSIG, dns.rdataclass.ANY, 0,
                                           len(rdata)) + rdata
    arcount = struct.unpack("!H", wire[10:12])[0] + 1
    full = wire[:10] + struct.pack("!H", arcount) + wire[12:] + rr
    return SignedMessage(full, msg.id, bytes(signed.mac), key, now)


@dataclass(frozen=True)
class Reply:
    """What an UPDATE reply said."""

    rcode: int
    tsig_error: int
    verified: bool
    server_time: int | None
    lease: Lease | None
    message: dns.message.Message


def parse_reply(wire: bytes, request: SignedMessage) -> Reply:
    """Parse and verify a reply to ``request``; never raises anything but DecodeError."""
    if len(wire) < 12:
        raise DecodeError(f"reply of {len(wire)} bytes is shorter than a DNS header")
    if struct.unpack("!H", wire[:2])[0] != request.msg_id:
        raise DecodeError("reply ID does not match the request")
    verified = False
    try:
        if request.key is not None:
            msg = dns.message.from_wire(wire, keyring=request.key.dns_key(), request_mac=request.mac)
            verified = True
        else:
            msg = dns.message.from_wire(wire, keyring=False)
    except (dns.tsig.PeerError, dns.tsig.BadSignature, dns.tsig.BadTime, dns.tsig.BadKey,
            dns.tsig.BadAlgorithm, dns.message.UnknownTSIGKey, dns.exception.FormError):
        try:
            msg = dns.message.from_wire(wire, keyring=False)
        except dns.exception.DNSException as exc:
            raise DecodeError(f"malformed reply: {exc}") from None
    except dns.exception.DNSException as exc:
        raise DecodeError(f"malformed reply: {exc}") from None
    tsig_error = 0
    server_time: int | None = None
    if msg.tsig is not None:
        trd = msg.tsig[0]
        tsig_error = int(trd.error)
        if tsig_error == dns.rcode.BADTIME and len(trd.other) == 6:
            server_time = int.from_bytes(trd.other, "big")
        elif tsig_error == dns.rcode.BADTIME:
            server_time = int(trd.time_signed)
    lease: Lease | None = None
    for opt in msg.options:
        if opt.otype == LEASE_OPTION:
            lease = Lease.parse(opt.to_wire())
    return Reply(int(msg.rcode()), tsig_error, verified, server_time, lease, msg)


@dataclass
class LeaseRefresh:
    """Sans-I/O refresh timer for a granted lease (80 % + 0–5 % jitter)."""

    granted: int | None = None
    registered_at: float = 0.0
    refresh_at: float | None = None

    def registered(self, now: float, granted: int | None, jitter: float) -> float | None:
        """Record a (re)registration; ``jitter`` in [0, 1) picks the 0–5 % spread.

        Returns when to refresh, or None when the server granted no lease (records stay
        until removed: refresh is not needed).
        """
        if not 0.0 <= jitter < 1.0:
            raise ValueError("jitter must be in [0, 1)")
        self.granted = granted
        self.registered_at = now
        if granted is None or granted <= 0:
            self.refresh_at = None
        else:
            self.refresh_at = now + granted * (0.80 + 0.05 * jitter)
        return self.refresh_at

    def get_timer(self) -> float | None:
        return self.refresh_at

    def due(self, now: float) -> bool:
        return self.refresh_at is not None and now >= self.refresh_at


def largest_shared_rrset(rrsets: tuple[RRSet, ...]) -> list[tuple[dns.name.Name, int]]:
    """Shared RRsets this update adds to, with how many records it adds to each."""
    counts: dict[dns.name.Name, int] = {}
    for rr in rrsets:
        if rr.shared and rr.removable:
            counts[rr.name] = counts.get(rr.name, 0) + len(rr.rdatas)
    return sorted(counts.items(), key=lambda kv: -kv[1])
