"""In-memory zone data and authoritative query answering.

How this works
--------------
A :class:`Zone` holds :class:`Node` objects keyed by ``dns.name.Name`` (whose hash and
equality ignore case, so lookups are case-insensitive while each node keeps the owner
name as first registered — case preserved). A node maps an rdata type to a dict of
:class:`Rec` (rdata, TTL, lease expiry, store row id) keyed by the rdata's canonical form
(RFC 4034 §6.2, what RFC 2136 compares), so a change to a 10,000-record RRset is O(1).
Names that exist only because something lives below them (empty non-terminals such
as ``_tcp.<zone>``) are counted in ``Zone.ent`` so that they answer NODATA, not NXDOMAIN (RFC 8020).

Server-owned records (SOA, NS, the name server's address, and the
``_dns-update-tls._tcp`` / ``_dns-push-tls._tcp`` SRV records) are synthesised from the
configuration and live in the same structure with ``rid = 0``; they are never stored.

:func:`answer` turns a parsed query into a response message (dnspython renders it).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import cast

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.SOA
import dns.rrset

SOA_TTL = 3600
NEGATIVE_TTL = 60
SERVER_TTL = 3600
NS_LABEL = "ns"
UPDATE_SRV = "_dns-update-tls._tcp"
PUSH_SRV = "_dns-push-tls._tcp"


class Rec:
    """One resource record: rdata, TTL, lease end (wall clock, None = permanent), row id.

    The rdata is kept as its uncompressed wire form (case preserved) and parsed when a
    query or a push needs it: a parsed rdata with a name costs ~400 bytes, its wire ~60,
    which is what keeps 10,000 registered hosts well under 150 MB.
    """

    __slots__ = ("expires", "rdtype", "rid", "ttl", "wire")

    def __init__(self, rdata: dns.rdata.Rdata | None, ttl: int, expires: float | None, rid: int,
                 *, wire: bytes = b"", rdtype: int = 0) -> None:
        if rdata is not None:
            wire, rdtype = rdata.to_wire() or b"", int(rdata.rdtype)
        self.wire = wire
        self.rdtype = rdtype
        self.ttl = ttl
        self.expires = expires
        self.rid = rid

    @property
    def rdata(self) -> dns.rdata.Rdata:
        rdtype = cast(dns.rdatatype.RdataType, self.rdtype)  # dnspython takes the int as is
        return dns.rdata.from_wire(dns.rdataclass.IN, rdtype, self.wire, 0, len(self.wire))

    def relet(self, ttl: int, expires: float | None) -> Rec:
        """The same record with a new TTL and lease end (the row id is kept)."""
        return Rec(None, ttl, expires, self.rid, wire=self.wire, rdtype=self.rdtype)


NameKey = tuple[bytes, ...]


def make_name(labels: tuple[bytes, ...]) -> dns.name.Name:
    """A ``dns.name.Name`` from labels already checked by a parser (absolute: ends with
    b"", each label ≤ 63 bytes, ≤ 255 in all): skips dnspython's per-label validation."""
    name = object.__new__(dns.name.Name)
    object.__setattr__(name, "labels", labels)
    return name


# dnspython's text form of a label byte (dns.name._escapify): specials get a backslash,
# printable ASCII stays, everything else is \DDD
_LABEL_TEXT = {c: ("\\" + chr(c) if chr(c) in '"().;\\@$' else chr(c) if 0x20 < c < 0x7F else f"\\{c:03d}")
               for c in range(256)}


def name_text(name: dns.name.Name) -> str:
    """``name.to_text()`` for an absolute name, without dnspython's per-character loop."""
    labels = name.labels
    if len(labels) < 2 or labels[-1]:
        return name.to_text()
    return ".".join([label.decode("latin-1").translate(_LABEL_TEXT) for label in labels])


def nkey(name: dns.name.Name) -> NameKey:
    """A dict key for a name: its lower-cased labels. ``dns.name.Name`` hashes in a Python
    loop over every character, on every lookup; a tuple of bytes hashes in C, cached."""
    return tuple([label.lower() for label in name.labels])


@dataclass(slots=True)
class Node:
    name: dns.name.Name
    rrsets: dict[int, dict[bytes, Rec]] = field(default_factory=dict)


@dataclass
class Zone:
    origin: dns.name.Name
    serial: int
    nodes: dict[NameKey, Node] = field(default_factory=dict)
    ent: dict[NameKey, int] = field(default_factory=dict)
    server_names: set[dns.name.Name] = field(default_factory=set)
    server_keys: set[NameKey] = field(default_factory=set)
    origin_text: str = field(init=False, default="")
    records: int = 0
    _labels: dict[bytes, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.origin_text = self.origin.to_text()

    _soa_cache: tuple[dns.name.Name, dns.name.Name] | None = None
    _soa_wire: tuple[bytes, bytes] | None = None

    @property
    def _soa_names(self) -> tuple[dns.name.Name, dns.name.Name]:
        if self._soa_cache is None:
            self._soa_cache = (dns.name.Name((NS_LABEL.encode(), *self.origin.labels)),
                               dns.name.Name((b"hostmaster", *self.origin.labels)))
        return self._soa_cache

    # -- structure ---------------------------------------------------------------------
    def node(self, name: dns.name.Name) -> Node | None:
        return self.nodes.get(nkey(name))

    def owner(self, name: dns.name.Name) -> dns.name.Name:
        """The stored spelling of ``name`` (case as first registered), else ``name``."""
        node = self.nodes.get(nkey(name))
        return name if node is None else node.name

    def add(self, name: dns.name.Name, rec: Rec, key: bytes | None = None, nk: NameKey | None = None) -> None:
        """Add (or replace) a record; ``key`` (its :func:`rec_key`) and ``nk`` (``nkey(name)``)
        when the caller has them already."""
        if nk is None:
            nk = nkey(name)
        node = self.nodes.get(nk)
        if node is None:
            node = Node(self._intern(name))
            labels = self._labels
            nk = tuple([labels.setdefault(label, label) for label in nk])  # shared label objects
            self.nodes[nk] = node
            self._ent_adjust(nk, +1)
        recs = node.rrsets.setdefault(rec.rdtype, {})
        if key is None:
            key = rec_key(rec)
        if key not in recs:
            self.records += 1
        recs[key] = rec

    def _intern(self, name: dns.name.Name) -> dns.name.Name:
        """The name rebuilt from shared label objects (``_tcp``, the zone's labels, ...)."""
        labels = self._labels
        return make_name(tuple([labels.setdefault(label, label) for label in name.labels]))

    def remove(self, name: dns.name.Name, rec: Rec) -> bool:
        nk = nkey(name)
        node = self.nodes.get(nk)
        if node is None:
            return False
        recs = node.rrsets.get(rec.rdtype)
        key = rec_key(rec)
        if not recs or recs.get(key) is not rec:
            return False
        del recs[key]
        self.records -= 1
        if not recs:
            del node.rrsets[rec.rdtype]
            if not node.rrsets:
                del self.nodes[nk]
                self._ent_adjust(nk, -1)
        return True

    def _ent_adjust(self, labels: NameKey, delta: int) -> None:
        """Count a name in each ancestor strictly between it and the apex (RFC 8020 ENTs)."""
        depth = len(labels) - len(self.origin)
        for i in range(1, depth):
            key = labels[i:]
            count = self.ent.get(key, 0) + delta
            if count <= 0:
                self.ent.pop(key, None)
            else:
                self.ent[key] = count

    def exists(self, name: dns.name.Name) -> bool:
        nk = nkey(name)
        return nk in self.nodes or nk in self.ent or name == self.origin

    def rrset(self, name: dns.name.Name, rdtype: int) -> dict[bytes, Rec]:
        """The live records of one RRset by canonical rdata (do not mutate; empty if none)."""
        node = self.nodes.get(nkey(name))
        if node is None:
            return {}
        return node.rrsets.get(rdtype, {})

    def holds(self, name: dns.name.Name, rec: Rec) -> bool:
        return self.rrset(name, rec.rdtype).get(rec_key(rec)) is rec

    def all_records(self) -> Iterator[tuple[dns.name.Name, Rec]]:
        for node in self.nodes.values():
            for recs in node.rrsets.values():
                for rec in recs.values():
                    yield node.name, rec

    # -- server-owned records ----------------------------------------------------------
    def soa_rdata(self) -> dns.rdata.Rdata:
        mname, rname = self._soa_names
        return dns.rdtypes.ANY.SOA.SOA(  # type: ignore[no-untyped-call]
            dns.rdataclass.IN, dns.rdatatype.SOA, mname, rname, self.serial, 3600, 600, 86400, NEGATIVE_TTL)

    def install_server_records(self, ns_addresses: list[str], tls_port: int | None) -> None:
        """(Re)create SOA, NS, the name server's address and the service SRV records."""
        for name in [self.origin, *self.server_names]:
            node = self.nodes.get(nkey(name))
            if node is None:
                continue
            for recs in list(node.rrsets.values()):
                for rec in list(recs.values()):
                    if rec.rid == 0:
                        self.remove(name, rec)
        self.server_names.clear()
        ns_name = dns.name.Name((NS_LABEL.encode(), *self.origin.labels))
        IN = dns.rdataclass.IN
        self._own(self.origin, self.soa_rdata(), SOA_TTL)
        self._own(self.origin, dns.rdata.from_text(IN, dns.rdatatype.NS, ns_name.to_text()), SERVER_TTL)
        for address in ns_addresses:
            rdtype = dns.rdatatype.AAAA if ":" in address else dns.rdatatype.A
            self._own(ns_name, dns.rdata.from_text(IN, rdtype, address), SERVER_TTL)
        self.server_names.add(ns_name)
        if tls_port is not None:
            for label in (UPDATE_SRV, PUSH_SRV):
                owner = dns.name.from_text(label, self.origin)
                srv = dns.rdata.from_text(IN, dns.rdatatype.SRV, f"0 0 {tls_port} {ns_name.to_text()}")
                self._own(owner, srv, SERVER_TTL)
                self.server_names.add(owner)
        self.server_keys = {nkey(name) for name in self.server_names}

    def _own(self, name: dns.name.Name, rdata: dns.rdata.Rdata, ttl: int) -> None:
        self.add(name, Rec(rdata, ttl, None, 0))

    def set_serial(self, serial: int) -> None:
        self.serial = serial
        node = self.nodes.get(nkey(self.origin))
        recs = node.rrsets.get(dns.rdatatype.SOA) if node is not None else None
        if recs:
            recs.clear()
            if self._soa_wire is None:
                mname, rname = self._soa_names
                self._soa_wire = ((mname.to_wire() or b"") + (rname.to_wire() or b""),
                                  mname.to_digestable() + rname.to_digestable())
            names, canonical = self._soa_wire
            numbers = struct.pack("!IIIII", serial, 3600, 600, 86400, NEGATIVE_TTL)
            # keyed like canon(self.soa_rdata()): the names lower-cased, then the numbers
            recs[canonical + numbers] = Rec(None, SOA_TTL, None, 0, wire=names + numbers,
                                            rdtype=dns.rdatatype.SOA)

    def soa_rrset(self, ttl: int | None = None) -> dns.rrset.RRset:
        rrset = dns.rrset.RRset(self.origin, dns.rdataclass.IN, dns.rdatatype.SOA)
        rrset.add(self.soa_rdata(), SOA_TTL if ttl is None else ttl)
        return rrset


def find_zone(zones: dict[dns.name.Name, Zone], name: dns.name.Name) -> Zone | None:
    """The served zone that holds ``name`` (closest enclosing origin)."""
    candidate = name
    while True:
        zone = zones.get(candidate)
        if zone is not None:
            return zone
        if len(candidate) <= 1:
            return None
        candidate = candidate.parent()


def canon(rdata: dns.rdata.Rdata) -> bytes:
    """The canonical wire form of an rdata (names lower-cased), the identity RFC 2136 uses."""
    return rdata.to_digestable()


_NAME_ONLY = frozenset({dns.rdatatype.PTR, dns.rdatatype.NS, dns.rdatatype.CNAME})
_OPAQUE = frozenset({dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.TXT})


def rec_key(rec: Rec) -> bytes:
    """:func:`canon` of a record, computed from its uncompressed wire form when the type
    allows: A/AAAA/TXT are their wire, a lone name is its wire lower-cased (label lengths
    are < 64, never ASCII letters), SRV is its 6 fixed bytes plus the lower-cased target."""
    if rec.rdtype in _OPAQUE:
        return rec.wire
    if rec.rdtype in _NAME_ONLY:
        return rec.wire.lower()
    if rec.rdtype == dns.rdatatype.SRV:
        return rec.wire[:6] + rec.wire[6:].lower()
    return canon(rec.rdata)


def to_rrset(name: dns.name.Name, rdtype: int, recs: dict[bytes, Rec]) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(name, dns.rdataclass.IN, dns.rdatatype.RdataType.make(rdtype))
    for rec in recs.values():
        rrset.add(rec.rdata, rec.ttl)
    # dnspython keeps the minimum TTL of the set, like an RRset should have (RFC 2181 §5.2)
    return rrset


REFUSED_QTYPES = frozenset({dns.rdatatype.ANY, dns.rdatatype.AXFR, dns.rdatatype.IXFR,
                            dns.rdatatype.MAILA, dns.rdatatype.MAILB})


def answer(zones: dict[dns.name.Name, Zone], query: dns.message.Message) -> dns.message.Message:
    """The authoritative response to a parsed standard query (one question)."""
    response = dns.message.make_response(query, our_payload=1232)
    question = query.question[0]
    qname, qtype = question.name, question.rdtype
    if question.rdclass not in (dns.rdataclass.IN, dns.rdataclass.ANY) or qtype in REFUSED_QTYPES:
        response.set_rcode(dns.rcode.REFUSED)
        return response
    zone = find_zone(zones, qname)
    if zone is None:
        response.set_rcode(dns.rcode.REFUSED)
        return response
    response.flags |= dns.flags.AA
    node = zone.node(qname)
    recs = node.rrsets.get(qtype) if node is not None else None
    if node is not None and recs:
        response.answer.append(to_rrset(qname, qtype, recs))
        _additional(zone, qtype, recs, response)
        return response
    if node is None and not zone.exists(qname):
        response.set_rcode(dns.rcode.NXDOMAIN)
    # NODATA and NXDOMAIN carry the SOA for negative caching (RFC 2308 §3)
    response.authority.append(zone.soa_rrset(ttl=NEGATIVE_TTL))
    return response


def _additional(zone: Zone, qtype: int, recs: dict[bytes, Rec], response: dns.message.Message) -> None:
    targets: list[dns.name.Name] = []
    if qtype in (dns.rdatatype.SRV, dns.rdatatype.NS) and len(recs) <= 20:
        targets = [rd.target for rd in (rec.rdata for rec in recs.values())]  # type: ignore[attr-defined]
    seen: set[dns.name.Name] = set()
    for target in targets:
        if target in seen:
            continue
        seen.add(target)
        node = zone.node(target)
        if node is None:
            continue
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            found = node.rrsets.get(rdtype)
            if found:
                response.additional.append(to_rrset(node.name, rdtype, found))
