"""NAT-PMP (RFC 6886) and PCP (RFC 6887) messages: bytes <-> frozen dataclasses.

How this works
--------------
Both protocols share UDP port 5351 on the gateway and the first byte of every message is
the version: 0 is NAT-PMP, 2 is PCP (1 was a PCP draft that miniupnpd still answers).
:func:`decode_response` and :func:`decode_request` look at that byte and at the length
and return one of the dataclasses below; every ``encode()`` gives back the exact bytes.
All parsing goes through :class:`Reader`, which checks every length once, so a short or
odd datagram raises :class:`~portmap.errors.DecodeError` and nothing else.

Registries (opcodes, result codes, option codes) are ``IntEnum``s, but messages keep the
raw ``int`` so that unknown values from the network survive decoding; ``result_name``
and friends turn them into names for people.

miniupnpd 2.3.1 quirk (see /work/shared/reference/natpmp-pcp-vectors.md): a PCP request it
finds malformed (shorter than 24 bytes, or a length that is not a multiple of 4) is
answered *in place* with a 24-byte-or-longer reply whose version byte is 0 and whose
opcode byte is 0x80, with the PCP result code in byte 3. Read as NAT-PMP it looks like a
public-address reply with NETWORK_FAILURE. A genuine NAT-PMP reply is at most 16 bytes,
so a version-0 reply of 24 bytes or more is decoded as :class:`PcpVersionZeroReply`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address

from portmap.errors import DecodeError, EncodeError

SERVER_PORT = 5351  # RFC 6886 §3.1 / RFC 6887 §19.1: requests go to the gateway here
CLIENT_PORT = 5350  # RFC 6886 §3.2.1 / RFC 6887 §8.1: announcements arrive here
ANNOUNCE_GROUP = IPv4Address("224.0.0.1")  # all-hosts multicast (IPv4)

NATPMP_VERSION = 0
PCP_VERSION = 2
RESPONSE_BIT = 0x80
PCP_HEADER_LEN = 24
PCP_MAX_LEN = 1100  # RFC 6887 §7
NONCE_LEN = 12
IPPROTO_TCP = 6
IPPROTO_UDP = 17


class NatPmpOpcode(IntEnum):
    """RFC 6886 §3.2 and §3.3 (responses add 128)."""

    EXTERNAL_ADDRESS = 0
    MAP_UDP = 1
    MAP_TCP = 2


class NatPmpResult(IntEnum):
    """RFC 6886 §3.5."""

    SUCCESS = 0
    UNSUPPORTED_VERSION = 1
    NOT_AUTHORIZED = 2
    NETWORK_FAILURE = 3
    OUT_OF_RESOURCES = 4
    UNSUPPORTED_OPCODE = 5


class PcpOpcode(IntEnum):
    """RFC 6887 §19.2."""

    ANNOUNCE = 0
    MAP = 1
    PEER = 2


class PcpResult(IntEnum):
    """RFC 6887 §7.4."""

    SUCCESS = 0
    UNSUPP_VERSION = 1
    NOT_AUTHORIZED = 2
    MALFORMED_REQUEST = 3
    UNSUPP_OPCODE = 4
    UNSUPP_OPTION = 5
    MALFORMED_OPTION = 6
    NETWORK_FAILURE = 7
    NO_RESOURCES = 8
    UNSUPP_PROTOCOL = 9
    USER_EX_QUOTA = 10
    CANNOT_PROVIDE_EXTERNAL = 11
    ADDRESS_MISMATCH = 12
    EXCESSIVE_REMOTE_PEERS = 13


class PcpOptionCode(IntEnum):
    """RFC 6887 §13."""

    THIRD_PARTY = 1
    PREFER_FAILURE = 2
    FILTER = 3


def natpmp_result_name(code: int) -> str:
    try:
        return NatPmpResult(code).name
    except ValueError:
        return f"UNKNOWN_{code}"


def pcp_result_name(code: int) -> str:
    try:
        return PcpResult(code).name
    except ValueError:
        return f"UNKNOWN_{code}"


# ---------------------------------------------------------------------- buffers


class Reader:
    """Bounds-checked big-endian reads over one datagram."""

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise DecodeError(
                f"truncated: {what} needs {n} bytes at offset {self.pos}, "
                f"message has {len(self.data)}")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        value: int = struct.unpack("!H", self.take(2, what))[0]
        return value

    def u32(self, what: str) -> int:
        value: int = struct.unpack("!I", self.take(4, what))[0]
        return value

    def ipv4(self, what: str) -> IPv4Address:
        return IPv4Address(self.take(4, what))

    def ipv6(self, what: str) -> IPv6Address:
        return IPv6Address(self.take(16, what))

    def rest(self) -> bytes:
        return self.take(self.remaining(), "rest")


class Writer:
    """Range-checked big-endian writes."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def u8(self, value: int, what: str) -> None:
        self._check(value, 0xFF, what)
        self.parts.append(bytes((value,)))

    def u16(self, value: int, what: str) -> None:
        self._check(value, 0xFFFF, what)
        self.parts.append(struct.pack("!H", value))

    def u32(self, value: int, what: str) -> None:
        self._check(value, 0xFFFFFFFF, what)
        self.parts.append(struct.pack("!I", value))

    def raw(self, value: bytes, size: int | None, what: str) -> None:
        if size is not None and len(value) != size:
            raise EncodeError(f"{what} must be {size} bytes, got {len(value)}")
        self.parts.append(bytes(value))

    def getvalue(self) -> bytes:
        return b"".join(self.parts)

    @staticmethod
    def _check(value: int, limit: int, what: str) -> None:
        if not isinstance(value, int) or not 0 <= value <= limit:
            raise EncodeError(f"{what} must be an integer 0..{limit}, got {value!r}")


def v4_mapped(address: IPv4Address) -> IPv6Address:
    """RFC 6887 §5: IPv4 addresses travel as IPv4-mapped IPv6 (::ffff:a.b.c.d)."""
    return IPv6Address(b"\x00" * 10 + b"\xff\xff" + address.packed)


def unmap(address: IPv6Address) -> IPv4Address | IPv6Address:
    """The IPv4 address inside an IPv4-mapped IPv6 address, else the IPv6 address."""
    mapped = address.ipv4_mapped
    return mapped if mapped is not None else address


# ---------------------------------------------------------------------- NAT-PMP


@dataclass(frozen=True)
class NatPmpExternalAddressRequest:
    """RFC 6886 §3.2: version 0, opcode 0 (2 bytes)."""

    def encode(self) -> bytes:
        return bytes((NATPMP_VERSION, NatPmpOpcode.EXTERNAL_ADDRESS))


@dataclass(frozen=True)
class NatPmpMapRequest:
    """RFC 6886 §3.3: opcode 1 (UDP) or 2 (TCP); lifetime 0 deletes (§3.4)."""

    opcode: int
    internal_port: int
    suggested_external_port: int
    lifetime: int

    def encode(self) -> bytes:
        if self.opcode not in (NatPmpOpcode.MAP_UDP, NatPmpOpcode.MAP_TCP):
            raise EncodeError(f"NAT-PMP map opcode must be 1 (UDP) or 2 (TCP), got {self.opcode}")
        w = Writer()
        w.u8(NATPMP_VERSION, "version")
        w.u8(self.opcode, "opcode")
        w.u16(0, "reserved")
        w.u16(self.internal_port, "internal port")
        w.u16(self.suggested_external_port, "suggested external port")
        w.u32(self.lifetime, "lifetime")
        return w.getvalue()


@dataclass(frozen=True)
class NatPmpExternalAddressResponse:
    """RFC 6886 §3.2: opcode 128, result, epoch (seconds since start), external address."""

    result: int
    epoch: int
    external_address: IPv4Address

    @property
    def result_name(self) -> str:
        return natpmp_result_name(self.result)

    def encode(self) -> bytes:
        w = Writer()
        w.u8(NATPMP_VERSION, "version")
        w.u8(RESPONSE_BIT | NatPmpOpcode.EXTERNAL_ADDRESS, "opcode")
        w.u16(self.result, "result")
        w.u32(self.epoch, "epoch")
        w.raw(self.external_address.packed, 4, "external address")
        return w.getvalue()


@dataclass(frozen=True)
class NatPmpMapResponse:
    """RFC 6886 §3.3: opcode 128 + request opcode; the granted port and lifetime."""

    opcode: int  # the request opcode (1 UDP, 2 TCP); the wire carries opcode + 128
    result: int
    epoch: int
    internal_port: int
    external_port: int
    lifetime: int

    @property
    def result_name(self) -> str:
        return natpmp_result_name(self.result)

    def encode(self) -> bytes:
        w = Writer()
        w.u8(NATPMP_VERSION, "version")
        w.u8(RESPONSE_BIT | self.opcode, "opcode")
        w.u16(self.result, "result")
        w.u32(self.epoch, "epoch")
        w.u16(self.internal_port, "internal port")
        w.u16(self.external_port, "external port")
        w.u32(self.lifetime, "lifetime")
        return w.getvalue()


@dataclass(frozen=True)
class NatPmpHeaderResponse:
    """An 8-byte NAT-PMP reply (RFC 6886 §3.5): unsupported version/opcode and the like."""

    opcode: int  # the request opcode (wire carries opcode + 128)
    result: int
    epoch: int

    @property
    def result_name(self) -> str:
        return natpmp_result_name(self.result)

    def encode(self) -> bytes:
        w = Writer()
        w.u8(NATPMP_VERSION, "version")
        w.u8(RESPONSE_BIT | self.opcode, "opcode")
        w.u16(self.result, "result")
        w.u32(self.epoch, "epoch")
        return w.getvalue()


@dataclass(frozen=True)
class PcpVersionZeroReply:
    """miniupnpd's answer to a PCP request it could not parse (see the module notes).

    Laid out like a PCP header with version 0: byte 1 is 0x80, byte 3 the PCP result code
    (normally MALFORMED_REQUEST), then lifetime, epoch and the echoed rest of the request.
    """

    opcode_byte: int
    reserved: int
    result: int
    lifetime: int
    epoch: int
    rest: bytes

    @property
    def result_name(self) -> str:
        return pcp_result_name(self.result)

    def natpmp_view(self) -> NatPmpExternalAddressResponse:
        """How a plain NAT-PMP client reads the first 12 bytes (a public-address reply)."""
        head = self.encode()
        return NatPmpExternalAddressResponse(
            result=struct.unpack("!H", head[2:4])[0], epoch=self.lifetime,
            external_address=IPv4Address(head[8:12]))

    def encode(self) -> bytes:
        w = Writer()
        w.u8(NATPMP_VERSION, "version")
        w.u8(self.opcode_byte, "opcode")
        w.u8(self.reserved, "reserved")
        w.u8(self.result, "result")
        w.u32(self.lifetime, "lifetime")
        w.u32(self.epoch, "epoch")
        w.raw(self.rest, None, "rest")
        return w.getvalue()


# ---------------------------------------------------------------------- PCP


@dataclass(frozen=True)
class PcpOption:
    """RFC 6887 §7.3: code, reserved, length, data padded to a multiple of 4."""

    code: int
    data: bytes = b""

    @property
    def optional(self) -> bool:
        """Codes 128-255 may be ignored by a server that does not know them."""
        return self.code >= 128

    def encode(self) -> bytes:
        w = Writer()
        w.u8(self.code, "option code")
        w.u8(0, "option reserved")
        w.u16(len(self.data), "option length")
        w.raw(self.data, None, "option data")
        w.raw(b"\x00" * (-len(self.data) % 4), None, "option padding")
        return w.getvalue()


@dataclass(frozen=True)
class MapData:
    """RFC 6887 §11.1: the MAP opcode body (36 bytes)."""

    nonce: bytes
    protocol: int
    internal_port: int
    external_port: int  # suggested in a request, assigned in a response
    external_address: IPv6Address = field(default_factory=lambda: v4_mapped(IPv4Address(0)))

    def encode(self) -> bytes:
        w = Writer()
        w.raw(self.nonce, NONCE_LEN, "mapping nonce")
        w.u8(self.protocol, "protocol")
        w.raw(b"\x00\x00\x00", 3, "reserved")
        w.u16(self.internal_port, "internal port")
        w.u16(self.external_port, "external port")
        w.raw(self.external_address.packed, 16, "external address")
        return w.getvalue()

    @classmethod
    def decode(cls, r: Reader) -> MapData:
        nonce = r.take(NONCE_LEN, "mapping nonce")
        protocol = r.u8("protocol")
        if r.take(3, "reserved") != b"\x00\x00\x00":
            raise DecodeError("MAP reserved bytes are not zero")
        return cls(nonce=nonce, protocol=protocol, internal_port=r.u16("internal port"),
                   external_port=r.u16("external port"), external_address=r.ipv6("external address"))


@dataclass(frozen=True)
class PeerData:
    """RFC 6887 §12.1: the PEER opcode body (56 bytes)."""

    map: MapData
    remote_peer_port: int
    remote_peer_address: IPv6Address

    def encode(self) -> bytes:
        w = Writer()
        w.raw(self.map.encode(), 36, "map part")
        w.u16(self.remote_peer_port, "remote peer port")
        w.u16(0, "reserved")
        w.raw(self.remote_peer_address.packed, 16, "remote peer address")
        return w.getvalue()

    @classmethod
    def decode(cls, r: Reader) -> PeerData:
        map_part = MapData.decode(r)
        port = r.u16("remote peer port")
        if r.u16("reserved") != 0:
            raise DecodeError("PEER reserved field is not zero")
        return cls(map=map_part, remote_peer_port=port, remote_peer_address=r.ipv6("remote peer address"))


OpcodeData = MapData | PeerData | bytes | None


def _encode_body(data: OpcodeData, options: tuple[PcpOption, ...]) -> bytes:
    body = b"" if data is None else data if isinstance(data, bytes) else data.encode()
    return body + b"".join(o.encode() for o in options)


def _decode_body(opcode: int, r: Reader) -> tuple[OpcodeData, tuple[PcpOption, ...]]:
    data: OpcodeData
    if r.remaining() == 0:
        return None, ()
    if opcode == PcpOpcode.MAP:
        data = MapData.decode(r)
    elif opcode == PcpOpcode.PEER:
        data = PeerData.decode(r)
    elif opcode == PcpOpcode.ANNOUNCE:
        data = None
    else:
        return r.rest(), ()  # unknown opcode: keep the body opaque
    options: list[PcpOption] = []
    while r.remaining():
        code = r.u8("option code")
        r.u8("option reserved")
        length = r.u16("option length")
        payload = r.take(length, f"option {code} data")
        r.take(-length % 4, f"option {code} padding")
        options.append(PcpOption(code, payload))
    return data, tuple(options)


def _check_pcp_length(data: bytes) -> None:
    if len(data) < PCP_HEADER_LEN:
        raise DecodeError(f"PCP message of {len(data)} bytes is shorter than the 24-byte header")
    if len(data) > PCP_MAX_LEN:
        raise DecodeError(f"PCP message of {len(data)} bytes is longer than 1100")
    if len(data) % 4:
        raise DecodeError(f"PCP message length {len(data)} is not a multiple of 4")


@dataclass(frozen=True)
class PcpRequest:
    """RFC 6887 §7.1 request header + opcode body + options."""

    opcode: int
    lifetime: int
    client_address: IPv6Address
    data: OpcodeData = None
    options: tuple[PcpOption, ...] = ()
    version: int = PCP_VERSION

    def encode(self) -> bytes:
        w = Writer()
        w.u8(self.version, "version")
        if self.opcode & RESPONSE_BIT:
            raise EncodeError(f"PCP request opcode must be < 128, got {self.opcode}")
        w.u8(self.opcode, "opcode")
        w.u16(0, "reserved")
        w.u32(self.lifetime, "lifetime")
        w.raw(self.client_address.packed, 16, "client address")
        w.raw(_encode_body(self.data, self.options), None, "body")
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> PcpRequest:
        _check_pcp_length(data)
        r = Reader(data)
        version = r.u8("version")
        opcode = r.u8("opcode")
        if opcode & RESPONSE_BIT:
            raise DecodeError("PCP message has the R bit set: it is a response, not a request")
        if r.u16("reserved") != 0:
            raise DecodeError("PCP request reserved field is not zero")
        lifetime = r.u32("lifetime")
        client = r.ipv6("client address")
        body, options = _decode_body(opcode, r)
        if opcode in (PcpOpcode.MAP, PcpOpcode.PEER) and body is None:
            raise DecodeError("PCP MAP/PEER request without its opcode body")
        return cls(opcode, lifetime, client, body, options, version)


@dataclass(frozen=True)
class PcpResponse:
    """RFC 6887 §7.2 response header + opcode body + options."""

    opcode: int  # without the R bit
    result: int
    lifetime: int
    epoch: int
    data: OpcodeData = None
    options: tuple[PcpOption, ...] = ()
    version: int = PCP_VERSION
    reserved: int = 0
    reserved_tail: bytes = b"\x00" * 12

    @property
    def result_name(self) -> str:
        return pcp_result_name(self.result)

    @property
    def external_address(self) -> IPv4Address | IPv6Address | None:
        if isinstance(self.data, MapData):
            return unmap(self.data.external_address)
        if isinstance(self.data, PeerData):
            return unmap(self.data.map.external_address)
        return None

    def encode(self) -> bytes:
        w = Writer()
        w.u8(self.version, "version")
        w.u8(RESPONSE_BIT | self.opcode, "opcode")
        w.u8(self.reserved, "reserved")
        w.u8(self.result, "result")
        w.u32(self.lifetime, "lifetime")
        w.u32(self.epoch, "epoch")
        w.raw(self.reserved_tail, 12, "reserved")
        w.raw(_encode_body(self.data, self.options), None, "body")
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> PcpResponse:
        _check_pcp_length(data)
        r = Reader(data)
        version = r.u8("version")
        opcode_byte = r.u8("opcode")
        if not opcode_byte & RESPONSE_BIT:
            raise DecodeError("PCP message without the R bit: it is a request, not a response")
        opcode = opcode_byte & 0x7F
        reserved = r.u8("reserved")
        result = r.u8("result")
        lifetime = r.u32("lifetime")
        epoch = r.u32("epoch")
        tail = r.take(12, "reserved")
        # Error responses may carry only the header (RFC 6887 §8.3 lets the server truncate).
        body, options = _decode_body(opcode, r)
        return cls(opcode, result, lifetime, epoch, body, options, version, reserved, tail)


Request = NatPmpExternalAddressRequest | NatPmpMapRequest | PcpRequest
Response = (NatPmpExternalAddressResponse | NatPmpMapResponse | NatPmpHeaderResponse
            | PcpVersionZeroReply | PcpResponse)


def decode_response(data: bytes) -> Response:
    """Any reply or announcement from a NAT-PMP/PCP server; DecodeError if unreadable."""
    if len(data) < 2:
        raise DecodeError(f"{len(data)}-byte datagram is too short for NAT-PMP or PCP")
    if data[0] != NATPMP_VERSION:
        return PcpResponse.decode(data)
    if not data[1] & RESPONSE_BIT:
        raise DecodeError("NAT-PMP message without the response bit (a request, not a reply)")
    if len(data) >= PCP_HEADER_LEN:
        r = Reader(data)
        r.take(2, "header")
        return PcpVersionZeroReply(opcode_byte=data[1], reserved=r.u8("reserved"), result=r.u8("result"),
                                   lifetime=r.u32("lifetime"), epoch=r.u32("epoch"), rest=r.rest())
    r = Reader(data)
    r.take(2, "header")
    opcode = data[1] & 0x7F
    result = r.u16("result")
    epoch = r.u32("epoch")
    if opcode == NatPmpOpcode.EXTERNAL_ADDRESS and r.remaining() >= 4:
        address = r.ipv4("external address")
        _no_trailing(r)
        return NatPmpExternalAddressResponse(result, epoch, address)
    if opcode in (NatPmpOpcode.MAP_UDP, NatPmpOpcode.MAP_TCP) and r.remaining() >= 8:
        internal, external, lifetime = r.u16("internal port"), r.u16("external port"), r.u32("lifetime")
        _no_trailing(r)
        return NatPmpMapResponse(opcode, result, epoch, internal, external, lifetime)
    _no_trailing(r)
    return NatPmpHeaderResponse(opcode, result, epoch)


def _no_trailing(r: Reader) -> None:
    if r.remaining():
        raise DecodeError(f"NAT-PMP reply has {r.remaining()} unexpected trailing bytes")


def decode_request(data: bytes) -> Request:
    """A client request (what a server or a test oracle sees); DecodeError if unreadable."""
    if len(data) < 2:
        raise DecodeError(f"{len(data)}-byte datagram is too short for NAT-PMP or PCP")
    if data[0] != NATPMP_VERSION:
        return PcpRequest.decode(data)
    opcode = data[1]
    if opcode == NatPmpOpcode.EXTERNAL_ADDRESS:
        if len(data) != 2:
            raise DecodeError(f"NAT-PMP external-address request must be 2 bytes, got {len(data)}")
        return NatPmpExternalAddressRequest()
    if opcode in (NatPmpOpcode.MAP_UDP, NatPmpOpcode.MAP_TCP):
        if len(data) != 12:
            raise DecodeError(f"NAT-PMP map request must be 12 bytes, got {len(data)}")
        r = Reader(data)
        r.take(2, "header")
        if r.u16("reserved") != 0:
            raise DecodeError("NAT-PMP map request reserved field is not zero")
        return NatPmpMapRequest(opcode, r.u16("internal port"), r.u16("suggested external port"),
                                r.u32("lifetime"))
    raise DecodeError(f"unknown NAT-PMP request opcode {opcode}")
