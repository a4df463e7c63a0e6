"""Helpers for the strongSwan interop suite: a topology, our IKE runner as a child process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tools.netns import Lab, LabError
from tools.peers.strongswan import Charon, Conn
from tools.tunnel_ike import ServiceProcess

PSK = b"btmm interop psk: 0123456789abcdef0123456789abcdef"
BTMM_ID = "imac.bob.members.example"
SWAN_ID = "swan.bob.members.example"
BTMM_INNER = "fd00:b0b:1::1"
SWAN_INNER = "fd00:b0b:1::2"


class Runner(ServiceProcess):
    """Our IKE service in ``ns`` with this suite's PSK and identity."""

    def __init__(
        self,
        lab: Lab,
        ns: str,
        tmp: Path,
        *extra: str,
        psk: bytes = PSK,
        inner: str = BTMM_INNER,
        ident: str = BTMM_ID,
    ) -> None:
        super().__init__(lab, ns, tmp, *extra, psk=psk, inner=inner, ident=ident)


def direct_topology(lab: Lab) -> tuple[str, str, str, str]:
    """btmm ns ``b`` (198.18.0.1) ↔ strongSwan ns ``s`` (198.18.0.2) on one veth."""
    b, s = lab.ns("b"), lab.ns("s")
    lab.veth(b, "vb", s, "vs")
    lab.addr(b, "vb", "198.18.0.1/24")
    lab.addr(s, "vs", "198.18.0.2/24")
    lab.addr(s, "lo", f"{SWAN_INNER}/128")
    return b, s, "198.18.0.1", "198.18.0.2"


def swan_conn(name: str, remote: str, **kw: Any) -> Conn:
    return Conn(
        name=name,
        local_id=SWAN_ID,
        remote_id=BTMM_ID,
        local_ts=SWAN_INNER,
        remote_ts=BTMM_INNER,
        remote_addrs=remote,
        **kw,
    )


def start_charon(lab: Lab, ns: str, tmp: Path, conns: list[Conn], psk: bytes = PSK) -> Charon:
    charon = Charon(lab, ns, tmp / f"charon-{ns}")
    charon.start()
    charon.load(conns, psk)
    return charon


TCP_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5001)); s.listen(4)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    n = int(c.recv(16).decode())
    c.sendall(b"x" * n); c.close()
"""

TCP_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], 5001), timeout=10)
c.sendall(str(int(sys.argv[2])).encode().ljust(16))
got = 0
while True:
    b = c.recv(65536)
    if not b: break
    got += len(b)
print(got)
"""


def start_tcp_server(lab: Lab, ns: str, address: str) -> None:
    proc = lab.popen(ns, [sys.executable, "-c", TCP_SERVER, address], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        raise LabError("TCP server did not start")


def tcp_transfer(lab: Lab, ns: str, address: str, size: int = 2_000_000) -> int:
    out = lab.run(ns, [sys.executable, "-c", TCP_CLIENT, address, str(size)], timeout=30)
    return int(out.stdout.decode().strip())


def ping(lab: Lab, ns: str, address: str, count: int = 3, interval: float = 0.2) -> int:
    """Number of replies."""
    out = lab.run(
        ns,
        ["ping", "-6", "-n", "-c", str(count), "-i", str(interval), "-W", "2", address],
        check=False,
        timeout=count * interval + 10,
    )
    import re

    m = re.search(r"(\d+) received", out.stdout.decode())
    return int(m.group(1)) if m else 0


class BackgroundPing:
    """ping -6 running while something happens (rekey with traffic flowing)."""

    def __init__(self, lab: Lab, ns: str, address: str, count: int = 40, interval: float = 0.05) -> None:
        self.lab = lab
        self.proc = lab.popen(
            ns,
            ["ping", "-6", "-n", "-c", str(count), "-i", str(interval), "-W", "1", address],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def result(self) -> tuple[int, int]:
        """(transmitted, received)."""
        import re

        out, _ = self.proc.communicate(timeout=30)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out.decode())
        return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


class Capture:
    """tcpdump on one interface (started when it says it listens), read back with tshark."""

    def __init__(self, lab: Lab, ns: str, ifname: str, path: Path) -> None:
        self.lab, self.path = lab, path
        self.proc = lab.popen(
            ns,
            ["tcpdump", "-U", "--immediate-mode", "-n", "-Z", "root", "-i", ifname, "-w", str(path), "udp"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        if b"listening on" not in line:
            raise LabError(f"tcpdump did not start: {line!r}")

    def stop(self) -> None:
        time.sleep(0.3)
        self.lab.stop(self.proc)

    def tshark(self, *args: str) -> str:
        out = self.lab.run(None, ["tshark", "-n", "-r", str(self.path), *args], timeout=60, check=False)
        if out.returncode != 0 or not out.stdout:
            raise LabError(
                f"tshark on {self.path} ({self.path.stat().st_size} bytes) failed: "
                f"{out.stderr.decode(errors='replace')[-600:]}"
            )
        return out.stdout.decode(errors="replace")
