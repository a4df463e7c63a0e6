"""Browse and resolve as plans (RFC 6763 §4, §6, §11, §12), driven by an I/O driver.

How this works
--------------
A plan is a small state machine in the style of dnspython's ``_Resolution``: the driver
asks :meth:`questions` for the questions it may send now (all of them in parallel), then
feeds each reply (a ``dns.message.Message``) or failure text to :meth:`answer`, and repeats
until :meth:`questions` returns nothing. No sockets, no clock.

* :class:`BrowsePlan` — PTR ``<_svc>.<dom>`` → SRV + TXT of each instance → AAAA of each
  SRV target. Records a server puts in the additional section (RFC 6763 §12) are used and
  not asked again. A PTR whose instance has no SRV ("pointing nowhere") or lies outside
  its service type is skipped and reported as a :class:`Problem`.
* :class:`TunnelPlan` — the tunnel endpoint of one host: AAAA ``<host>`` and SRV
  ``_autotunnel._udp.<host>`` → A of the ``AutoTunnel-…`` target.
* :class:`PtrListPlan` — one PTR lookup per name (``--domains``, ``--types``).

Names come back exactly as stored (case, UTF-8); comparisons are dnspython's
case-insensitive ``Name`` equality.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Protocol

import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from dnssd_wa import names
from dnssd_wa.records import autotunnel_srv_name

IN = dns.rdataclass.IN
PTR = dns.rdatatype.PTR
SRV = dns.rdatatype.SRV
TXT = dns.rdatatype.TXT
A = dns.rdatatype.A
AAAA = dns.rdatatype.AAAA


@dataclass(frozen=True)
class Question:
    name: dns.name.Name
    rdtype: dns.rdatatype.RdataType
    # dnspython hashes a Name label by label on every use; a plan hashes each question
    # several times (asked? cached? answered), so the hash is computed once
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.name, self.rdtype)))

    def __hash__(self) -> int:
        return self._hash

    def text(self) -> str:
        return f"{names.name_text(self.name)}. {self.rdtype.name}"


@dataclass(frozen=True)
class Problem:
    """Something skipped while browsing (reported, never fatal)."""

    name: str
    message: str


@dataclass(frozen=True)
class Service:
    """One resolved service instance (a ``service`` record's fields)."""

    instance: str
    service_type: str
    domain: str
    host: str
    port: int
    txt: dict[str, str]
    addresses: tuple[str, ...]
    ttl: int
    name: dns.name.Name

    def key(self) -> tuple[str, str]:
        """Identity for added/removed events (case-insensitive like DNS)."""
        return (self.instance.lower(), self.service_type.lower())


class Plan(Protocol):
    def questions(self) -> list[Question]: ...

    def answer(self, question: Question, reply: dns.message.Message | None, error: str = "") -> None: ...


Answer = tuple[list[dns.rrset.RRset], int]  # (rrsets of the answer for that question, rcode)


@dataclass
class _Cache:
    """RRsets learnt from answers and additional sections, keyed case-insensitively."""

    data: dict[tuple[dns.name.Name, int], dns.rrset.RRset] = field(default_factory=dict)

    def learn(self, msg: dns.message.Message) -> None:
        for rrset in msg.additional:
            if rrset.rdclass == IN and rrset.rdtype in (SRV, TXT, A, AAAA):
                self.data.setdefault((rrset.name, rrset.rdtype), rrset)

    def get(self, q: Question) -> dns.rrset.RRset | None:
        return self.data.get((q.name, q.rdtype))


def answer_rrset(q: Question, reply: dns.message.Message) -> dns.rrset.RRset | None:
    """The RRset answering ``q`` in ``reply`` (None for NXDOMAIN/NODATA)."""
    for rrset in reply.answer:
        if rrset.name == q.name and rrset.rdtype == q.rdtype and rrset.rdclass == IN:
            return rrset
    return None


def _rcode_text(reply: dns.message.Message) -> str:
    return dns.rcode.to_text(reply.rcode())


class BrowsePlan:
    """PTR → SRV+TXT → AAAA for each service type in one domain."""

    def __init__(self, domain: dns.name.Name, service_types: list[str]) -> None:
        self.domain = domain
        self.types = {names.service_type_name(t, domain): t for t in service_types}
        self._pending: list[Question] = [Question(n, PTR) for n in self.types]
        self._asked: set[Question] = set()
        self._cache = _Cache()
        self._srv: dict[dns.name.Name, dns.rrset.RRset | None] = {}
        self._txt: dict[dns.name.Name, dns.rrset.RRset | None] = {}
        self._addr: dict[dns.name.Name, dns.rrset.RRset | None] = {}
        self._instances: dict[dns.name.Name, tuple[str, dns.name.Name, int]] = {}
        self.problems: list[Problem] = []

    def questions(self) -> list[Question]:
        out: list[Question] = []
        while self._pending:  # answers found in the cache may queue more questions (FIFO)
            pending, self._pending = self._pending, []
            for q in pending:
                if q in self._asked:
                    continue
                self._asked.add(q)
                cached = self._cache.get(q)
                if cached is not None:
                    self._store(q, cached)
                else:
                    out.append(q)
        return out

    def answer(self, question: Question, reply: dns.message.Message | None, error: str = "") -> None:
        if reply is None:
            self.problems.append(Problem(question.text(), error or "no answer"))
            self._store(question, None)
            return
        self._cache.learn(reply)
        if reply.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            self.problems.append(Problem(question.text(), f"server answered {_rcode_text(reply)}"))
        self._store(question, answer_rrset(question, reply))

    def _store(self, q: Question, rrset: dns.rrset.RRset | None) -> None:
        if q.rdtype == PTR:
            self._on_ptr(q, rrset)
        elif q.rdtype == SRV:
            self._srv[q.name] = rrset
            if rrset is None:
                inst = self._instances.get(q.name)
                self.problems.append(Problem(
                    names.name_text(q.name),
                    f"PTR {names.name_text(inst[1]) if inst else ''} points to an instance with no "
                    "SRV record (pointing nowhere); skipped"))
                return
            for rd in rrset:
                self._pending.append(Question(rd.target, AAAA))
        elif q.rdtype == TXT:
            self._txt[q.name] = rrset
        elif q.rdtype == AAAA:
            self._addr[q.name] = rrset

    def _on_ptr(self, q: Question, rrset: dns.rrset.RRset | None) -> None:
        if rrset is None:
            return
        for rd in rrset:
            target: dns.name.Name = rd.target
            instance = names.split_instance(target, q.name)
            if instance is None:
                self.problems.append(Problem(names.name_text(target), (
                    f"PTR {names.name_text(q.name)} points to {names.name_text(target)}, which is "
                    "not an instance of that service type; skipped")))
                continue
            if target in self._instances:
                continue
            self._instances[target] = (instance, q.name, int(rrset.ttl))
            self._pending.append(Question(target, SRV))
            self._pending.append(Question(target, TXT))

    def services(self) -> list[Service]:
        """Every instance whose SRV resolved, in PTR order."""
        out: list[Service] = []
        for inst_name, (instance, type_name, ptr_ttl) in self._instances.items():
            srv = self._srv.get(inst_name)
            if srv is None:
                continue
            rd = min(srv, key=lambda r: (r.priority, -r.weight))
            txt = self._txt.get(inst_name)
            txt_map = names.txt_dict([s for t in txt for s in t.strings]) if txt is not None else {}
            addrs = self._addr.get(rd.target)
            addresses = tuple(str(ipaddress.IPv6Address(a.address)) for a in addrs) if addrs else ()
            ttls = [ptr_ttl, int(srv.ttl)] + ([int(txt.ttl)] if txt is not None else []) + (
                [int(addrs.ttl)] if addrs is not None else [])
            out.append(Service(
                instance=instance,
                service_type=self.types.get(type_name, names.name_text(type_name)),
                domain=names.name_text(self.domain),
                host=names.name_text(rd.target),
                port=int(rd.port),
                txt=txt_map,
                addresses=addresses,
                ttl=min(ttls),
                name=inst_name,
            ))
        return out


@dataclass(frozen=True)
class TunnelEndpoint:
    """Where a host's tunnel ends: inner ULA and outer IPv4 endpoint (DESIGN.md §3)."""

    host: str
    inner: str | None
    outer_address: str | None
    outer_port: int | None
    autotunnel_name: str | None
    ike_id: str


class TunnelPlan:
    """AAAA <host> and SRV _autotunnel._udp.<host> → A <AutoTunnel-…>."""

    def __init__(self, host: dns.name.Name) -> None:
        self.host = host
        self._pending = [Question(host, AAAA), Question(autotunnel_srv_name(host), SRV)]
        self._cache = _Cache()
        self.inner: str | None = None
        self.port: int | None = None
        self.target: dns.name.Name | None = None
        self.outer: str | None = None
        self.problems: list[Problem] = []

    def questions(self) -> list[Question]:
        out: list[Question] = []
        for q in self._pending:
            cached = self._cache.get(q)
            if cached is not None:
                self._store(q, cached)
            else:
                out.append(q)
        self._pending = []
        return out

    def answer(self, question: Question, reply: dns.message.Message | None, error: str = "") -> None:
        if reply is None:
            self.problems.append(Problem(question.text(), error or "no answer"))
            return
        self._cache.learn(reply)
        rrset = answer_rrset(question, reply)
        if rrset is None:
            what = {AAAA: "no AAAA record (inner ULA)",
                    SRV: "no _autotunnel._udp SRV record (no outer endpoint published)",
                    A: "no A record for the AutoTunnel name"}.get(question.rdtype, "no record")
            self.problems.append(Problem(question.text(), f"{names.name_text(question.name)}: {what}"))
            return
        self._store(question, rrset)

    def _store(self, q: Question, rrset: dns.rrset.RRset) -> None:
        if q.rdtype == AAAA:
            self.inner = str(ipaddress.IPv6Address(next(iter(rrset)).address))
        elif q.rdtype == SRV:
            rd = min(rrset, key=lambda r: (r.priority, -r.weight))
            self.port = int(rd.port)
            self.target = rd.target
            self._pending.append(Question(rd.target, A))
        elif q.rdtype == A:
            self.outer = str(next(iter(rrset)).address)

    def endpoint(self) -> TunnelEndpoint:
        return TunnelEndpoint(
            host=names.name_text(self.host),
            inner=self.inner,
            outer_address=self.outer,
            outer_port=self.port,
            autotunnel_name=names.name_text(self.target) if self.target is not None else None,
            ike_id=names.name_text(self.host),
        )


class PtrListPlan:
    """One PTR lookup per name; collects the targets (domain/type enumeration)."""

    def __init__(self, owners: list[dns.name.Name]) -> None:
        self._pending = [Question(n, PTR) for n in owners]
        self.targets: dict[dns.name.Name, list[dns.name.Name]] = {}
        self.problems: list[Problem] = []

    def questions(self) -> list[Question]:
        out, self._pending = self._pending, []
        return out

    def answer(self, question: Question, reply: dns.message.Message | None, error: str = "") -> None:
        if reply is None:
            self.problems.append(Problem(question.text(), error or "no answer"))
            return
        rrset = answer_rrset(question, reply)
        self.targets[question.name] = [rd.target for rd in rrset] if rrset is not None else []


def enumeration_names(domain: dns.name.Name) -> list[dns.name.Name]:
    """``b``, ``db``, ``lb`` ``._dns-sd._udp.<domain>`` (RFC 6763 §11)."""
    return [names.child([p, b"_dns-sd", b"_udp"], domain) for p in (b"b", b"db", b"lb")]


def services_name(domain: dns.name.Name) -> dns.name.Name:
    """``_services._dns-sd._udp.<domain>`` (RFC 6763 §9)."""
    return names.child([b"_services", b"_dns-sd", b"_udp"], domain)
