"""The record set one host publishes (DESIGN.md §4), from plain data.

How this works
--------------
:class:`HostSpec` holds plain facts (domain, host label, ULA, instance name, services,
optional outer endpoint, AutoTunnel label, device model, LKDC string). :func:`host_records`
turns it into :class:`RRSet` values, each marked ``shared`` or not:

* own RRsets (the host's AAAA, each instance's SRV and TXT, ``_autotunnel._udp`` SRV, the
  ``AutoTunnel-…`` A, ``_device-info`` TXT, ``_kerberos`` TXT) are replaced whole by an
  update (delete the RRset by type, then add);
* shared RRsets (``<_svc>.<dom>`` PTR, ``_services._dns-sd._udp`` PTR, ``b``/``lb``
  ``._dns-sd._udp`` PTR) hold other hosts' records too, so an update only adds our record
  and a removal deletes only our record (service PTRs) or nothing (domain enumeration).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.IN.SRV

from dnssd_wa import names
from dnssd_wa.errors import BadName
from dnssd_wa.names import ServiceSpec

HOST_TTL = 120
SERVICE_TTL = 120
ENUM_TTL = 4500
IN = dns.rdataclass.IN
ULA_NETWORK = ipaddress.IPv6Network("fc00::/7")
# dnspython's rdata constructors are untyped: called through Any.
_PTR: Any = dns.rdtypes.ANY.PTR.PTR
_TXT: Any = dns.rdtypes.ANY.TXT.TXT
_SRV: Any = dns.rdtypes.IN.SRV.SRV
_A: Any = dns.rdtypes.IN.A.A
_AAAA: Any = dns.rdtypes.IN.AAAA.AAAA


@dataclass(frozen=True)
class HostSpec:
    """Everything one host publishes, as plain data."""

    domain: str
    host_label: str
    ula: ipaddress.IPv6Address
    instance: str
    services: tuple[ServiceSpec, ...] = ()
    outer: tuple[ipaddress.IPv4Address, int] | None = None
    autotunnel_label: str = ""
    model: str = ""
    kerberos: str = ""


@dataclass(frozen=True)
class RRSet:
    """One RRset of the host's record set."""

    name: dns.name.Name
    rdtype: dns.rdatatype.RdataType
    ttl: int
    rdatas: tuple[dns.rdata.Rdata, ...]
    shared: bool = False
    removable: bool = True  # shared domain-enumeration PTRs stay on removal

    def describe(self) -> list[str]:
        """Presentation lines (``owner TTL IN TYPE rdata``), names as raw UTF-8."""
        return [f"{names.name_text(self.name)}. {self.ttl} IN {self.rdtype.name} {_rdata_text(rd)}"
                for rd in self.rdatas]


def _rdata_text(rd: dns.rdata.Rdata) -> str:
    if isinstance(rd, dns.rdtypes.ANY.PTR.PTR):
        return names.name_text(rd.target) + "."
    if isinstance(rd, dns.rdtypes.IN.SRV.SRV):
        return f"{rd.priority} {rd.weight} {rd.port} {names.name_text(rd.target)}."
    return rd.to_text()


def _ptr(target: dns.name.Name) -> dns.rdata.Rdata:
    rd: dns.rdata.Rdata = _PTR(IN, dns.rdatatype.PTR, target)
    return rd


def _txt(strings: list[bytes]) -> dns.rdata.Rdata:
    rd: dns.rdata.Rdata = _TXT(IN, dns.rdatatype.TXT, strings)
    return rd


def _srv(port: int, target: dns.name.Name) -> dns.rdata.Rdata:
    rd: dns.rdata.Rdata = _SRV(IN, dns.rdatatype.SRV, 0, 0, port, target)
    return rd


def host_fqdn(spec: HostSpec) -> dns.name.Name:
    return names.host_name(spec.host_label, names.domain_name(spec.domain))


def autotunnel_srv_name(host: dns.name.Name) -> dns.name.Name:
    return names.child([b"_autotunnel", b"_udp"], host)


def host_records(spec: HostSpec) -> tuple[RRSet, ...]:
    """The host's whole record set (DESIGN.md §4), own RRsets first, shared PTRs last."""
    dom = names.domain_name(spec.domain)
    host = names.host_name(spec.host_label, dom)
    if spec.ula not in ULA_NETWORK:
        raise BadName(f"{spec.ula} is not a ULA (fc00::/7)")
    own: list[RRSet] = [RRSet(host, dns.rdatatype.AAAA, HOST_TTL,
                              (_AAAA(IN, dns.rdatatype.AAAA, str(spec.ula)),))]
    shared: list[RRSet] = []
    seen_types: list[dns.name.Name] = []
    for svc in spec.services:
        type_name = names.service_type_name(svc.service_type, dom)
        inst = names.instance_name(spec.instance, svc.service_type, dom)
        if any(r.name == inst and r.rdtype == dns.rdatatype.SRV for r in own):
            raise BadName(f"service type {svc.service_type} is given twice")
        own.append(RRSet(inst, dns.rdatatype.SRV, SERVICE_TTL, (_srv(svc.port, host),)))
        own.append(RRSet(inst, dns.rdatatype.TXT, SERVICE_TTL, (_txt(names.txt_strings(svc.txt)),)))
        shared.append(RRSet(type_name, dns.rdatatype.PTR, SERVICE_TTL, (_ptr(inst),), shared=True))
        if type_name not in seen_types:
            seen_types.append(type_name)
    if spec.outer is not None:
        if not spec.autotunnel_label:
            raise BadName("an outer endpoint needs the host's AutoTunnel label")
        address, port = spec.outer
        tunnel = names.child([spec.autotunnel_label.encode("ascii")], dom)
        own.append(RRSet(autotunnel_srv_name(host), dns.rdatatype.SRV, HOST_TTL, (_srv(port, tunnel),)))
        own.append(RRSet(tunnel, dns.rdatatype.A, HOST_TTL,
                         (_A(IN, dns.rdatatype.A, str(address)),)))
    if spec.model:
        info = dns.name.Name([names.instance_label(spec.instance), b"_device-info", b"_tcp",
                              *dom.labels])
        own.append(RRSet(info, dns.rdatatype.TXT, SERVICE_TTL,
                         (_txt([f"model={spec.model}".encode()]),)))
    if spec.kerberos:
        own.append(RRSet(names.child([b"_kerberos"], host), dns.rdatatype.TXT, HOST_TTL,
                         (_txt([spec.kerberos.encode()]),)))
    services_enum = names.child([b"_services", b"_dns-sd", b"_udp"], dom)
    for type_name in seen_types:
        shared.append(RRSet(services_enum, dns.rdatatype.PTR, ENUM_TTL, (_ptr(type_name),),
                            shared=True, removable=False))
    for prefix in (b"b", b"lb"):
        shared.append(RRSet(names.child([prefix, b"_dns-sd", b"_udp"], dom), dns.rdatatype.PTR,
                            ENUM_TTL, (_ptr(dom),), shared=True, removable=False))
    return (*own, *shared)


def record_lines(rrsets: tuple[RRSet, ...]) -> list[str]:
    """Every record as one presentation line (for ``registration`` records and logs)."""
    return [line for rr in rrsets for line in rr.describe()]
