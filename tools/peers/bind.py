"""BIND 9.18 (`named`) as a real peer: temp dir, 127.0.0.1, free ports, DoT, stopped by PID.

Each zone gets its own TSIG key and ``update-policy { grant KEY zonesub PTR SRV TXT A
AAAA; }`` (INTEROP.md: ``allow-update`` would be too broad). named listens on UDP/TCP
``port`` and on DoT ``tls_port`` with a self-signed certificate for ``localhost``
(``cert_file`` doubles as the CA file). ``max_records_per_type`` sets BIND's RRset limit
(default 100 in 9.18.28+; 0 = unlimited).

The helpers here (free ports, zone text, certificate, SOA ready-wait) and :class:`DnsPeer`
(the zone files, config file, command line and ready-wait of an authoritative server, on
top of ``tools.peers.base.DaemonPeer``) are shared with the Knot launcher.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import socket
import subprocess
import time
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import ClassVar

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tools.peers.base import DaemonPeer, log_tail

LOOPBACK = "127.0.0.1"
TLS_HOSTNAME = "localhost"


@dataclass(frozen=True)
class PeerZone:
    """A zone served by a peer, with the TSIG key allowed to update it."""

    name: str  # without trailing dot
    key_name: str
    key_secret: bytes
    extra: tuple[str, ...] = ()  # zone-file lines appended after SOA/NS


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (racy by nature; retried by callers)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((LOOPBACK, 0))
            port = int(tcp.getsockname()[1])
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port on 127.0.0.1")


def zone_text(zone: PeerZone) -> str:
    origin = zone.name.rstrip(".") + "."
    lines = [
        f"$ORIGIN {origin}",
        "$TTL 300",
        f"@ IN SOA ns.{origin} hostmaster.{origin} 1 3600 600 86400 60",
        "@ IN NS ns",
        f"ns IN A {LOOPBACK}",
        *zone.extra,
    ]
    return "\n".join(lines) + "\n"


def self_signed(directory: Path, hostname: str = TLS_HOSTNAME) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for ``hostname`` (usable as its own CA file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls-cert.pem", directory / "tls-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return cert_path, key_path


def wait_ready(proc: subprocess.Popen[bytes], port: int, zone: str, log: Path | None,
               what: str, timeout: float = 20.0) -> None:
    """Poll SOA of ``zone`` until the server answers NOERROR; raise with its log if it died."""
    deadline = time.monotonic() + timeout
    query = dns.message.make_query(zone.rstrip(".") + ".", dns.rdatatype.SOA)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log_tail(log)}")
        try:
            reply = dns.query.udp(query, LOOPBACK, port=port, timeout=0.3)
            if reply.rcode() == dns.rcode.NOERROR and reply.answer:
                return
        except (dns.exception.DNSException, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not answer SOA {zone} on port {port} within {timeout} s: {log_tail(log)}")


def key_b64(secret: bytes) -> str:
    return base64.b64encode(secret).decode()


@dataclass
class DnsPeer(DaemonPeer):
    """An authoritative DNS server serving ``zones`` on ``address``:``port`` (free ports by default).

    The subclass writes its configuration (:meth:`config`) and anything else it needs
    (:meth:`prepare`); the zone files, the config file, the command line and the ready-wait
    (SOA of every zone answers NOERROR) are common.
    """

    conf_name: ClassVar[str]  # the config file in the work dir
    flags: ClassVar[tuple[str, ...]] = ()  # command-line flags before ``-c CONF``
    log_name: ClassVar[str]  # the daemon's own log file in the work dir (quoted on failure)

    zones: list[PeerZone]
    _: KW_ONLY
    address: str = LOOPBACK
    port: int = 0
    tls_port: int | None = None
    cert_file: Path | None = None
    tls_hostname: str = TLS_HOSTNAME

    @property
    def zone(self) -> str:
        return self.zones[0].name

    @property
    def key(self) -> PeerZone:
        return self.zones[0]

    def allocate_ports(self) -> None:
        if not self.port:
            self.port = free_port()

    def prepare(self, d: Path) -> None:
        """Files the daemon needs besides its config and the zones (none by default)."""

    def config(self, d: Path) -> str:
        raise NotImplementedError

    def command(self, binary: str, d: Path) -> list[str]:
        self.allocate_ports()
        self.prepare(d)
        for z in self.zones:
            (d / (z.name + ".zone")).write_text(zone_text(z))
        conf = d / self.conf_name
        conf.write_text(self.config(d))
        return [binary, *self.flags, "-c", str(conf)]

    def ready(self, proc: subprocess.Popen[bytes], d: Path) -> None:
        for z in self.zones:
            wait_ready(proc, self.port, z.name, d / self.log_name, self.binary)


@dataclass
class BindServer(DnsPeer):
    """``named -f -c CONF`` from a temp dir; see the module docstring."""

    kind: ClassVar[str] = "bind"
    binary: ClassVar[str] = "named"
    package: ClassVar[str] = "bind9"
    conf_name: ClassVar[str] = "named.conf"
    flags: ClassVar[tuple[str, ...]] = ("-f",)
    log_name: ClassVar[str] = "named.log"

    max_records_per_type: int | None = None
    tls: bool = True

    def allocate_ports(self) -> None:
        super().allocate_ports()
        if self.tls and not self.tls_port:
            self.tls_port = free_port()

    def prepare(self, d: Path) -> None:
        if self.tls:
            self.cert_file, _ = self_signed(d, self.tls_hostname)

    def config(self, d: Path) -> str:
        keys = "".join(
            f'key "{z.key_name}" {{ algorithm hmac-sha256; secret "{key_b64(z.key_secret)}"; }};\n'
            for z in self.zones)
        listen = f"listen-on port {self.port} {{ {self.address}; }};\n"
        tls = ""
        if self.tls:
            if self.cert_file is None:
                raise RuntimeError("TLS needs a certificate (start() makes one)")
            key_file = self.cert_file.with_name("tls-key.pem")
            tls = f'tls local-tls {{ cert-file "{self.cert_file}"; key-file "{key_file}"; }};\n'
            listen += f"\tlisten-on port {self.tls_port} tls local-tls {{ {self.address}; }};\n"
        limit = (f"\tmax-records-per-type {self.max_records_per_type};\n"
                 if self.max_records_per_type is not None else "")
        zones = "".join(
            f'zone "{z.name}" {{ type primary; file "{d / (z.name + ".zone")}"; '
            f'update-policy {{ grant "{z.key_name}" zonesub PTR SRV TXT A AAAA; }}; }};\n'
            for z in self.zones)
        return (
            f"{tls}{keys}"
            "options {\n"
            f'\tdirectory "{d}";\n'
            f'\tpid-file "{d / "named.pid"}";\n'
            f'\tsession-keyfile "{d / "session.key"}";\n'
            f'\tmanaged-keys-directory "{d}";\n'
            f"\t{listen}"
            "\tlisten-on-v6 { none; };\n"
            "\trecursion no;\n\tdnssec-validation no;\n\tnotify no;\n"
            f"{limit}"
            "};\n"
            "controls { };\n"
            "logging { channel main { file \"" + str(d / "named.log") + "\"; severity info; "
            "print-time yes; }; category default { main; }; category update { main; }; };\n"
            f"{zones}"
        )


def ip_literal(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
