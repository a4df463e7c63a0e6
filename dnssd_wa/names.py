"""DNS-SD names built from raw UTF-8 bytes (RFC 6763 §4.3), never punycode.

How this works
--------------
A service instance name is ``<Instance>.<Service>.<Domain>`` where ``<Instance>`` is one
DNS label of arbitrary UTF-8 (spaces, ``'``, ``’`` and even dots allowed). dnspython's
``dns.name.from_text`` would IDNA-encode a Unicode string, and dots inside the instance
would split it, so every label here is built as bytes: ``dns.name.Name([b"Bob's iMac",
b"_rfb", b"_tcp", ...])``. Reading back, :func:`instance_text` decodes the first label's
bytes as UTF-8 exactly as the server stored them (case preserved). Comparisons between
names use dnspython's case-insensitive ``Name.__eq__``.

The ``--service`` syntax ``_rfb._tcp:5900[:key=value,...]`` is parsed by
:func:`parse_service_spec`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import dns.name

from dnssd_wa.errors import BadName

MAX_LABEL = 63
_SERVICE_RE = re.compile(r"^_([A-Za-z0-9]([A-Za-z0-9-]{0,13}[A-Za-z0-9])?)\._(tcp|udp)$")
_LDH_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


def domain_name(domain: str) -> dns.name.Name:
    """An absolute name from an ASCII domain (``bob.members.example`` with or without dot)."""
    text = domain.strip().rstrip(".")
    if not text:
        raise BadName("domain is empty")
    labels = text.split(".")
    for label in labels:
        if not _LDH_RE.match(label):
            raise BadName(f"domain {domain!r}: label {label!r} is not a hostname label")
    return dns.name.Name([lbl.encode("ascii") for lbl in labels] + [b""])


def instance_label(name: str) -> bytes:
    """One DNS label holding ``name`` as UTF-8 (1–63 bytes, no control characters)."""
    raw = name.encode("utf-8")
    if not raw:
        raise BadName("the instance name is empty; pass --name \"Bob's iMac\"")
    if len(raw) > MAX_LABEL:
        raise BadName(
            f"the instance name {name!r} is {len(raw)} bytes in UTF-8; a DNS label holds at most "
            f"{MAX_LABEL}: choose a shorter --name"
        )
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        raise BadName(f"the instance name {name!r} contains control characters")
    return raw


def service_type_name(service_type: str, domain: dns.name.Name) -> dns.name.Name:
    """``_rfb._tcp.<domain>`` from ``_rfb._tcp`` (RFC 6763 §7 syntax checked)."""
    check_service_type(service_type)
    app, proto = service_type.split(".")
    return dns.name.Name([app.encode(), proto.encode(), *domain.labels])


def check_service_type(service_type: str) -> str:
    if not _SERVICE_RE.match(service_type):
        raise BadName(
            f"service type {service_type!r} is not of the form _name._tcp or _name._udp "
            "(name: 1-15 letters, digits, '-')"
        )
    return service_type


def instance_name(instance: str, service_type: str, domain: dns.name.Name) -> dns.name.Name:
    """``<Instance>.<_svc>._tcp.<domain>`` with the instance as one raw UTF-8 label."""
    return dns.name.Name([instance_label(instance), *service_type_name(service_type, domain).labels])


def host_name(label: str, domain: dns.name.Name) -> dns.name.Name:
    if not _LDH_RE.match(label):
        raise BadName(f"host label {label!r} is not a hostname label")
    return dns.name.Name([label.encode("ascii"), *domain.labels])


def child(labels: list[bytes], parent: dns.name.Name) -> dns.name.Name:
    """``labels`` (raw bytes) prepended to ``parent``."""
    return dns.name.Name([*labels, *parent.labels])


def label_text(label: bytes) -> str:
    """A label's bytes as text, exactly as stored (invalid UTF-8 shown as U+FFFD)."""
    return label.decode("utf-8", errors="replace")


def instance_text(name: dns.name.Name) -> str:
    """The instance part (first label) of a service instance name."""
    if len(name.labels) < 1 or name.labels[0] == b"":
        raise BadName(f"{name} has no instance label")
    return label_text(name.labels[0])


def name_text(name: dns.name.Name) -> str:
    """A name for display: labels decoded as UTF-8 and joined by dots, no trailing dot."""
    return ".".join(label_text(lbl) for lbl in name.labels if lbl)


def split_instance(name: dns.name.Name, type_name: dns.name.Name) -> str | None:
    """The instance text when ``name`` is exactly one label below ``type_name``, else None."""
    if len(name.labels) != len(type_name.labels) + 1:
        return None
    if dns.name.Name(name.labels[1:]) != type_name:
        return None
    return label_text(name.labels[0])


@dataclass(frozen=True)
class ServiceSpec:
    """One service to publish: type, port, TXT key=value pairs (in order)."""

    service_type: str
    port: int
    txt: tuple[tuple[str, str], ...] = ()


def parse_service_spec(text: str) -> ServiceSpec:
    """``_rfb._tcp:5900[:key=value,key2=value2]`` → :class:`ServiceSpec`."""
    parts = text.split(":", 2)
    if len(parts) < 2:
        raise BadName(f"--service {text!r}: expected _type._tcp:PORT[:key=value,...]")
    service_type, port_text = parts[0], parts[1]
    check_service_type(service_type)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise BadName(f"--service {text!r}: port {port_text!r} is not 1-65535")
    txt: list[tuple[str, str]] = []
    if len(parts) == 3 and parts[2]:
        for item in parts[2].split(","):
            key, sep, value = item.partition("=")
            if not key or len(key.encode()) + len(value.encode()) + len(sep) > 255:
                raise BadName(f"--service {text!r}: TXT item {item!r} must be key=value "
                                 "(at most 255 bytes)")
            txt.append((key, value))
    return ServiceSpec(service_type, int(port_text), tuple(txt))


def txt_strings(pairs: tuple[tuple[str, str], ...]) -> list[bytes]:
    """TXT character-strings for key=value pairs; an empty TXT holds one empty string (§6.1)."""
    if not pairs:
        return [b""]
    return [f"{k}={v}".encode() for k, v in pairs]


def txt_dict(strings: list[bytes]) -> dict[str, str]:
    """A TXT record's strings as a dict (RFC 6763 §6.4: first occurrence wins, bare key → "")."""
    out: dict[str, str] = {}
    for raw in strings:
        if not raw:
            continue
        key, _, value = raw.partition(b"=")
        k = key.decode("utf-8", errors="replace")
        if k and k.lower() not in {x.lower() for x in out}:
            out[k] = value.decode("utf-8", errors="replace")
    return out
