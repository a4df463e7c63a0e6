"""Helpers for the namespace tests of esp_udp: a Datapath living inside a namespace, keys."""

from __future__ import annotations

import ctypes
import hashlib
import ipaddress
import os
import subprocess
import sys
import threading
from typing import Any

from esp_udp.datapath import Datapath
from esp_udp.sa import SAParams, Suite
from tools.netns import Lab

CLONE_NEWNET = 0x40000000


def enter_netns(name: str) -> None:
    """Move the *calling thread* into network namespace ``name`` (setns is per thread)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name} failed")
    finally:
        os.close(fd)


def datapath_in(ns: str, local_inner: str, **kwargs: Any) -> Datapath:
    """A started Datapath whose TUN device, socket and worker live in namespace ``ns``.

    It is created from a helper thread that entered ``ns``; the worker thread it starts
    inherits the namespace, and its netlink and UDP sockets stay bound to it, so the
    test's main thread (still in the root namespace) can drive it.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            enter_netns(ns)
            dp = Datapath(local_inner, **kwargs)
            dp.start()
            box["dp"] = dp
        except BaseException as exc:  # handed to the caller below
            box["err"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "err" in box:
        raise box["err"]
    dp: Datapath = box["dp"]
    return dp


def sa_pair(suite: Suite, inner_a: str, outer_a: tuple[str, int], inner_b: str,
            outer_b: tuple[str, int], spi_base: int = 0x1000) -> tuple[SAParams, SAParams]:
    """(A's view, B's view) of a fresh SA pair between A and B."""
    params_a = SAParams(ipaddress.IPv6Address(inner_b), outer_b, suite, spi_base + 1, spi_base + 2,
                        os.urandom(suite.keymat_len), os.urandom(suite.keymat_len))
    return params_a, params_a.mirrored(ipaddress.IPv6Address(inner_a), outer_a)


TCP_SERVER = """
import hashlib, socket, sys
s = socket.socket(socket.AF_INET if "." in sys.argv[1] else socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5001)); s.listen(1); s.settimeout(60)
print("ready", flush=True)
c, _ = s.accept(); c.settimeout(60)
h = hashlib.sha256(); n = 0
while True:
    d = c.recv(65536)
    if not d: break
    h.update(d); n += len(d)
print(n, h.hexdigest(), flush=True)
"""

TCP_CLIENT = """
import socket, sys, time
data = bytes(range(256)) * 4096  # 1 MiB
chunks, pause = int(sys.argv[2]), float(sys.argv[3])
c = socket.create_connection((sys.argv[1], 5001), timeout=60)
for _ in range(chunks):
    c.sendall(data); time.sleep(pause)
c.close()
"""


def expected_digest(chunks: int) -> str:
    """SHA-256 of what TCP_CLIENT sends in ``chunks`` MiB."""
    return hashlib.sha256((bytes(range(256)) * 4096) * chunks).hexdigest()


def tcp_transfer(lab: Lab, server_ns: str, client_ns: str, dst: str, chunks: int) -> tuple[int, str]:
    """Send ``chunks`` MiB from ``client_ns`` to TCP_SERVER on ``dst`` (IPv6 or IPv4): (bytes, sha256)."""
    server = lab.popen(server_ns, [sys.executable, "-c", TCP_SERVER, dst], stdout=subprocess.PIPE)
    assert server.stdout is not None
    assert server.stdout.readline().strip() == b"ready"
    client = lab.popen(client_ns, [sys.executable, "-c", TCP_CLIENT, dst, str(chunks), "0"])
    assert client.wait(timeout=60) == 0
    result = server.stdout.readline().decode().split()
    server.wait(timeout=30)
    return int(result[0]), result[1]


def ping(lab: Lab, ns: str, dst: str, count: int = 3, interval: str = "0.05", wait: str = "1",
         timeout: float = 30) -> int:
    """Number of echo replies ``ns`` receives from ``dst`` (IPv6 or IPv4)."""
    family = "-4" if "." in dst else "-6"
    proc = lab.run(ns, ["ping", family, "-n", "-q", "-c", str(count), "-i", interval, "-W", wait, dst],
                   check=False, timeout=timeout)
    for line in proc.stdout.decode().splitlines():
        if "received" in line:
            return int(line.split(",")[1].split()[0])
    return 0


class Demands:
    """An on_demand callback that records the destinations (called in the worker thread)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, dest: str) -> None:
        with self.lock:
            self.calls.append(dest)

    def count(self, dest: str) -> int:
        with self.lock:
            return self.calls.count(dest)
