"""btmm-serve vs BIND 9.18 in the same run: dnsperf UDP qps, atomic registration latency,
and DNS Push latency (UPDATE sent → PUSH received by a subscriber).

Run: ``.venv/bin/python bench/serve_bench.py [--seconds 10] [--registrations 300]``.

* qps: ``dnsperf`` against each server, same query mix (SOA, NS, PTR, SRV, TXT, AAAA, an
  NXDOMAIN), ``-c 4 -q 200`` (``--dnsperf-args``) for ``--seconds``; the servers run one
  after the other.
* registration: one atomic UPDATE with a host's 10 records (DESIGN.md §4), TSIG-signed,
  sequentially on one TCP connection per server; median and p90 of the round trip.
  Both servers run at the same time and get the registrations in alternating blocks of
  ``--block`` (so load from elsewhere on the machine hits both alike). btmm-serve runs
  with its default ``--sync full`` (fsync per commit); BIND 9.18 fsyncs its journal too
  (twice per UPDATE, seen with strace).
* push: a DNS Push subscriber on btmm-serve's TLS listener; time from sending an UPDATE
  (on TCP) to the PUSH arriving, median of ``--pushes`` rounds (BIND has no DNS Push).

This is a shared 2-core VM: numbers are noisy; the ratios in one run are what matter.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dns.message
import dns.rcode
import dns.tsig
import dns.update

from dnssd_wa.push_client import PushConnection
from tests.server.conftest import make_account
from tests.server.hosts import host_update
from tests.server.serve_proc import ServeProc, account_key
from tools.peers.bind import BindServer, PeerZone

ZONE = "bob.members.example."


def seed(port: int, key: dns.tsig.Key) -> None:
    """The records the query mix asks for."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for i in range(20):
            _exchange(sock, host_update(ZONE, 60_000 + i, key).to_wire())


def _exchange(sock: socket.socket, wire: bytes) -> bytes:
    sock.sendall(struct.pack("!H", len(wire)) + wire)
    header = sock.recv(2, socket.MSG_WAITALL)
    return sock.recv(struct.unpack("!H", header)[0], socket.MSG_WAITALL)


DNSPERF_ARGS = ["-c", "4", "-q", "200"]


def dnsperf(port: int, seconds: int, workdir: Path) -> float:
    queries = workdir / "queries.txt"
    queries.write_text("\n".join([
        f"{ZONE} SOA", f"{ZONE} NS", f"_ssh._tcp.{ZONE} PTR", f"h60001.{ZONE} AAAA",
        f"Bob\\226\\128\\153s\\032Mac\\03260002._ssh._tcp.{ZONE} SRV",
        f"Bob\\226\\128\\153s\\032Mac\\03260003._ssh._tcp.{ZONE} TXT",
        f"nothing-here.{ZONE} A", f"_kerberos.h60004.{ZONE} TXT"]) + "\n")
    done = subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries),
                           "-l", str(seconds), *DNSPERF_ARGS],
                          capture_output=True, text=True, timeout=seconds + 60)
    match = re.search(r"Queries per second:\s+([\d.]+)", done.stdout)
    lost = re.search(r"Queries lost:\s+(\d+)", done.stdout)
    if match is None:
        raise RuntimeError(f"dnsperf failed: {done.stdout[-500:]} {done.stderr[-500:]}")
    print(f"    dnsperf: {match.group(1)} qps, lost {lost.group(1) if lost else '?'}")
    return float(match.group(1))


def _register(sock: socket.socket, key: dns.tsig.Key, first: int, rounds: int) -> list[float]:
    samples = []
    wires = [host_update(ZONE, first + i, key).to_wire() for i in range(rounds)]
    for wire in wires:
        t0 = time.perf_counter()
        reply = _exchange(sock, wire)
        samples.append(time.perf_counter() - t0)
        rcode = dns.message.from_wire(reply, keyring=False).rcode()
        if rcode != dns.rcode.NOERROR:
            raise RuntimeError(f"registration refused: {dns.rcode.to_text(rcode)}")
    return samples


def interleaved_registrations(ports: dict[str, int], key: dns.tsig.Key, rounds: int,
                              block: int) -> dict[str, list[float]]:
    """``rounds`` registrations per server, in alternating blocks of ``block``."""
    samples: dict[str, list[float]] = {name: [] for name in ports}
    socks = {name: socket.create_connection(("127.0.0.1", port), timeout=10) for name, port in ports.items()}
    try:
        done = 0
        while done < rounds:
            count = min(block, rounds - done)
            for name, sock in socks.items():
                samples[name] += _register(sock, key, 1000 + done, count)
            done += count
    finally:
        for sock in socks.values():
            sock.close()
    return samples


async def push_latency(serve: ServeProc, key: dns.tsig.Key, rounds: int) -> list[float]:
    conn = await PushConnection.connect("127.0.0.1", serve.tls_port)
    sub = await conn.subscribe(f"_bench._tcp.{ZONE}", "PTR")
    samples = []
    loop = asyncio.get_running_loop()
    with socket.create_connection(("127.0.0.1", serve.port), timeout=10) as sock:
        for i in range(rounds):
            up = dns.update.UpdateMessage(ZONE, keyring=key)
            up.add(f"_bench._tcp.{ZONE}", 60, "PTR", f"bench-{i}._bench._tcp.{ZONE}")
            wire = up.to_wire()
            t0 = time.perf_counter()
            await loop.run_in_executor(None, _exchange, sock, wire)
            event = await asyncio.wait_for(sub.__anext__(), 5)
            samples.append(time.perf_counter() - t0)
            assert event.kind == "add"
    await conn.close()
    return samples


def ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[int(len(ordered) * 0.9) - 1]
    return f"median {statistics.median(ordered) * 1000:.2f} ms, p90 {p90 * 1000:.2f} ms (n={len(ordered)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--registrations", type=int, default=300)
    parser.add_argument("--pushes", type=int, default=100)
    parser.add_argument("--block", type=int, default=25, help="registrations per server in turn")
    parser.add_argument("--dnsperf-args", default=" ".join(DNSPERF_ARGS),
                        help="dnsperf load options (default: %(default)s)")
    args = parser.parse_args()
    DNSPERF_ARGS[:] = args.dnsperf_args.split()
    work = Path(tempfile.mkdtemp(prefix="btmm-serve-bench-"))
    atexit.register(shutil.rmtree, work, True)  # logs, account, keys: gone at exit
    account = make_account(work)
    key = account_key(account)
    zone = PeerZone(ZONE.rstrip("."), key.name.to_text().rstrip("."), key.secret)
    results: dict[str, dict[str, float]] = {}
    print("BIND 9.18 (named, 2 worker threads by default on this 2-core VM) and btmm-serve, both running")
    with BindServer([zone], tls=False, max_records_per_type=0, workdir=work / "bind") as bind, \
            ServeProc(work, account, "--rate-limit", "0") as serve:
        seed(bind.port, key)
        seed(serve.port, key)
        regs = interleaved_registrations({"bind": bind.port, "serve": serve.port}, key, args.registrations,
                                         args.block)
        print(f"  registration BIND:       {ms(regs['bind'])}")
        print(f"  registration btmm-serve: {ms(regs['serve'])}")
        print("  dnsperf BIND")
        bind_qps = dnsperf(bind.port, args.seconds, work)
        print("  dnsperf btmm-serve")
        serve_qps = dnsperf(serve.port, args.seconds, work)
        push = asyncio.run(push_latency(serve, key, args.pushes))
        print(f"  push UPDATE→PUSH: {ms(push)}")
        results["bind"] = {"qps": bind_qps, "reg": statistics.median(regs["bind"])}
        results["serve"] = {"qps": serve_qps, "reg": statistics.median(regs["serve"]),
                            "push": statistics.median(push)}
    b, s = results["bind"], results["serve"]
    print("\nsummary (same run)")
    print(f"  UDP qps: btmm-serve {s['qps']:.0f} vs BIND {b['qps']:.0f} → {s['qps'] / b['qps']:.2f}× "
          "(target ≥ 0.5×)")
    print(f"  registration latency: btmm-serve {s['reg'] * 1000:.2f} ms vs BIND {b['reg'] * 1000:.2f} ms → "
          f"{s['reg'] / b['reg']:.2f}× (target ≤ 1.0×)")
    print(f"  push latency (UPDATE sent → PUSH received): {s['push'] * 1000:.2f} ms median (target < 100 ms)")


if __name__ == "__main__":
    main()
