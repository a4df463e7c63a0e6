"""A synthetic host record set (DESIGN.md §4) and a pipelined TCP registrar, for tests and bench."""

from __future__ import annotations

import hashlib
import socket
import struct
from typing import BinaryIO

import dns.message
import dns.name
import dns.rcode
import dns.tsig
import dns.update


def host_update(zone: str, i: int, key: dns.tsig.Key) -> dns.update.UpdateMessage:
    """One atomic UPDATE with the 10 records of host number ``i``."""
    dom = dns.name.from_text(zone)
    host = dns.name.Name((f"h{i}".encode(), *dom.labels))
    instance = dns.name.Name((f"Bob\u2019s Mac {i}".encode(), b"_ssh", b"_tcp", *dom.labels))
    info = dns.name.Name((f"Bob\u2019s Mac {i}".encode(), b"_device-info", b"_tcp", *dom.labels))
    eui = "-".join(f"{b:02x}" for b in hashlib.sha256(str(i).encode()).digest()[:8])
    tunnel = dns.name.Name((f"AutoTunnel-{eui}".encode(), *dom.labels))
    up = dns.update.UpdateMessage(zone, keyring=key)
    up.add(host, 120, "AAAA", f"fd12:3456:789a::{i:x}")
    up.add(dns.name.from_text("_ssh._tcp", dom), 120, "PTR", instance.to_text())
    up.add(instance, 120, "SRV", f"0 0 22 {host.to_text()}")
    up.add(instance, 120, "TXT", '"path=/"')
    up.add(dns.name.Name((b"_autotunnel", b"_udp", *host.labels)), 120, "SRV", f"0 0 4500 {tunnel.to_text()}")
    up.add(tunnel, 120, "A", f"198.18.{i >> 8 & 255}.{i & 255}")
    up.add(info, 120, "TXT", '"model=MacPro7,1"')
    up.add(dns.name.Name((b"_kerberos", *host.labels)), 120, "TXT",
           f'"LKDC:SHA1.{hashlib.sha1(str(i).encode()).hexdigest().upper()}"')
    up.add(dns.name.from_text("b._dns-sd._udp", dom), 120, "PTR", zone)
    up.add(dns.name.from_text("lb._dns-sd._udp", dom), 120, "PTR", zone)
    return up


def register_pipelined(port: int, zone: str, key: dns.tsig.Key, first: int, count: int,
                       window: int = 64, host: str = "127.0.0.1") -> int:
    """Register hosts ``first .. first+count-1`` over one TCP connection; returns NOERRORs."""
    ok = 0
    with socket.create_connection((host, port), timeout=30) as sock:
        reader = sock.makefile("rb")
        outstanding = 0
        for i in range(first, first + count):
            wire = host_update(zone, i, key).to_wire()
            sock.sendall(struct.pack("!H", len(wire)) + wire)
            outstanding += 1
            if outstanding >= window:
                ok += _read_reply(reader)
                outstanding -= 1
        while outstanding:
            ok += _read_reply(reader)
            outstanding -= 1
    return ok


def _read_reply(reader: BinaryIO) -> int:
    header = reader.read(2)
    data = reader.read(struct.unpack("!H", header)[0])
    return int(dns.message.from_wire(data, keyring=False).rcode() == dns.rcode.NOERROR)
