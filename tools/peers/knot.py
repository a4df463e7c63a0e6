"""Knot DNS 3.2 (`knotd`) as a real peer: temp dir, 127.0.0.1, free port, stopped by PID.

Each zone gets an ACL for its own TSIG key with ``action: update`` and ``update-type:
[PTR, SRV, TXT, A, AAAA]`` (the same policy as BIND's ``zonesub`` grant). Knot 3.2 has no
DoT server (``tls_port`` stays None), lower-cases owner names and targets, and refuses
"delete all RRsets at a name" under a type-restricted ACL (INTEROP.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from tools.peers.bind import DnsPeer, key_b64


@dataclass
class KnotServer(DnsPeer):
    """``knotd -c CONF`` from a temp dir; see the module docstring."""

    kind: ClassVar[str] = "knot"
    binary: ClassVar[str] = "knotd"
    package: ClassVar[str] = "knot"
    conf_name: ClassVar[str] = "knot.conf"
    log_name: ClassVar[str] = "knot.log"

    def prepare(self, d: Path) -> None:
        (d / "db").mkdir(exist_ok=True)

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
