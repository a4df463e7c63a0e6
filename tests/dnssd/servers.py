"""The DNS servers the DNS-SD suite runs against: BIND 9.18, Knot 3.2 and btmm-serve.

Every kind is started from an account file (the zone is the account's domain, the TSIG
key the account's) plus a second zone of "another account" where the server supports
it, on 127.0.0.1 with free ports, and stopped by PID. :class:`ServerUnderTest` is what the
tests see; ``expect`` holds the rcodes each kind is known to give (INTEROP.md).

btmm-serve (issue 4) is launched by its CLI contract:
``btmm-serve --account FILE --db DIR/state.db --listen 127.0.0.1:PORT --tls-listen
127.0.0.1:TLSPORT --self-signed --cert-dir DIR --json``; its first stdout line is the
``{"type": "server", "state": "ready", ...}`` record. If it is missing or broken the
btmm_serve tests FAIL (never skip).
"""

from __future__ import annotations

import json
import os
import secrets
import select
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.account_file import Account
from tools.peers.base import stop_pid
from tools.peers.bind import LOOPBACK, BindServer, PeerZone, free_port, key_b64
from tools.peers.knot import KnotServer

SERVER_KINDS = ["bind", "knot", "btmm-serve"]
KIND_IDS = [k.replace("-", "_") for k in SERVER_KINDS]
OTHER_ZONE = "alice.members.example"
UNSERVED_ZONE = "carol.members.example"


@dataclass
class ServerUnderTest:
    kind: str
    zone: str
    port: int
    tls_port: int | None
    ca_file: str | None
    tls_hostname: str
    preserves_case: bool
    echoes_lease: bool
    other_zone: str | None  # another account's zone served by the same server
    expect: dict[str, tuple[str, str]]  # case -> (rcode, tsig error) text
    stop: Callable[[], None]
    address: str = LOOPBACK
    pid: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def server_arg(self) -> str:
        return f"{self.address}:{self.port}"


# rcode / TSIG error each kind gives for each bad update (INTEROP.md; Knot says NOTAUTH more often)
BIND_EXPECT = {
    "wrong-secret": ("NOTAUTH", "BADSIG"),
    "unknown-key": ("NOTAUTH", "BADKEY"),
    "clock-skew": ("NOTAUTH", "BADTIME"),
    "notzone": ("NOTZONE", ""),
    "not-served": ("NOTAUTH", ""),
    "other-zone": ("REFUSED", ""),
    "forbidden-type": ("REFUSED", ""),
    "unsigned": ("REFUSED", ""),
    "yxrrset": ("YXRRSET", ""),
}
KNOT_EXPECT = {
    "wrong-secret": ("NOTAUTH", "BADSIG"),
    "unknown-key": ("NOTAUTH", "BADKEY"),
    "clock-skew": ("NOTAUTH", "BADTIME"),
    "notzone": ("NOTZONE", ""),
    "not-served": ("NOTAUTH", ""),
    "other-zone": ("NOTAUTH", "BADKEY"),  # Knot: the key is outside this zone's ACL
    "forbidden-type": ("NOTAUTH", "BADKEY"),  # Knot: update-type ACL mismatch
    "unsigned": ("NOTAUTH", ""),
    "yxrrset": ("YXRRSET", ""),
}
# btmm-serve promises BIND's rcodes (issue 4)
SERVE_EXPECT = dict(BIND_EXPECT)


def _zones(account: Account) -> list[PeerZone]:
    return [
        PeerZone(account.domain, account.tsig_name, account.tsig_secret),
        PeerZone(OTHER_ZONE, f"btmm-{OTHER_ZONE}", secrets.token_bytes(32)),
    ]


def start_bind(account: Account, workdir: Path) -> ServerUnderTest:
    srv = BindServer(_zones(account), workdir=workdir / "bind").start()
    return ServerUnderTest(
        kind="bind", zone=account.domain, port=srv.port, tls_port=srv.tls_port,
        ca_file=str(srv.cert_file), tls_hostname=srv.tls_hostname, preserves_case=True,
        echoes_lease=False, other_zone=OTHER_ZONE, expect=BIND_EXPECT, stop=srv.stop, pid=srv.pid)


def start_knot(account: Account, workdir: Path) -> ServerUnderTest:
    srv = KnotServer(_zones(account), workdir=workdir / "knot").start()
    return ServerUnderTest(
        kind="knot", zone=account.domain, port=srv.port, tls_port=None, ca_file=None,
        tls_hostname="localhost", preserves_case=False, echoes_lease=False, other_zone=OTHER_ZONE,
        expect=KNOT_EXPECT, stop=srv.stop, pid=srv.pid)


def start_btmm_serve(account_file: Path, account: Account, workdir: Path, binary: str) -> ServerUnderTest:
    d = workdir / "btmm-serve"
    d.mkdir(parents=True, exist_ok=True)
    port, tls_port = free_port(), free_port()
    # another account's zone with its own key (issue 4: --zone repeatable, --tsig-key FILE:ZONE)
    other = _zones(account)[1]
    other_key = d / "other.key"
    other_key.write_text(f'key "{other.key_name}" {{\n\talgorithm hmac-sha256;\n'
                         f'\tsecret "{key_b64(other.key_secret)}";\n}};\n')
    other_key.chmod(0o600)
    argv = [binary, "--account", str(account_file), "--db", str(d / "state.db"),
            "--listen", f"{LOOPBACK}:{port}", "--tls-listen", f"{LOOPBACK}:{tls_port}",
            "--self-signed", "--cert-dir", str(d), "--json",
            "--zone", account.domain, "--zone", OTHER_ZONE, "--tsig-key", f"{other_key}:{OTHER_ZONE}"]
    errlog = (d / "stderr.log").open("wb")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errlog, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None

    def stop() -> None:
        stop_pid(proc)
        errlog.close()

    line = b""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not line.endswith(b"\n"):
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            line += chunk
        elif proc.poll() is not None:
            break
    try:
        info = json.loads(line.split(b"\n", 1)[0])
        ok = isinstance(info, dict) and info.get("type") == "server" and info.get("state") == "ready"
    except (json.JSONDecodeError, UnicodeDecodeError):
        info, ok = {}, False
    if not ok:
        stop()
        err = (d / "stderr.log").read_text(errors="replace")[-800:]
        raise RuntimeError(f"btmm-serve did not report ready (first line {line[:300]!r}; "
                           f"exit {proc.poll()}; stderr: {err})")
    cert = info.get("cert_file")
    return ServerUnderTest(
        kind="btmm-serve", zone=account.domain, port=port, tls_port=tls_port,
        ca_file=str(cert) if cert else None, tls_hostname="localhost", preserves_case=True,
        echoes_lease=True, other_zone=OTHER_ZONE, expect=SERVE_EXPECT, stop=stop, pid=proc.pid, info=info)


def start(kind: str, account_file: Path, account: Account, workdir: Path,
          script: Callable[[str], str]) -> ServerUnderTest:
    if kind == "bind":
        return start_bind(account, workdir)
    if kind == "knot":
        return start_knot(account, workdir)
    if kind == "btmm-serve":
        return start_btmm_serve(account_file, account, workdir, script("btmm-serve"))
    raise ValueError(f"unknown server kind {kind}")
