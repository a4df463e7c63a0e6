"""Knot DNS 3.2 (`knotd`) as a real peer: temp dir, 127.0.0.1, free port, stopped by PID.

Each zone gets an ACL for its own TSIG key with ``action: update`` and ``update-type:
[PTR, SRV, TXT, A, AAAA]`` (the same policy as BIND's ``zonesub`` grant). Knot 3.2 has no
DoT server (``tls_port`` stays None), lower-cases owner names and targets, and refuses
"delete all RRsets at a name" under a type-restricted ACL (INTEROP.md).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tools.peers.bind import LOOPBACK, PeerZone, _Proc, free_port, key_b64, stop_pid, wait_ready, zone_text


@dataclass
class KnotServer:
    """``knotd -c CONF`` from a temp dir; see the module docstring."""

    zones: list[PeerZone]
    workdir: Path | None = None
    address: str = LOOPBACK
    port: int = 0
    tls_port: int | None = None
    cert_file: Path | None = None
    tls_hostname: str = "localhost"
    kind: str = "knot"
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

    def config(self, d: Path) -> str:
        keys = "".join(
            f"  - id: {z.key_name}\n    algorithm: hmac-sha256\n    secret: {key_b64(z.key_secret)}\n"
            for z in self.zones)
        acls = "".join(
            f"  - id: update_{i}\n    key: {z.key_name}\n    action: update\n"
            "    update-type: [PTR, SRV, TXT, A, AAAA]\n"
            for i, z in enumerate(self.zones))
        zones = "".join(
            f"  - domain: {z.name}\n    file: {d / (z.name + '.zone')}\n    acl: update_{i}\n"
            "    zonefile-sync: -1\n    journal-content: changes\n"
            for i, z in enumerate(self.zones))
        return (
            "server:\n"
            f"    rundir: {d}\n"
            f"    listen: {self.address}@{self.port}\n"
            "database:\n"
            f"    storage: {d / 'db'}\n"
            "control:\n"
            f"    listen: {d / 'knot.sock'}\n"
            "log:\n"
            f"  - target: {d / 'knot.log'}\n    any: info\n"
            f"key:\n{keys}"
            f"acl:\n{acls}"
            f"zone:\n{zones}"
        )

    def start(self) -> KnotServer:
        binary = shutil.which("knotd") or "/usr/sbin/knotd"
        if not Path(binary).exists():
            raise RuntimeError("knotd not found: apt-get install knot")
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="btmm-knot-"))
            self._own_dir = True
        d = self.workdir
        d.mkdir(parents=True, exist_ok=True)
        (d / "db").mkdir(exist_ok=True)
        self.allocate_ports()
        for z in self.zones:
            (d / (z.name + ".zone")).write_text(zone_text(z))
        conf = d / "knot.conf"
        conf.write_text(self.config(d))
        log = d / "knotd.stderr"
        with log.open("wb") as err:
            self._proc.proc = subprocess.Popen([binary, "-c", str(conf)], cwd=d,
                                               stdout=err, stderr=subprocess.STDOUT)
        self._proc.log = log
        try:
            for z in self.zones:
                wait_ready(self._proc.proc, self.port, z.name, d / "knot.log", "knotd")
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop_pid(self._proc.proc)
        if self._own_dir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> KnotServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
