"""IKEv2 message and payload codecs (RFC 7296 §3).

How this works: a message is a 28-byte :class:`Header` and a chain of generic payloads
(next-payload, critical bit, length). Each payload we implement is a frozen dataclass
with ``parse`` (from a :class:`~ike_lite.buffer.Reader` over exactly its body) and
``body`` (its encoding without the generic header). :func:`parse_payloads` walks a chain:
unknown payloads are skipped unless their critical bit is set, which raises a
:class:`ProtocolError` carrying UNSUPPORTED_CRITICAL_PAYLOAD (§2.5). The encrypted
payload (SK, §3.14) must be the last one; :func:`parse_message` returns it as an
:class:`Encrypted` whose ``aad`` is everything up to the end of its generic header, so
:mod:`ike_lite.crypto` can verify and decrypt it and the inner chain is parsed the same
way. Lengths are checked in the Reader, nowhere else.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from ike_lite.buffer import Reader, Writer
from ike_lite.const import (
    AttributeType,
    DhGroup,
    ExchangeType,
    Flag,
    IdType,
    NotifyType,
    PayloadType,
    ProtocolId,
    TransformType,
    TsType,
)
from ike_lite.errors import DecodeError, ProtocolError

HEADER_LEN = 28
GENERIC_LEN = 4


@dataclass(frozen=True)
class Header:
    """IKE header, RFC 7296 §3.1."""

    spi_i: bytes
    spi_r: bytes
    next_payload: int
    exchange: ExchangeType
    flags: int
    message_id: int
    length: int = 0
    version: int = 0x20

    @property
    def is_response(self) -> bool:
        return bool(self.flags & Flag.RESPONSE)

    @property
    def from_initiator(self) -> bool:
        return bool(self.flags & Flag.INITIATOR)

    @classmethod
    def parse(cls, r: Reader) -> Header:
        spi_i, spi_r = r.take(8), r.take(8)
        next_payload, version = r.u8(), r.u8()
        exchange, flags = ExchangeType(r.u8()), r.u8()
        message_id, length = r.u32(), r.u32()
        return cls(spi_i, spi_r, next_payload, exchange, flags, message_id, length, version)

    def encode(self, length: int) -> bytes:
        return (
            Writer()
            .put(self.spi_i)
            .put(self.spi_r)
            .u8(self.next_payload)
            .u8(self.version)
            .u8(self.exchange)
            .u8(self.flags)
            .u32(self.message_id)
            .u32(length)
            .getvalue()
        )


# ---------------------------------------------------------------------------- SA (§3.3)
@dataclass(frozen=True)
class Attribute:
    """Transform attribute (§3.3.5); TV format when ``tv`` (value fits 16 bits)."""

    type: int
    value: int | bytes

    @classmethod
    def parse(cls, r: Reader) -> Attribute:
        word = r.u16()
        if word & 0x8000:
            return cls(word & 0x7FFF, r.u16())
        return cls(word, r.take(r.u16()))

    def encode(self, w: Writer) -> None:
        if isinstance(self.value, int):
            w.u16(0x8000 | self.type).u16(self.value)
        else:
            w.u16(self.type).u16(len(self.value)).put(self.value)


@dataclass(frozen=True)
class Transform:
    """One transform substructure (§3.3.2)."""

    type: TransformType
    id: int
    attributes: tuple[Attribute, ...] = ()

    @property
    def key_length(self) -> int | None:
        for attr in self.attributes:
            if attr.type == AttributeType.KEY_LENGTH and isinstance(attr.value, int):
                return attr.value
        return None

    @classmethod
    def make(cls, type_: TransformType, id_: int, key_length: int | None = None) -> Transform:
        attrs = (Attribute(AttributeType.KEY_LENGTH, key_length),) if key_length else ()
        return cls(type_, id_, attrs)

    @classmethod
    def parse(cls, r: Reader) -> tuple[Transform, bool]:
        last = r.u8()
        r.u8()
        length = r.u16()
        if length < 8:
            raise DecodeError(f"transform length {length} < 8")
        body = r.sub(length - 4)
        type_ = TransformType(body.u8())
        body.u8()
        id_ = body.u16()
        attrs: list[Attribute] = []
        while not body.eof():
            attrs.append(Attribute.parse(body))
        return cls(type_, id_, tuple(attrs)), last == 0

    def encode(self, w: Writer, last: bool) -> None:
        aw = Writer()
        for attr in self.attributes:
            attr.encode(aw)
        w.u8(0 if last else 3).u8(0).u16(8 + len(aw)).u8(self.type).u8(0).u16(self.id).put(aw.getvalue())


@dataclass(frozen=True)
class Proposal:
    """One proposal substructure (§3.3.1)."""

    number: int
    protocol: ProtocolId
    spi: bytes
    transforms: tuple[Transform, ...]

    def of_type(self, type_: TransformType) -> list[Transform]:
        return [t for t in self.transforms if t.type == type_]

    @classmethod
    def parse(cls, r: Reader) -> tuple[Proposal, bool]:
        last = r.u8()
        r.u8()
        length = r.u16()
        if length < 8:
            raise DecodeError(f"proposal length {length} < 8")
        body = r.sub(length - 4)
        number, protocol = body.u8(), ProtocolId(body.u8())
        spi_size, count = body.u8(), body.u8()
        spi = body.take(spi_size)
        transforms: list[Transform] = []
        for i in range(count):
            t, is_last = Transform.parse(body)
            transforms.append(t)
            if is_last != (i == count - 1):
                raise DecodeError("transform 'last' flag disagrees with the transform count")
        if not body.eof():
            raise DecodeError("bytes after the last transform")
        return cls(number, protocol, spi, tuple(transforms)), last == 0

    def encode(self, w: Writer, last: bool) -> None:
        tw = Writer()
        for i, t in enumerate(self.transforms):
            t.encode(tw, i == len(self.transforms) - 1)
        w.u8(0 if last else 2).u8(0).u16(8 + len(self.spi) + len(tw))
        w.u8(self.number).u8(self.protocol).u8(len(self.spi)).u8(len(self.transforms))
        w.put(self.spi).put(tw.getvalue())


@dataclass(frozen=True)
class SA:
    PTYPE: ClassVar[PayloadType] = PayloadType.SA
    proposals: tuple[Proposal, ...]

    @classmethod
    def parse(cls, r: Reader) -> SA:
        proposals: list[Proposal] = []
        while True:
            p, last = Proposal.parse(r)
            proposals.append(p)
            if last:
                break
        if not r.eof():
            raise DecodeError("bytes after the last proposal")
        return cls(tuple(proposals))

    def body(self) -> bytes:
        w = Writer()
        for i, p in enumerate(self.proposals):
            p.encode(w, i == len(self.proposals) - 1)
        return w.getvalue()


# ---------------------------------------------------------------------------- simple payloads
@dataclass(frozen=True)
class KE:
    """Key Exchange payload (§3.4)."""

    PTYPE: ClassVar[PayloadType] = PayloadType.KE
    group: DhGroup
    data: bytes

    @classmethod
    def parse(cls, r: Reader) -> KE:
        group = DhGroup(r.u16())
        r.u16()
        return cls(group, r.rest())

    def body(self) -> bytes:
        return Writer().u16(self.group).u16(0).put(self.data).getvalue()


@dataclass(frozen=True)
class Nonce:
    """Nonce payload (§3.9): 16..256 bytes."""

    PTYPE: ClassVar[PayloadType] = PayloadType.NONCE
    data: bytes

    @classmethod
    def parse(cls, r: Reader) -> Nonce:
        data = r.rest()
        if not 16 <= len(data) <= 256:
            raise DecodeError(f"nonce of {len(data)} bytes (16..256 allowed)")
        return cls(data)

    def body(self) -> bytes:
        return self.data


@dataclass(frozen=True)
class Identification:
    """IDi/IDr (§3.5); ``body()`` is also the ID' that AUTH signs (§2.15)."""

    initiator: bool
    id_type: IdType
    data: bytes

    @property
    def PTYPE(self) -> PayloadType:
        return PayloadType.IDI if self.initiator else PayloadType.IDR

    @classmethod
    def parse_as(cls, initiator: bool, r: Reader) -> Identification:
        id_type = IdType(r.u8())
        r.take(3)
        return cls(initiator, id_type, r.rest())

    def body(self) -> bytes:
        return Writer().u8(self.id_type).put(b"\0\0\0").put(self.data).getvalue()

    def text(self) -> str:
        if self.id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR) and len(self.data) in (4, 16):
            return str(ipaddress.ip_address(self.data))
        return self.data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Auth:
    """AUTH payload (§3.8)."""

    PTYPE: ClassVar[PayloadType] = PayloadType.AUTH
    method: int
    data: bytes

    @classmethod
    def parse(cls, r: Reader) -> Auth:
        method = r.u8()
        r.take(3)
        return cls(method, r.rest())

    def body(self) -> bytes:
        return Writer().u8(self.method).put(b"\0\0\0").put(self.data).getvalue()


@dataclass(frozen=True)
class TrafficSelector:
    """One traffic selector (§3.13.1)."""

    ts_type: TsType
    ip_proto: int
    start_port: int
    end_port: int
    start: bytes
    end: bytes

    @classmethod
    def host(cls, address: str) -> TrafficSelector:
        """The whole traffic of one address (any protocol, any port)."""
        packed = ipaddress.ip_address(address).packed
        ts_type = TsType.IPV6_ADDR_RANGE if len(packed) == 16 else TsType.IPV4_ADDR_RANGE
        return cls(ts_type, 0, 0, 65535, packed, packed)

    @property
    def is_all_traffic(self) -> bool:
        return self.ip_proto == 0 and self.start_port == 0 and self.end_port == 65535

    def contains(self, address: str) -> bool:
        packed = ipaddress.ip_address(address).packed
        return len(packed) == len(self.start) and self.start <= packed <= self.end

    def describe(self) -> str:
        if len(self.start) not in (4, 16):
            return f"ts-type {int(self.ts_type)}"
        lo, hi = ipaddress.ip_address(self.start), ipaddress.ip_address(self.end)
        return str(lo) if lo == hi else f"{lo}..{hi}"

    @classmethod
    def parse(cls, r: Reader) -> TrafficSelector:
        ts_type = TsType(r.u8())
        ip_proto, length = r.u8(), r.u16()
        if length < 8:
            raise DecodeError(f"traffic selector length {length} < 8")
        body = r.sub(length - 4)
        start_port, end_port = body.u16(), body.u16()
        if ts_type == TsType.IPV4_ADDR_RANGE:
            size = 4
        elif ts_type == TsType.IPV6_ADDR_RANGE:
            size = 16
        else:
            return cls(ts_type, ip_proto, start_port, end_port, body.rest(), b"")
        start, end = body.take(size), body.take(size)
        if not body.eof():
            raise DecodeError("bytes after a traffic selector's addresses")
        return cls(ts_type, ip_proto, start_port, end_port, start, end)

    def encode(self, w: Writer) -> None:
        w.u8(self.ts_type).u8(self.ip_proto).u16(8 + len(self.start) + len(self.end))
        w.u16(self.start_port).u16(self.end_port).put(self.start).put(self.end)


@dataclass(frozen=True)
class TrafficSelectors:
    """TSi/TSr (§3.13)."""

    initiator: bool
    selectors: tuple[TrafficSelector, ...]

    @property
    def PTYPE(self) -> PayloadType:
        return PayloadType.TSI if self.initiator else PayloadType.TSR

    @classmethod
    def parse_as(cls, initiator: bool, r: Reader) -> TrafficSelectors:
        count = r.u8()
        r.take(3)
        selectors = tuple(TrafficSelector.parse(r) for _ in range(count))
        if not r.eof():
            raise DecodeError("bytes after the last traffic selector")
        return cls(initiator, selectors)

    def body(self) -> bytes:
        w = Writer().u8(len(self.selectors)).put(b"\0\0\0")
        for ts in self.selectors:
            ts.encode(w)
        return w.getvalue()


@dataclass(frozen=True)
class Notify:
    """Notify payload (§3.10)."""

    PTYPE: ClassVar[PayloadType] = PayloadType.NOTIFY
    type: NotifyType
    data: bytes = b""
    protocol: int = 0
    spi: bytes = b""

    @classmethod
    def parse(cls, r: Reader) -> Notify:
        protocol, spi_size = r.u8(), r.u8()
        type_ = NotifyType(r.u16())
        spi = r.take(spi_size)
        return cls(type_, r.rest(), protocol, spi)

    def body(self) -> bytes:
        return (
            Writer()
            .u8(self.protocol)
            .u8(len(self.spi))
            .u16(self.type)
            .put(self.spi)
            .put(self.data)
            .getvalue()
        )


@dataclass(frozen=True)
class Delete:
    """Delete payload (§3.11): protocol IKE with no SPIs, or ESP with 4-byte SPIs."""

    PTYPE: ClassVar[PayloadType] = PayloadType.DELETE
    protocol: ProtocolId
    spis: tuple[bytes, ...] = ()

    @classmethod
    def parse(cls, r: Reader) -> Delete:
        protocol, spi_size, count = ProtocolId(r.u8()), r.u8(), r.u16()
        if protocol == ProtocolId.IKE and (spi_size or count):
            # RFC 7296 §3.11: SPI size 0 for IKE; tolerate count 0 with size 8 too.
            if spi_size not in (0, 8):
                raise DecodeError("delete of an IKE SA with a bad SPI size")
        spis = tuple(r.take(spi_size) for _ in range(count))
        if not r.eof():
            raise DecodeError("bytes after the last SPI of a delete payload")
        return cls(protocol, spis)

    def body(self) -> bytes:
        size = len(self.spis[0]) if self.spis else 0
        w = Writer().u8(self.protocol).u8(size).u16(len(self.spis))
        for spi in self.spis:
            w.put(spi)
        return w.getvalue()


@dataclass(frozen=True)
class VendorId:
    PTYPE: ClassVar[PayloadType] = PayloadType.VENDOR_ID
    data: bytes

    @classmethod
    def parse(cls, r: Reader) -> VendorId:
        return cls(r.rest())

    def body(self) -> bytes:
        return self.data


@dataclass(frozen=True)
class Encrypted:
    """The SK payload (§3.14) as received: ``aad`` authenticates, ``content`` = IV‖ct‖ICV."""

    PTYPE: ClassVar[PayloadType] = PayloadType.SK
    first_payload: int
    content: bytes
    aad: bytes = field(default=b"", repr=False)

    def body(self) -> bytes:
        return self.content


Payload = SA | KE | Nonce | Identification | Auth | TrafficSelectors | Notify | Delete | VendorId | Encrypted

_SIMPLE: dict[int, Callable[[Reader], Payload]] = {
    PayloadType.SA: SA.parse,
    PayloadType.KE: KE.parse,
    PayloadType.NONCE: Nonce.parse,
    PayloadType.AUTH: Auth.parse,
    PayloadType.NOTIFY: Notify.parse,
    PayloadType.DELETE: Delete.parse,
    PayloadType.VENDOR_ID: VendorId.parse,
}


def _parse_one(ptype: int, r: Reader) -> Payload:
    if ptype in _SIMPLE:
        return _SIMPLE[PayloadType(ptype)](r)
    if ptype in (PayloadType.IDI, PayloadType.IDR):
        return Identification.parse_as(ptype == PayloadType.IDI, r)
    return TrafficSelectors.parse_as(ptype == PayloadType.TSI, r)


KNOWN = {*_SIMPLE, PayloadType.IDI, PayloadType.IDR, PayloadType.TSI, PayloadType.TSR}


def parse_payloads(
    first: int, data: bytes, start: int = 0, end: int | None = None, allow_sk: bool = True
) -> list[Payload]:
    """Parse a payload chain starting with type ``first`` in ``data[start:end]``."""
    r = Reader(data, start, end)
    out: list[Payload] = []
    ptype = first
    while ptype != PayloadType.NONE:
        header_at = r.pos
        next_type, flags, length = r.u8(), r.u8(), r.u16()
        if length < GENERIC_LEN:
            raise DecodeError(f"payload length {length} < 4")
        body = r.sub(length - GENERIC_LEN)
        if ptype == PayloadType.SK:
            if not allow_sk:
                raise DecodeError("an SK payload inside an SK payload")
            if not r.eof():
                raise DecodeError("the SK payload is not the last payload")
            out.append(Encrypted(next_type, body.rest(), data[: header_at + GENERIC_LEN]))
            return out
        if ptype in KNOWN:
            out.append(_parse_one(ptype, body))
        elif flags & 0x80:
            raise ProtocolError(
                f"unsupported critical payload type {ptype}",
                NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD,
                bytes([ptype & 0xFF]),
            )
        ptype = next_type
    if not r.eof():
        raise DecodeError(f"{r.remaining} bytes after the last payload")
    return out


def encode_payloads(payloads: Sequence[Payload], trailer_type: int = PayloadType.NONE) -> bytes:
    """Encode a chain; the last payload's next-payload is ``trailer_type``."""
    w = Writer()
    for i, p in enumerate(payloads):
        nxt = payloads[i + 1].PTYPE if i + 1 < len(payloads) else trailer_type
        if isinstance(p, Encrypted):
            nxt = p.first_payload
        body = p.body()
        w.u8(nxt).u8(0).u16(GENERIC_LEN + len(body)).put(body)
    return w.getvalue()


def first_type(payloads: Sequence[Payload]) -> int:
    return int(payloads[0].PTYPE) if payloads else int(PayloadType.NONE)


@dataclass(frozen=True)
class Message:
    """A parsed message: header, the plaintext payloads, and the raw bytes."""

    header: Header
    payloads: tuple[Payload, ...]
    raw: bytes = field(default=b"", repr=False)

    def get(self, kind: type[Payload]) -> list[Payload]:
        return [p for p in self.payloads if isinstance(p, kind)]

    def notifies(self) -> list[Notify]:
        return [p for p in self.payloads if isinstance(p, Notify)]

    def notify(self, type_: NotifyType) -> Notify | None:
        return next((n for n in self.notifies() if n.type == type_), None)

    @property
    def encrypted(self) -> Encrypted | None:
        last = self.payloads[-1] if self.payloads else None
        return last if isinstance(last, Encrypted) else None


def parse_header(data: bytes) -> Header:
    if len(data) < HEADER_LEN:
        raise DecodeError(f"{len(data)} bytes is shorter than an IKE header")
    header = Header.parse(Reader(data, 0, HEADER_LEN))
    if header.version >> 4 != 2:
        raise ProtocolError(f"IKE major version {header.version >> 4}", NotifyType.INVALID_MAJOR_VERSION)
    if header.length != len(data):
        raise DecodeError(f"IKE header says {header.length} bytes, datagram has {len(data)}")
    return header


def parse_message(data: bytes) -> Message:
    """Parse header and the outer payload chain (SK left encrypted)."""
    header = parse_header(data)
    payloads = parse_payloads(header.next_payload, data, HEADER_LEN)
    return Message(header, tuple(payloads), data)


def encode_message(header: Header, payloads: Sequence[Payload]) -> bytes:
    """Encode a plaintext message (IKE_SA_INIT or an unprotected notify)."""
    body = encode_payloads(payloads)
    h = Header(
        header.spi_i, header.spi_r, first_type(payloads), header.exchange, header.flags, header.message_id
    )
    return h.encode(HEADER_LEN + len(body)) + body
