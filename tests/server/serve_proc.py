"""Launch the real btmm-serve console script for tests and read its ready line."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.tsig
import dns.tsigkeyring
import dns.update

from tests.conftest import script

ZONE = "bob.members.example."


class ServeProc:
    def __init__(self, workdir: Path, account: Path, *extra: str, db: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.account = account
        self.db = db or workdir / "serve.db"
        self.extra = list(extra)
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, Any] = {}
        self.stderr_path = workdir / f"serve-{time.monotonic_ns()}.log"

    def start(self, timeout: float = 20.0) -> ServeProc:
        tls = [] if "--cert" in self.extra else ["--self-signed", "--cert-dir", str(self.workdir / "certs")]
        argv = [script("btmm-serve"), "--account", str(self.account), "--db", str(self.db),
                "--listen", "127.0.0.1:0", "--tls-listen", "127.0.0.1:0", *tls, "--json", *self.extra]
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._err, env=self.env)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.stop()
            raise RuntimeError(f"btmm-serve did not become ready: {self.log()[-2000:]}")
        self.ready = json.loads(line)
        return self

    def addr(self, proto: str) -> tuple[str, int]:
        for listener in self.ready["listeners"]:
            if listener["proto"] == proto:
                host, _, port = listener["address"].rpartition(":")
                return host, int(port)
        raise KeyError(proto)

    @property
    def port(self) -> int:
        return self.addr("udp")[1]

    @property
    def tls_port(self) -> int:
        return self.addr("tls")[1]

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return events

    def rss_kb(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._err.close()
        code = self.proc.returncode
        self.proc = None
        return code

    def __enter__(self) -> ServeProc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- dnspython helpers -------------------------------------------------------------
    def query(self, name: str, rdtype: str, *, tcp: bool = False) -> dns.message.Message:
        q = dns.message.make_query(name, rdtype, use_edns=0)
        if tcp:
            return dns.query.tcp(q, "127.0.0.1", port=self.port, timeout=5)
        return dns.query.udp(q, "127.0.0.1", port=self.port, timeout=5)

    def send(self, msg: dns.message.Message, *, tcp: bool = True,
             keyring: Any = None) -> dns.message.Message:
        if tcp:
            return dns.query.tcp(msg, "127.0.0.1", port=self.port, timeout=5)
        return dns.query.udp(msg, "127.0.0.1", port=self.port, timeout=5)


def account_key(account: Path) -> dns.tsig.Key:
    data = json.loads(account.read_text())
    import base64

    return dns.tsig.Key(data["tsig"]["name"], base64.b64decode(data["tsig"]["secret"]), "hmac-sha256")


def names(response: dns.message.Message) -> list[str]:
    return [rr.to_text() for rrset in response.answer for rr in rrset]


def rcode(response: dns.message.Message) -> str:
    return dns.rcode.to_text(response.rcode())


def tcp_update_ok(sock: socket.socket, update: dns.message.Message) -> bool | None:
    """Send ``update`` on an open DNS-over-TCP connection: True if answered NOERROR, False
    for another rcode, None when the server closed the connection."""
    wire = update.to_wire()
    sock.sendall(struct.pack("!H", len(wire)) + wire)
    header = sock.recv(2, socket.MSG_WAITALL)
    if len(header) < 2:
        return None
    reply = sock.recv(struct.unpack("!H", header)[0], socket.MSG_WAITALL)
    return dns.message.from_wire(reply, keyring=False).rcode() == dns.rcode.NOERROR
