"""DNS Stateful Operations (RFC 8490) message codec — sans-I/O.

How this works
--------------
A DSO message is a DNS header (RFC 8490 §5.4: opcode DSO = 6, QDCOUNT = ANCOUNT =
NSCOUNT = ARCOUNT = 0) followed by TLVs: 16-bit type, 16-bit length, value. The first
TLV of a request is the *primary* TLV, the rest are additional. A response echoes the
message ID of its request; a message ID of 0 marks a unidirectional message (no response).

dnspython has no DSO support (its message parser would call the TLVs trailing junk), so
the fixed 12-byte header and the TLV framing are read here with :class:`dns.wire.Parser`;
the DNS records carried inside TLVs (DNS Push, RFC 8765) are parsed by dnspython in
:mod:`dnssd_wa.push`. :func:`parse` raises only :class:`DsoError`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

OPCODE_DSO = 6
HEADER_LEN = 12
_QR = 0x8000


class DsoError(Exception):
    """Bytes that are not a well-formed DSO message."""


class DsoType(enum.IntEnum):
    """DSO TLV types (RFC 8490 §10.3, RFC 8765 §10.2); unknown values stay plain ints."""

    KEEPALIVE = 0x0001
    RETRY_DELAY = 0x0002
    ENCRYPTION_PADDING = 0x0003
    SUBSCRIBE = 0x0040
    PUSH = 0x0041
    UNSUBSCRIBE = 0x0042
    RECONCILE = 0x0043


class DsoRcode(enum.IntEnum):
    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5
    NOTAUTH = 9
    DSOTYPENI = 11


@dataclass(frozen=True)
class Tlv:
    dtype: int
    value: bytes

    def build(self) -> bytes:
        if len(self.value) > 0xFFFF:
            raise DsoError(f"DSO TLV {self.dtype} value of {len(self.value)} bytes is too long")
        return struct.pack("!HH", self.dtype, len(self.value)) + self.value


@dataclass(frozen=True)
class DsoMessage:
    """One DSO message (RFC 8490 §5.4)."""

    msg_id: int
    response: bool
    rcode: int
    tlvs: tuple[Tlv, ...]

    @property
    def primary(self) -> Tlv | None:
        return self.tlvs[0] if self.tlvs else None

    def build(self) -> bytes:
        flags = (_QR if self.response else 0) | (OPCODE_DSO << 11) | (self.rcode & 0xF)
        header = struct.pack("!HHHHHH", self.msg_id, flags, 0, 0, 0, 0)
        return header + b"".join(t.build() for t in self.tlvs)


def is_dso(wire: bytes) -> bool:
    """True when the bytes carry a DNS header with opcode DSO."""
    return len(wire) >= HEADER_LEN and ((wire[2] >> 3) & 0xF) == OPCODE_DSO


def parse(wire: bytes) -> DsoMessage:
    """Parse one DSO message; raises :class:`DsoError` for anything malformed."""
    if len(wire) < HEADER_LEN:
        raise DsoError(f"DSO message of {len(wire)} bytes is shorter than a DNS header")
    msg_id, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", wire, 0)
    if (flags >> 11) & 0xF != OPCODE_DSO:
        raise DsoError("not a DSO message (opcode is not 6)")
    if qd or an or ns or ar:
        raise DsoError("DSO message with non-zero section counts (RFC 8490 §5.4)")
    tlvs: list[Tlv] = []
    offset = HEADER_LEN
    while offset < len(wire):
        if len(wire) - offset < 4:
            raise DsoError("truncated DSO TLV header")
        dtype, length = struct.unpack_from("!HH", wire, offset)
        offset += 4
        if len(wire) - offset < length:
            raise DsoError(f"DSO TLV {dtype} claims {length} bytes, {len(wire) - offset} left")
        tlvs.append(Tlv(dtype, bytes(wire[offset:offset + length])))
        offset += length
    return DsoMessage(msg_id=msg_id, response=bool(flags & _QR), rcode=flags & 0xF, tlvs=tuple(tlvs))


@dataclass(frozen=True)
class Keepalive:
    """Keepalive TLV (RFC 8490 §7.1): both values in milliseconds."""

    inactivity_timeout_ms: int
    keepalive_interval_ms: int

    def tlv(self) -> Tlv:
        return Tlv(DsoType.KEEPALIVE, struct.pack("!II", self.inactivity_timeout_ms,
                                                  self.keepalive_interval_ms))

    @classmethod
    def from_tlv(cls, tlv: Tlv) -> Keepalive:
        if tlv.dtype != DsoType.KEEPALIVE or len(tlv.value) != 8:
            raise DsoError("Keepalive TLV must carry exactly 8 bytes")
        inactivity, interval = struct.unpack("!II", tlv.value)
        return cls(inactivity, interval)


def request(msg_id: int, *tlvs: Tlv) -> DsoMessage:
    return DsoMessage(msg_id=msg_id, response=False, rcode=0, tlvs=tuple(tlvs))


def response(to: DsoMessage, rcode: int = 0, *tlvs: Tlv) -> DsoMessage:
    return DsoMessage(msg_id=to.msg_id, response=True, rcode=rcode, tlvs=tuple(tlvs))
