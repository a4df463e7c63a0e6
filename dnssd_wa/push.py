"""DNS Push Notifications (RFC 8765) TLV codecs — sans-I/O, shared by server and client.

How this works
--------------
DNS Push runs over a DSO session (:mod:`dnssd_wa.dso`) on a TLS connection:

* ``SUBSCRIBE`` (acknowledged, nonzero message ID) carries one question: an uncompressed
  name, TYPE and CLASS (RFC 8765 §6.2). The server answers NOERROR (or NOTAUTH, REFUSED,
  ...) and then sends the current answers in a PUSH.
* ``PUSH`` (unidirectional, message ID 0) carries resource records in ordinary wire form,
  uncompressed (§6.3). TTL ``0xFFFFFFFF`` removes one record; ``0xFFFFFFFE`` with an
  empty RDATA removes a whole RRset (TYPE given), every RRset of a name (TYPE ANY), or of
  every class (CLASS ANY too). Anything else is an addition.
* ``UNSUBSCRIBE`` (unidirectional) carries the 2-byte message ID of the SUBSCRIBE (§6.4).

Records are rendered and parsed by dnspython (names, rdata); only the fixed RR fields
are packed here. Parse functions raise only :class:`dnssd_wa.dso.DsoError`.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.NS
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.IN.SRV
import dns.wire

from dnssd_wa.dso import DsoError, DsoType, Tlv

# dnspython loads rdata classes lazily; two threads racing through the first load of a
# type can leave GenericRdata cached for it. The types DNS-SD uses are imported up front.
_PRELOADED = (dns.rdtypes.ANY.CNAME, dns.rdtypes.ANY.NS, dns.rdtypes.ANY.PTR, dns.rdtypes.ANY.SOA,
              dns.rdtypes.ANY.TXT, dns.rdtypes.IN.A, dns.rdtypes.IN.AAAA, dns.rdtypes.IN.SRV)

TTL_REMOVE_ONE = 0xFFFFFFFF
TTL_REMOVE_MANY = 0xFFFFFFFE


@dataclass(frozen=True)
class Subscribe:
    """The question of a SUBSCRIBE TLV."""

    name: dns.name.Name
    rdtype: int
    rdclass: int = dns.rdataclass.IN

    def tlv(self) -> Tlv:
        fixed = struct.pack("!HH", self.rdtype, self.rdclass)
        return Tlv(DsoType.SUBSCRIBE, (self.name.to_wire() or b"") + fixed)

    @classmethod
    def from_tlv(cls, tlv: Tlv) -> Subscribe:
        if tlv.dtype != DsoType.SUBSCRIBE:
            raise DsoError(f"TLV {tlv.dtype} is not SUBSCRIBE")
        try:
            parser = dns.wire.Parser(tlv.value)
            name = parser.get_name()
            rdtype, rdclass = parser.get_struct("!HH")
        except (dns.exception.DNSException, struct.error, ValueError) as exc:
            raise DsoError(f"malformed SUBSCRIBE TLV: {exc}") from exc
        if parser.remaining():
            raise DsoError("SUBSCRIBE TLV has trailing bytes")
        return cls(name, rdtype, rdclass)


def unsubscribe_tlv(subscribe_id: int) -> Tlv:
    return Tlv(DsoType.UNSUBSCRIBE, struct.pack("!H", subscribe_id))


def parse_unsubscribe(tlv: Tlv) -> int:
    if tlv.dtype != DsoType.UNSUBSCRIBE or len(tlv.value) != 2:
        raise DsoError("UNSUBSCRIBE TLV must carry exactly a 2-byte message ID")
    return int(struct.unpack("!H", tlv.value)[0])


@dataclass(frozen=True)
class PushRecord:
    """One record of a PUSH TLV, interpreted.

    ``kind`` is ``"add"`` or ``"remove"``. For an individual removal ``rdata`` is the
    record removed; for a collective removal ``rdata`` is None and ``rdtype``/``rdclass``
    may be ANY.
    """

    kind: str
    name: dns.name.Name
    rdtype: int
    rdclass: int
    ttl: int
    rdata: dns.rdata.Rdata | None

    def render(self, out: io.BytesIO) -> None:
        self.name.to_wire(out)
        if self.kind == "add":
            ttl = self.ttl
        else:
            ttl = TTL_REMOVE_ONE if self.rdata is not None else TTL_REMOVE_MANY
        rdata = b"" if self.rdata is None else (self.rdata.to_wire() or b"")
        out.write(struct.pack("!HHIH", self.rdtype, self.rdclass, ttl, len(rdata)))
        out.write(rdata)


def add(name: dns.name.Name, rdata: dns.rdata.Rdata, ttl: int) -> PushRecord:
    return PushRecord("add", name, rdata.rdtype, rdata.rdclass, ttl, rdata)


def remove(name: dns.name.Name, rdata: dns.rdata.Rdata) -> PushRecord:
    return PushRecord("remove", name, rdata.rdtype, rdata.rdclass, TTL_REMOVE_ONE, rdata)


def push_tlv(records: Iterable[PushRecord]) -> Tlv:
    out = io.BytesIO()
    for record in records:
        record.render(out)
    return Tlv(DsoType.PUSH, out.getvalue())


def parse_push(tlv: Tlv) -> list[PushRecord]:
    """The records of a PUSH TLV (RFC 8765 §6.3.1)."""
    if tlv.dtype != DsoType.PUSH:
        raise DsoError(f"TLV {tlv.dtype} is not PUSH")
    records: list[PushRecord] = []
    try:
        parser = dns.wire.Parser(tlv.value)
        while parser.remaining():
            name = parser.get_name()
            rdtype, rdclass, ttl, rdlen = parser.get_struct("!HHIH")
            if ttl == TTL_REMOVE_MANY:
                if rdlen:
                    raise DsoError("collective PUSH removal must have an empty RDATA")
                records.append(PushRecord("remove", name, rdtype, rdclass, ttl, None))
                continue
            with parser.restrict_to(rdlen):
                rdata = dns.rdata.from_wire_parser(rdclass, rdtype, parser)
            kind = "remove" if ttl == TTL_REMOVE_ONE else "add"
            records.append(PushRecord(kind, name, rdtype, rdclass, ttl, rdata))
    except DsoError:
        raise
    except Exception as exc:  # dnspython raises many classes for bad rdata; all are "malformed"
        raise DsoError(f"malformed PUSH TLV: {type(exc).__name__}: {exc}") from exc
    return records
