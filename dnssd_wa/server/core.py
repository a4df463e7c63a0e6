"""The server core: one DNS message in, one response out (queries and RFC 2136 UPDATEs).

How this works
--------------
:meth:`ServerCore.handle` takes the bytes of one message, the transport it came on and
the wall-clock ``now``, and returns the response bytes (or None to drop). A signed UPDATE
of the usual shape (what btmm-register and nsupdate send) takes the fast path first:
``fastwire`` parses it, checks its TSIG and renders the signed answer by hand, byte for
byte what dnspython would render. Everything else — and any UPDATE the fast path declines,
TSIG failures included — is parsed and rendered by dnspython. Both parsers feed the same
:class:`UpdateRequest` to the same UPDATE logic, so rcodes and effects cannot differ.
Anything that does not parse gets FORMERR when a header is readable and it is a request;
responses and runts are dropped. The log line of an UPDATE is written after the answer
(``log_later``, set by the server to the event loop's ``call_soon``).

UPDATE (RFC 2136 §3) runs in the order BIND uses, so clients see the same rcodes:

1. TSIG (RFC 8945): unknown key or algorithm → NOTAUTH + BADKEY, bad MAC → NOTAUTH +
   BADSIG (both unsigned), clock skew → NOTAUTH + BADTIME signed, with the server time in
   Other Data. A MAC seen before within the fudge window (a replay) → REFUSED.
2. Zone section: a zone not served here → NOTAUTH. Unsigned → REFUSED. Over the key's
   rate limit → REFUSED.
3. Prerequisites (§3.2) → NOTZONE / NXDOMAIN / YXDOMAIN / NXRRSET / YXRRSET.
4. Prescan (§3.4.1) → NOTZONE / FORMERR, then policy: a key may change only its own zone,
   only PTR SRV TXT A AAAA, never the apex or the server's own names → REFUSED.
5. The changes are computed on a copy, committed to SQLite in one transaction (durable
   before we answer), then applied in memory; subscribers get PUSH messages.

Update Lease (RFC 9664, EDNS option 2): the 4-byte LEASE or 8-byte LEASE + KEY-LEASE form
is clamped to ``[lease_min, lease_max]``, applied to every record the UPDATE adds or
refreshes, and echoed in the same form. Records added without the option are permanent.

The UDP answer cache maps the bytes of a query after its ID to the bytes of the answer
after its ID; it is rebuilt from scratch after every change (see ``net.py``).
"""

from __future__ import annotations

import heapq
import itertools
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.update
import dns.wire

from dnssd_wa import push
from dnssd_wa.server import fastwire
from dnssd_wa.server.keys import KeyEntry, RateLimiter
from dnssd_wa.server.store import Change, Store
from dnssd_wa.server.zone import NameKey, Rec, Zone, answer, find_zone, make_name, name_text, nkey, rec_key

LEASE_OPTION = 2
LEASE_OTYPE = dns.edns.OptionType.make(LEASE_OPTION)
ALLOWED_TYPES = frozenset({dns.rdatatype.PTR, dns.rdatatype.SRV, dns.rdatatype.TXT,
                           dns.rdatatype.A, dns.rdatatype.AAAA})
META_TYPES = frozenset({dns.rdatatype.ANY, dns.rdatatype.AXFR, dns.rdatatype.IXFR, dns.rdatatype.MAILA,
                        dns.rdatatype.MAILB, dns.rdatatype.OPT, dns.rdatatype.TSIG, dns.rdatatype.TKEY})
UDP_CACHE_MAX = 20000

PushCallback = Callable[[list[push.PushRecord]], None]
LogCallback = Callable[[dict[str, Any]], None]


@dataclass
class Config:
    lease_min: int = 60
    lease_max: int = 7 * 86400
    rate: float = 50.0
    burst: float = 200.0
    ns_addresses: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    tls_port: int | None = None


class UpdateFailed(Exception):
    def __init__(self, rcode: int, why: str) -> None:
        super().__init__(why)
        self.rcode = rcode
        self.why = why


@dataclass
class _Work:
    """One RRset during an UPDATE: the live records plus this update's overlay.

    ``overlay`` maps canonical rdata to the record's new state (None = deleted);
    ``cleared`` means the whole live RRset was deleted first. Nothing live is touched
    until the change is durable.
    """

    name: dns.name.Name
    rdtype: int
    base: dict[bytes, Rec]
    nk: NameKey
    overlay: dict[bytes, Rec | None] = field(default_factory=dict)
    cleared: bool = False

    def get(self, key: bytes) -> Rec | None:
        if key in self.overlay:
            return self.overlay[key]
        return None if self.cleared else self.base.get(key)

    def clear(self) -> None:
        self.cleared = True
        self.overlay.clear()

    def deleted(self) -> list[Rec]:
        keys = self.base.keys() if self.cleared else self.overlay.keys() & self.base.keys()
        out = []
        for key in keys:
            new = self.get(key)
            if new is None or new.rid != self.base[key].rid:
                out.append(self.base[key])
        return out



@dataclass(slots=True)
class UpRR:
    """One prerequisite or update RR (RFC 2136 reads one RR per RRset). ``deleting`` is
    None (class IN), NONE or ANY; ``wire`` is the uncompressed rdata (b"" when empty) and
    ``key`` its canonical form (RFC 4034 §6.2), the identity RFC 2136 compares."""

    name: dns.name.Name
    rdtype: int
    deleting: int | None
    ttl: int
    wire: bytes
    key: bytes


@dataclass(slots=True)
class UpdateRequest:
    """What the UPDATE logic needs, from either parser (dnspython or ``fastwire``)."""

    zones: list[tuple[dns.name.Name, int]]
    prereqs: list[UpRR]
    updates: list[UpRR]
    lease: bytes | None  # value of the first Update Lease option
    mac: bytes
    keyname: dns.name.Name | None


def _message_request(msg: dns.message.Message) -> UpdateRequest:
    def rrs(section: list[dns.rrset.RRset]) -> list[UpRR]:
        out = []
        for rrset in section:
            deleting = None if rrset.deleting is None else int(rrset.deleting)
            if not rrset:
                out.append(UpRR(rrset.name, int(rrset.rdtype), deleting, rrset.ttl, b"", b""))
            for rd in rrset:
                rec = Rec(rd, rrset.ttl, None, 0)
                out.append(UpRR(rrset.name, int(rrset.rdtype), deleting, rrset.ttl, rec.wire, rec_key(rec)))
        return out

    lease = None
    for option in msg.options:
        if option.otype == LEASE_OPTION:
            lease = option.to_wire() or b""
            break
    return UpdateRequest([(q.name, int(q.rdtype)) for q in msg.question], rrs(msg.answer), rrs(msg.authority),
                         lease, msg.mac or b"", msg.keyname)


def _fast_rr(rr: fastwire.WireRR) -> UpRR:
    wire = rr.rdata
    if wire is None:
        return UpRR(make_name(rr.labels), rr.rdtype, rr.deleting, rr.ttl, b"", b"")
    rdtype = rr.rdtype
    if rdtype == fastwire.TYPE_PTR:
        key = wire.lower()
    elif rdtype == fastwire.TYPE_SRV:
        key = wire[:6] + wire[6:].lower()
    else:  # A, AAAA, TXT
        key = wire
    return UpRR(make_name(rr.labels), rdtype, rr.deleting, rr.ttl, wire, key)


_RCODE_TEXT = {int(rc): dns.rcode.to_text(rc) for rc in dns.rcode.Rcode}


def _next_serial(serial: int) -> int:
    return serial % 0xFFFFFFFF + 1


class ServerCore:
    def __init__(self, store: Store, origins: list[dns.name.Name], keys: list[KeyEntry],
                 config: Config, now: float, log: LogCallback | None = None) -> None:
        self.store = store
        self.config = config
        self.keys: dict[dns.name.Name, KeyEntry] = {entry.name: entry for entry in keys}
        self._keys_by_labels = {nkey(entry.name): entry for entry in keys}
        self.fast_path = True  # tests turn it off to compare both paths
        self.fast_answers = 0
        self.limiter = RateLimiter(config.rate, config.burst)
        self.log: LogCallback = log or (lambda event: None)
        self.zones: dict[dns.name.Name, Zone] = {}
        self.udp_cache: dict[bytes, bytes] = {}
        self.subs: dict[tuple[dns.name.Name, int], dict[int, PushCallback]] = {}
        self._sub_ids = itertools.count(1)
        self._leases: list[tuple[float, int, Zone, dns.name.Name, Rec]] = []
        self._lease_seq = itertools.count()
        self._seen_macs: dict[bytes, float] = {}  # insertion-ordered: oldest first
        self.on_schedule: Callable[[], None] = lambda: None
        self.log_later: Callable[[Callable[[], None]], object] | None = None
        self.purged = store.purge_expired(now)
        for origin in origins:
            fresh = Zone(origin, store.ensure_zone(origin.to_text(), now))
            fresh.install_server_records(config.ns_addresses, config.tls_port)
            self.zones[origin] = fresh
        self._zones_by_key = {nkey(origin): zone for origin, zone in self.zones.items()}
        by_text = {origin.to_text(): zone for origin, zone in self.zones.items()}
        self.orphans = 0
        for stored in store.load():
            zone = by_text.get(stored.zone)
            if zone is None:
                self.orphans += 1
                continue
            rec = Rec(None, stored.ttl, stored.expires, stored.rid, wire=stored.wire, rdtype=stored.rdtype)
            zone.add(stored.owner, rec)
            if rec.expires is not None:
                self._schedule(zone, stored.owner, rec)

    # -- entry point -------------------------------------------------------------------
    def handle(self, wire: bytes, transport: str, now: float, peer: str = "") -> bytes | None:
        """Response bytes for one request, or None to drop it."""
        if len(wire) < 12:
            return None
        if wire[2] & 0xF8 == 0x28 and self.fast_path:  # QR clear, opcode UPDATE: the fast path first
            fast = self._fast_update(wire, transport, now, peer)
            if fast is not None:
                self.fast_answers += 1
                return fast
        tsig_failure = 0
        try:  # one parse; dnspython verifies a TSIG on the way (RFC 8945 §5.2)
            msg = dns.message.from_wire(wire, keyring=self._key_for)
        except (dns.message.UnknownTSIGKey, dns.tsig.BadKey, dns.tsig.BadAlgorithm):
            tsig_failure = dns.rcode.BADKEY
        except dns.tsig.BadTime:
            tsig_failure = dns.rcode.BADTIME
        except (dns.tsig.BadSignature, dns.tsig.PeerError):
            tsig_failure = dns.rcode.BADSIG
        except Exception:  # dnspython raises many classes for malformed input
            return self._formerr(wire)
        if tsig_failure:
            try:
                msg = dns.message.from_wire(wire, keyring=False)
            except Exception:
                return self._formerr(wire)
        if msg.flags & dns.flags.QR:
            return None
        entry = self.keys.get(msg.keyname) if msg.keyname is not None and not tsig_failure else None
        try:
            if tsig_failure:
                response = self._tsig_failure(msg, tsig_failure, now, peer)
            else:
                response = self._dispatch(msg, entry, transport, now, peer)
        except dns.exception.DNSException:
            response = self._plain_error(msg, dns.rcode.FORMERR)
        if transport == "udp":
            max_size = max(512, msg.payload) if msg.edns >= 0 else 512
        else:
            max_size = 65535
        try:
            out = response.to_wire(max_size=max_size, prefer_truncation=True)
        except dns.exception.TooBig:
            out = self._plain_error(msg, dns.rcode.SERVFAIL).to_wire()
        if transport == "udp" and not msg.had_tsig and msg.opcode() == dns.opcode.QUERY:
            if len(self.udp_cache) >= UDP_CACHE_MAX:
                self.udp_cache = {}  # full (many distinct questions): start over
            self.udp_cache[wire[2:]] = out[2:]
        return out

    def _key_for(self, _msg: dns.message.Message, name: dns.name.Name) -> dns.tsig.Key | None:
        entry = self.keys.get(name)
        return entry.key if entry is not None else None

    def _formerr(self, wire: bytes) -> bytes | None:
        try:
            msg_id, flags = dns.wire.Parser(wire).get_struct("!HH")
        except Exception:
            return None
        if flags & dns.flags.QR:
            return None
        response = dns.message.Message(id=msg_id)
        response.flags = dns.flags.Flag(dns.flags.QR | (flags & dns.flags.RD))
        response.set_opcode(dns.opcode.from_flags(flags))
        response.set_rcode(dns.rcode.FORMERR)
        return response.to_wire()

    def _plain_error(self, msg: dns.message.Message, rcode: int) -> dns.message.Message:
        response = dns.message.make_response(msg)
        response.set_rcode(dns.rcode.Rcode.make(rcode))
        return response

    def _dispatch(self, msg: dns.message.Message, entry: KeyEntry | None, transport: str, now: float,
                  peer: str) -> dns.message.Message:
        opcode = msg.opcode()
        if opcode == dns.opcode.UPDATE and isinstance(msg, dns.update.UpdateMessage):
            return self._update(msg, entry, now, peer)
        if opcode != dns.opcode.QUERY:
            return self._plain_error(msg, dns.rcode.NOTIMP)
        if len(msg.question) != 1 or msg.answer or msg.authority:
            return self._plain_error(msg, dns.rcode.FORMERR)
        if msg.edns > 0:
            response = dns.message.make_response(msg)
            response.set_rcode(dns.rcode.BADVERS)
            return response
        response = answer(self.zones, msg)
        if entry is not None:
            self._sign(response, msg, entry)
        return response

    # -- TSIG ----------------------------------------------------------------------------
    def _tsig_failure(self, msg: dns.message.Message, error: int, now: float,
                      peer: str) -> dns.message.Message:
        """The NOTAUTH answer to a request whose TSIG did not verify (RFC 8945 §5.2)."""
        entry = self.keys.get(msg.keyname) if msg.keyname is not None else None
        if error == dns.rcode.BADTIME and entry is not None:
            response = dns.message.make_response(msg)
            response.set_rcode(dns.rcode.NOTAUTH)
            response.use_tsig(entry.key, tsig_error=dns.rcode.BADTIME,
                              other_data=struct.pack("!Q", int(now))[2:])
            response.request_mac = msg.mac or b""
        else:
            response = self._tsig_error(msg, error)
        if msg.opcode() == dns.opcode.UPDATE:
            why = {17: "BADKEY", 18: "BADTIME"}.get(int(error), "BADSIG")
            self._log_update(msg, peer, None, dns.rcode.NOTAUTH, f"TSIG {why}")
        return response

    def _tsig_error(self, msg: dns.message.Message, error: int) -> dns.message.Message:
        """NOTAUTH with an unsigned TSIG RR carrying ``error`` (RFC 8945 §5.3.2)."""
        response = dns.message.make_response(msg)
        response.set_rcode(dns.rcode.NOTAUTH)
        if msg.tsig:
            old = msg.tsig[0]
            rdata = old.replace(mac=b"", error=error, other=b"")
            response.tsig = dns.rrset.from_rdata(msg.tsig.name, 0, rdata)
        return response

    def _sign(self, response: dns.message.Message, msg: dns.message.Message, entry: KeyEntry) -> None:
        response.use_tsig(entry.key)
        response.request_mac = msg.mac or b""

    # -- UPDATE --------------------------------------------------------------------------
    def _fast_update(self, wire: bytes, transport: str, now: float, peer: str) -> bytes | None:
        """The UPDATE answered without dnspython (see ``fastwire.py``), or None when the
        message is not of the common shape or its TSIG does not verify as it stands: the
        general path then handles it, errors included."""
        fast = fastwire.parse_update(wire)
        if fast is None:
            return None
        entry = self._keys_by_labels.get(tuple([label.lower() for label in fast.key]))
        if entry is None or entry.key.algorithm != dns.tsig.HMAC_SHA256:
            return None
        key_labels = entry.key.name.labels
        if transport == "udp" and sum(map(len, fast.zone)) + sum(map(len, key_labels)) + 2 * (
                len(fast.zone) + len(key_labels)) + 110 > 512:
            return None  # could need truncation: leave that to dnspython
        if not fastwire.tsig_valid(wire, fast, entry.key.secret, int(now)):
            return None
        req = UpdateRequest(
            [(make_name(fast.zone), dns.rdatatype.SOA)],
            [_fast_rr(rr) for rr in fast.prereqs], [_fast_rr(rr) for rr in fast.updates],
            fast.lease, fast.mac, entry.name)
        plain = (8192, b"") if fast.edns else None
        try:
            zone, summary, lease_value = self._apply_update(req, entry, now)
        except UpdateFailed as failed:
            self._log_update(req, peer, entry, failed.rcode, failed.why)
            return fastwire.build_response(fast, failed.rcode, plain, key_labels, entry.key.secret, int(now))
        except dns.exception.DNSException:
            return fastwire.build_response(fast, dns.rcode.FORMERR, plain, key_labels, entry.key.secret,
                                           int(now))
        self._log_update(req, peer, entry, dns.rcode.NOERROR, summary, zone=zone)
        opt = plain if lease_value is None else (1232, struct.pack("!HH", LEASE_OPTION, len(lease_value))
                                                 + lease_value)
        return fastwire.build_response(fast, dns.rcode.NOERROR, opt, key_labels, entry.key.secret, int(now))

    def _update(self, msg: dns.update.UpdateMessage, entry: KeyEntry | None, now: float,
                peer: str) -> dns.message.Message:
        response = dns.message.make_response(msg)
        if entry is not None:
            self._sign(response, msg, entry)
        req = _message_request(msg)
        try:
            zone, summary, lease_value = self._apply_update(req, entry, now)
        except UpdateFailed as failed:
            response.set_rcode(dns.rcode.Rcode.make(failed.rcode))
            self._log_update(req, peer, entry, failed.rcode, failed.why)
            return response
        if lease_value is not None:
            response.use_edns(0, 0, 1232, options=[dns.edns.GenericOption(LEASE_OTYPE, lease_value)])
        self._log_update(req, peer, entry, dns.rcode.NOERROR, summary, zone=zone)
        return response

    def _log_update(self, req: UpdateRequest | dns.message.Message, peer: str, entry: KeyEntry | None,
                    rcode: int, what: str | Callable[[], str], zone: Zone | None = None) -> None:
        """One log line per UPDATE. With ``log_later`` set (the server sets the event loop's
        ``call_soon``), the line is formatted and written after the answer was sent."""
        serial = zone.serial if zone else None

        def emit() -> None:
            request = _message_request(req) if isinstance(req, dns.message.Message) else req
            if zone is not None:
                zone_name = zone.origin_text
            else:
                zone_name = request.zones[0][0].to_text() if request.zones else "?"
            key = entry.name_text if entry else (request.keyname.to_text() if request.keyname else None)
            self.log({"event": "update", "client": peer, "key": key, "zone": zone_name,
                      "rcode": _RCODE_TEXT.get(rcode) or dns.rcode.to_text(dns.rcode.Rcode.make(rcode)),
                      "what": what if isinstance(what, str) else what(), "serial": serial})

        if self.log_later is None:
            emit()
        else:
            self.log_later(emit)

    def _apply_update(self, req: UpdateRequest, entry: KeyEntry | None,
                      now: float) -> tuple[Zone, Callable[[], str], bytes | None]:
        if len(req.zones) != 1 or req.zones[0][1] != dns.rdatatype.SOA:
            raise UpdateFailed(dns.rcode.FORMERR, "zone section must hold exactly one SOA question")
        found = self._zones_by_key.get(nkey(req.zones[0][0]))
        if found is None:
            raise UpdateFailed(dns.rcode.NOTAUTH, f"zone {req.zones[0][0]} is not served here")
        zone = found
        if entry is None:
            raise UpdateFailed(dns.rcode.REFUSED, "unsigned update")
        mac = req.mac
        while self._seen_macs:
            oldest = next(iter(self._seen_macs))
            if self._seen_macs[oldest] > now - 600:
                break
            del self._seen_macs[oldest]
        if mac in self._seen_macs:
            raise UpdateFailed(dns.rcode.REFUSED, "replayed update (TSIG MAC seen before)")
        if not self.limiter.allow(entry.name, now):
            raise UpdateFailed(dns.rcode.REFUSED, "rate limit for this key exceeded")
        self._seen_macs[mac] = now
        self._check_prereqs(zone, req.prereqs)
        keys = self._prescan(zone, req.updates, entry)
        lease, value = self._lease(req.lease)
        expires = None if lease is None else now + lease
        works = self._compute(zone, req.updates, keys, expires)
        summary = self._commit(zone, works)
        if lease is None:
            return zone, summary, value
        return zone, lambda: f"{summary()} lease={lease}s", value

    def _lease(self, data: bytes | None) -> tuple[int | None, bytes | None]:
        """The granted lease and the option value to echo (same form as asked)."""
        if data is None:
            return None, None
        if len(data) == 4:
            (lease,) = struct.unpack("!I", data)
            granted = self._clamp(lease)
            return granted, struct.pack("!I", granted)
        if len(data) == 8:
            lease, key_lease = struct.unpack("!II", data)
            granted = self._clamp(lease)
            return granted, struct.pack("!II", granted, max(granted, self._clamp(key_lease)))
        raise UpdateFailed(dns.rcode.FORMERR, f"Update Lease option of {len(data)} bytes")

    def _clamp(self, value: int) -> int:
        return max(self.config.lease_min, min(self.config.lease_max, value))

    def _check_prereqs(self, zone: Zone, prereqs: list[UpRR]) -> None:
        wanted: dict[tuple[NameKey, int], tuple[dns.name.Name, set[bytes]]] = {}
        for rr in prereqs:
            name, rdtype = rr.name, rr.rdtype
            if not name.is_subdomain(zone.origin):
                raise UpdateFailed(dns.rcode.NOTZONE, f"prerequisite name {name} is outside the zone")
            in_use = zone.node(name) is not None
            if rr.deleting == dns.rdataclass.ANY:
                if rdtype == dns.rdatatype.ANY:
                    if not in_use:
                        raise UpdateFailed(dns.rcode.NXDOMAIN, f"prerequisite: {name} not in use")
                elif not zone.rrset(name, rdtype):
                    raise UpdateFailed(dns.rcode.NXRRSET, f"prerequisite: {name} {_t(rdtype)} absent")
            elif rr.deleting == dns.rdataclass.NONE:
                if rdtype == dns.rdatatype.ANY:
                    if in_use:
                        raise UpdateFailed(dns.rcode.YXDOMAIN, f"prerequisite: {name} in use")
                elif zone.rrset(name, rdtype):
                    raise UpdateFailed(dns.rcode.YXRRSET, f"prerequisite: {name} {_t(rdtype)} exists")
            else:
                if rr.ttl != 0 or rdtype in META_TYPES:
                    raise UpdateFailed(dns.rcode.FORMERR, "value prerequisite with TTL or meta type")
                wanted.setdefault((nkey(name), rdtype), (name, set()))[1].add(rr.key)
        for (_, rdtype), (name, want) in wanted.items():
            if set(zone.rrset(name, rdtype)) != want:  # live records are keyed by canonical rdata
                raise UpdateFailed(dns.rcode.NXRRSET, f"prerequisite: {name} {_t(rdtype)} differs")

    def _prescan(self, zone: Zone, updates: list[UpRR], entry: KeyEntry) -> list[NameKey]:
        origin = nkey(zone.origin)
        keys = [nkey(rr.name) for rr in updates]
        for rr, nk in zip(updates, keys, strict=True):
            rdtype = rr.rdtype
            if len(nk) < len(origin) or nk[len(nk) - len(origin):] != origin:
                raise UpdateFailed(dns.rcode.NOTZONE, f"{rr.name} is outside zone {zone.origin}")
            if rr.deleting is None and rdtype in META_TYPES:
                raise UpdateFailed(dns.rcode.FORMERR, f"cannot add type {_t(rdtype)}")
            if rr.deleting == dns.rdataclass.NONE and (rr.ttl != 0 or rdtype in META_TYPES):
                raise UpdateFailed(dns.rcode.FORMERR, "delete-one with TTL or meta type")
            if rr.deleting == dns.rdataclass.ANY and rdtype in META_TYPES - {dns.rdatatype.ANY}:
                raise UpdateFailed(dns.rcode.FORMERR, f"cannot delete type {_t(rdtype)}")
        if updates and entry.zone is not zone.origin and entry.zone != zone.origin:
            raise UpdateFailed(dns.rcode.REFUSED, f"key {entry.name} may not update zone {zone.origin}")
        for rr, nk in zip(updates, keys, strict=True):
            rdtype = rr.rdtype
            if nk == origin or nk in zone.server_keys:
                raise UpdateFailed(dns.rcode.REFUSED, f"{rr.name} is the apex or a server-owned name")
            if rdtype not in ALLOWED_TYPES and not (
                    rr.deleting == dns.rdataclass.ANY and rdtype == dns.rdatatype.ANY):
                raise UpdateFailed(dns.rcode.REFUSED, f"type {_t(rdtype)} is not allowed by policy")
        return keys

    def _compute(self, zone: Zone, updates: list[UpRR], keys: list[NameKey],
                 expires: float | None) -> list[_Work]:
        works: dict[tuple[NameKey, int], _Work] = {}
        nodes = zone.nodes

        def work(name: dns.name.Name, nk: NameKey, rdtype: int) -> _Work:
            found = works.get((nk, rdtype))
            if found is None:
                node = nodes.get(nk)
                if node is None:
                    found = _Work(name, rdtype, {}, nk)
                else:
                    found = _Work(node.name, rdtype, node.rrsets.get(rdtype, {}), nk)
                works[(nk, rdtype)] = found
            return found

        for rr, nk in zip(updates, keys, strict=True):
            name, rdtype = rr.name, rr.rdtype
            if rr.deleting is None:
                w = work(name, nk, rdtype)
                key = rr.key
                old = w.get(key)
                if old is not None and old.rid:
                    w.overlay[key] = old.relet(rr.ttl, expires)
                else:
                    w.overlay[key] = Rec(None, rr.ttl, expires, 0, wire=rr.wire, rdtype=rdtype)
            elif rr.deleting == dns.rdataclass.ANY:
                if rdtype == dns.rdatatype.ANY:
                    node = nodes.get(nk)
                    types = set(node.rrsets) if node else set()
                    types |= {t for (n, t) in works if n == nk}
                    for t in types:
                        work(name, nk, t).clear()
                else:
                    work(name, nk, rdtype).clear()
            else:
                w = work(name, nk, rdtype)
                if w.get(rr.key) is not None:
                    w.overlay[rr.key] = None
        return list(works.values())

    def _commit(self, zone: Zone, works: list[_Work]) -> Callable[[], str]:
        """Store the change durably, then apply it in memory; returns the log summary (lazily:
        the log line is written after the answer went out)."""
        zone_text = zone.origin.to_text()
        inserts: list[tuple[str, dns.name.Name, int, bytes, int, float | None]] = []
        new_recs: list[tuple[dns.name.Name, Rec, bytes, NameKey]] = []
        deletes: list[tuple[dns.name.Name, Rec]] = []
        updates: list[tuple[dns.name.Name, Rec, Rec]] = []  # name, live record, new state
        changed_ttl = False
        for w in works:
            deletes.extend((w.name, rec) for rec in w.deleted())
            for key, rec in w.overlay.items():
                if rec is None:
                    continue
                if not rec.rid:
                    inserts.append((zone_text, w.name, rec.rdtype, rec.wire, rec.ttl, rec.expires))
                    new_recs.append((w.name, rec, key, w.nk))
                    continue
                live = w.base[key]
                if (live.ttl, live.expires) != (rec.ttl, rec.expires):
                    updates.append((w.name, live, rec))
                    changed_ttl = changed_ttl or live.ttl != rec.ttl
        changed = bool(inserts or deletes or changed_ttl)
        if not (inserts or deletes or updates):
            return lambda: "no change"
        serial = _next_serial(zone.serial) if changed else zone.serial
        ids = self.store.apply(Change(inserts, [rec.rid for _, rec in deletes],
                                      [(live.rid, new.ttl, new.expires) for _, live, new in updates],
                                      {zone_text: serial} if changed else {}))
        # durable: now change memory
        pushes: list[push.PushRecord] = []
        watched = bool(self.subs)
        for name, rec in deletes:
            zone.remove(name, rec)
            if watched:
                pushes.append(push.remove(name, rec.rdata))
        for name, live, new in updates:
            live.ttl, live.expires = new.ttl, new.expires
            if live.expires is not None:
                self._schedule(zone, name, live)
        for (name, rec, key, nk), rid in zip(new_recs, ids, strict=True):
            rec.rid = rid
            zone.add(name, rec, key, nk)
            if rec.expires is not None:
                self._schedule(zone, name, rec)
            if watched:
                pushes.append(push.add(zone.owner(name), rec.rdata, rec.ttl))
        if changed:
            zone.set_serial(serial)
            self.udp_cache = {}
        self._notify(pushes)

        def summary() -> str:
            parts = [f"add {name_text(n)} {_t(r.rdtype)}" for n, r, _, _ in new_recs[:6]]
            parts += [f"del {name_text(n)} {_t(r.rdtype)}" for n, r in deletes[:6]]
            total = len(new_recs) + len(deletes)
            if updates and not parts:
                parts.append(f"refresh {len(updates)} records")
            return "; ".join(parts[:6]) + (f"; … ({total} changes)" if total > 6 else "")

        return summary

    # -- leases ----------------------------------------------------------------------------
    def _schedule(self, zone: Zone, name: dns.name.Name, rec: Rec) -> None:
        if rec.expires is not None:
            earlier = not self._leases or rec.expires < self._leases[0][0]
            heapq.heappush(self._leases, (rec.expires, next(self._lease_seq), zone, name, rec))
            if earlier:
                self.on_schedule()

    def next_expiry(self) -> float | None:
        return self._leases[0][0] if self._leases else None

    def expire(self, now: float) -> int:
        """Remove every record whose lease has ended; returns how many were removed."""
        due: list[tuple[Zone, dns.name.Name, Rec]] = []
        while self._leases and self._leases[0][0] <= now:
            when, _, zone, name, rec = heapq.heappop(self._leases)
            if rec.expires != when or not zone.holds(name, rec):
                continue  # refreshed or deleted since
            due.append((zone, name, rec))
        if not due:
            return 0
        zones = {id(z): z for z, _, _ in due}
        serials = {z.origin.to_text(): _next_serial(z.serial) for z in zones.values()}
        self.store.apply(Change([], [rec.rid for _, _, rec in due], [], serials))
        pushes = []
        for zone, name, rec in due:
            owner = zone.owner(name)
            zone.remove(name, rec)
            pushes.append(push.remove(owner, rec.rdata))
        for zone in zones.values():
            zone.set_serial(serials[zone.origin.to_text()])
        self.udp_cache = {}
        self._notify(pushes)
        self.log({"event": "expire", "records": len(due),
                  "what": "; ".join(f"{n} {_t(r.rdtype)}" for _, n, r in due[:6])})
        return len(due)

    # -- DNS Push --------------------------------------------------------------------------
    def subscribe(self, name: dns.name.Name, rdtype: int,
                  callback: PushCallback) -> tuple[int, int, list[push.PushRecord]]:
        """(rcode, subscription id, current records) for a SUBSCRIBE."""
        zone = find_zone(self.zones, name)
        if zone is None:
            return dns.rcode.NOTAUTH, 0, []
        if rdtype in (dns.rdatatype.AXFR, dns.rdatatype.IXFR, dns.rdatatype.OPT, dns.rdatatype.TSIG):
            return dns.rcode.FORMERR, 0, []
        sub_id = next(self._sub_ids)
        self.subs.setdefault((name, rdtype), {})[sub_id] = callback
        current: list[push.PushRecord] = []
        node = zone.node(name)
        if node is not None:
            for t, recs in node.rrsets.items():
                if rdtype in (t, dns.rdatatype.ANY):
                    current.extend(push.add(node.name, rec.rdata, rec.ttl) for rec in recs.values())
        return dns.rcode.NOERROR, sub_id, current

    def unsubscribe(self, name: dns.name.Name, rdtype: int, sub_id: int) -> None:
        subs = self.subs.get((name, rdtype))
        if subs is not None:
            subs.pop(sub_id, None)
            if not subs:
                del self.subs[(name, rdtype)]

    def _notify(self, records: list[push.PushRecord]) -> None:
        if not self.subs or not records:
            return
        batches: dict[int, tuple[PushCallback, list[push.PushRecord]]] = {}
        for record in records:
            for key in ((record.name, record.rdtype), (record.name, dns.rdatatype.ANY)):
                for sub_id, callback in self.subs.get(key, {}).items():
                    batches.setdefault(sub_id, (callback, []))[1].append(record)
        for callback, batch in batches.values():
            callback(batch)


_TYPE_TEXT = {int(t): dns.rdatatype.to_text(t) for t in dns.rdatatype.RdataType}


def _t(rdtype: int) -> str:
    return _TYPE_TEXT.get(rdtype) or dns.rdatatype.to_text(dns.rdatatype.RdataType.make(rdtype))
