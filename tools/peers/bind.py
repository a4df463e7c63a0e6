"""BIND 9.18 (`named`) as a real peer: temp dir, 127.0.0.1, free ports, DoT, stopped by PID.

Each zone gets its own TSIG key and ``update-policy { grant KEY zonesub PTR SRV TXT A
AAAA; }`` (INTEROP.md: ``allow-update`` would be too broad). named listens on UDP/TCP
``port`` and on DoT ``tls_port`` with a self-signed certificate for ``localhost``
(``cert_file`` doubles as the CA file). ``max_records_per_type`` sets BIND's RRset limit
(default 100 in 9.18.28+; 0 = unlimited).

The helpers here (free ports, zone text, certificate, SOA ready-wait) are shared with the
Knot launcher.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

LOOPBACK = "127.0.0.1"
TLS_HOSTNAME = "localhost"


@dataclass(frozen=True)
class PeerZone:
    """A zone served by a peer, with the TSIG key allowed to update it."""

    name: str  # without trailing dot
    key_name: str
    key_secret: bytes
    extra: tuple[str, ...] = ()  # zone-file lines appended after SOA/NS


@dataclass
class _Proc:
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None


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
            raise RuntimeError(f"{what} exited with {proc.returncode}: {_tail(log)}")
        try:
            reply = dns.query.udp(query, LOOPBACK, port=port, timeout=0.3)
            if reply.rcode() == dns.rcode.NOERROR and reply.answer:
                return
        except (dns.exception.DNSException, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not answer SOA {zone} on port {port} within {timeout} s: {_tail(log)}")


def _tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return "(no log)"
    return " | ".join(log.read_text(errors="replace").splitlines()[-lines:])


def stop_pid(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM the process by PID, SIGKILL it if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


def key_b64(secret: bytes) -> str:
    return base64.b64encode(secret).decode()


@dataclass
class BindServer:
    """``named -f -c CONF`` from a temp dir; see the module docstring."""

    zones: list[PeerZone]
    max_records_per_type: int | None = None
    tls: bool = True
    workdir: Path | None = None
    address: str = LOOPBACK
    port: int = 0
    tls_port: int | None = None
    cert_file: Path | None = None
    tls_hostname: str = TLS_HOSTNAME
    kind: str = "bind"
    _proc: _Proc = field(default_factory=_Proc)
    _own_dir: bool = False

    @property
    def zone(self) -> str:
        return self.zones[0].name

    @property
    def key(self) -> PeerZone:
        return self.zones[0]

    @property
    def pid(self) -> int | None:
        return self._proc.proc.pid if self._proc.proc else None

    def allocate_ports(self) -> None:
        if not self.port:
            self.port = free_port()
        if self.tls and not self.tls_port:
            self.tls_port = free_port()

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

    def start(self) -> BindServer:
        binary = shutil.which("named") or "/usr/sbin/named"
        if not Path(binary).exists():
            raise RuntimeError("named not found: apt-get install bind9")
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="btmm-bind-"))
            self._own_dir = True
        d = self.workdir
        d.mkdir(parents=True, exist_ok=True)
        self.allocate_ports()
        if self.tls:
            self.cert_file, _ = self_signed(d, self.tls_hostname)
        for z in self.zones:
            (d / (z.name + ".zone")).write_text(zone_text(z))
        conf = d / "named.conf"
        conf.write_text(self.config(d))
        log = d / "named.stderr"
        with log.open("wb") as err:
            self._proc.proc = subprocess.Popen([binary, "-f", "-c", str(conf)], cwd=d,
                                               stdout=err, stderr=subprocess.STDOUT)
        self._proc.log = log
        try:
            for z in self.zones:
                wait_ready(self._proc.proc, self.port, z.name, d / "named.log", "named")
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop_pid(self._proc.proc)
        if self._own_dir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> BindServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ip_literal(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
