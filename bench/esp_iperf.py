"""iperf3 TCP and ping RTT through the btmm datapath vs strongSwan kernel-libipsec, same run.

Topology: two network namespaces on a veth (outer MTU 1500), ULA /128 at each end.

* btmm: ``btmm-tunnel-up --static-keys`` on each side (AES-256-GCM), tunnel MTU 1280
  (BTMM's choice) and a larger one (1400, strongSwan's TUN default);
* strongSwan 5.9: charon + kernel-libipsec in each namespace (tools/peers/strongswan.py),
  IKEv2 PSK, ``encap = yes``, ESP aes256gcm16, its ipsec0 TUN at its default MTU (1400).

Prints Mbit/s (median of runs) and idle ping RTT for each, and the ratios btmm/strongSwan.
``--inner4``: the btmm tunnels also carry inner IPv4 (10.99.0.1 ↔ 10.99.0.2, next header 4),
and iperf3 runs between those addresses too, after the IPv6 runs in the same tunnel; printed
against btmm's IPv6 and strongSwan's (IPv6) rate.
Run: .venv/bin/python bench/esp_iperf.py [--time 8] [--runs 3] [--mtu 1280 1400] [--offload tso gro]
[--inner4]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from esp_udp.sa import SAParams, Suite
from tools.netns import Lab, wait_for
from tools.peers.strongswan import Charon, Conn

A_OUTER, B_OUTER = "198.18.9.1", "198.18.9.2"
A_INNER, B_INNER = "fd00:9::1", "fd00:9::2"
A4, B4 = "10.99.0.1", "10.99.0.2"
BIN = Path(sys.executable).parent


def ping_rtt(lab: Lab, ns: str, dst: str, count: int = 50) -> tuple[float, float]:
    """(median, mean) RTT in ms of ``count`` idle pings, 20 ms apart."""
    out = lab.run(ns, ["ping", "-6", "-n", "-c", str(count), "-i", "0.02", dst], check=False,
                  timeout=60).stdout.decode()
    times = [float(m) for m in re.findall(r"time=([\d.]+) ms", out)]
    if not times:
        return float("nan"), float("nan")
    return statistics.median(times), statistics.fmean(times)


def iperf(lab: Lab, client_ns: str, server_ns: str, dst: str, seconds: int, runs: int) -> list[float]:
    results = []
    for _ in range(runs):
        server = lab.popen(server_ns, ["iperf3", "-s", "-1", "-B", dst], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        proc = lab.run(client_ns, ["iperf3", "-c", dst, "-t", str(seconds), "-J"], check=False,
                       timeout=seconds + 30)
        lab.stop(server)
        try:
            data = json.loads(proc.stdout)
            results.append(data["end"]["sum_received"]["bits_per_second"] / 1e6)
        except (json.JSONDecodeError, KeyError):
            results.append(0.0)
    return results


def topology(lab: Lab) -> tuple[str, str]:
    a, b = lab.ns("a"), lab.ns("b")
    lab.veth(a, "va", b, "vb")
    lab.addr(a, "va", f"{A_OUTER}/24")
    lab.addr(b, "vb", f"{B_OUTER}/24")
    return a, b


def run_btmm(mtu: int, seconds: int, runs: int, tmp: Path, offload: str = "tso",
             inner4: bool = False) -> dict[str, Any]:
    """btmm's iperf3 rates (``mbit``; ``mbit4`` between the inner IPv4 addresses) and RTT."""
    suite = Suite.AES256GCM16
    with Lab() as lab:
        a, b = topology(lab)
        pa = SAParams(ipaddress.IPv6Address(B_INNER), (B_OUTER, 4500), suite, 0x9001, 0x9002,
                      os.urandom(36), os.urandom(36),
                      inner4=ipaddress.IPv4Address(B4) if inner4 else None)
        pb = pa.mirrored(ipaddress.IPv6Address(A_INNER), (A_OUTER, 4500),
                         inner4=ipaddress.IPv4Address(A4) if inner4 else None)
        procs = []
        for ns, inner, local4, params in ((a, A_INNER, A4, pa), (b, B_INNER, B4, pb)):
            path = tmp / f"keys-{ns}.json"
            local: dict[str, Any] = {"inner": inner, "port": 4500}
            if inner4:
                local["inner4"] = local4
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"local": local, "peers": [params.to_json()]}, f)
            procs.append(lab.popen(ns, [str(BIN / "btmm-tunnel-up"), "--static-keys", str(path), "--json",
                                        "--mtu", str(mtu), "--offload", offload,
                                        "--state-dir", str(tmp / f"state-{ns}")],
                                   stdout=subprocess.PIPE))
        for proc in procs:
            assert proc.stdout is not None
            proc.stdout.readline()
        rtt = ping_rtt(lab, a, B_INNER)
        rates = iperf(lab, a, b, B_INNER, seconds, runs)
        rates4 = iperf(lab, a, b, B4, seconds, runs) if inner4 else []
        for proc in procs:
            lab.stop(proc)
    return {"rtt_ms": rtt, "mbit": rates, "mbit4": rates4}


def run_strongswan(seconds: int, runs: int, tmp: Path, mtu: int | None = None) -> dict[str, Any]:
    psk = os.urandom(32)
    with Lab() as lab:
        a, b = topology(lab)
        lab.addr(a, "lo", f"{A_INNER}/128")
        lab.addr(b, "lo", f"{B_INNER}/128")
        ca = Charon(lab, a, tmp / "charon-a")
        cb = Charon(lab, b, tmp / "charon-b")
        ca.start()
        cb.start()
        ca.load([Conn("bench", "a.bench.example", "b.bench.example", A_INNER, B_INNER,
                      remote_addrs=B_OUTER, child="bench-child")], psk)
        cb.load([Conn("bench", "b.bench.example", "a.bench.example", B_INNER, A_INNER,
                      child="bench-child")], psk)
        ca.initiate("bench-child")
        if mtu is not None:  # kernel-libipsec's ipsec0 defaults to 1400
            for ns in (a, b):
                lab.run(ns, ["ip", "link", "set", "ipsec0", "mtu", str(mtu)])
        wait_for(lambda: lab.run(a, ["ping", "-6", "-c", "1", "-W", "1", B_INNER], check=False,
                                 timeout=5).returncode == 0, 15, what="strongSwan tunnel")
        rtt = ping_rtt(lab, a, B_INNER)
        rates = iperf(lab, a, b, B_INNER, seconds, runs)
        link = lab.run(a, ["ip", "-o", "link", "show", "ipsec0"], check=False).stdout.decode()
        m = re.search(r"mtu (\d+)", link)
        ca.stop()
        cb.stop()
    return {"rtt_ms": rtt, "mbit": rates, "mtu": int(m.group(1)) if m else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--time", type=int, default=8, help="seconds per iperf3 run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mtu", type=int, nargs="+", default=[1280, 1400])
    parser.add_argument("--offload", nargs="+", default=["tso"], choices=["gro", "tso", "none"],
                        help="btmm TUN offload modes to measure (default: tso, btmm-tunnel-up's)")
    parser.add_argument("--inner4", action="store_true",
                        help="also measure btmm between the inner IPv4 addresses (same tunnels)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="esp-bench-") as tmpdir:
        tmp = Path(tmpdir)
        swans = {}
        for mtu in args.mtu:
            swan = swans[mtu] = run_strongswan(args.time, args.runs, tmp / f"swan{mtu}",
                                               None if mtu == 1400 else mtu)
            print(f"strongSwan kernel-libipsec (TUN MTU {swan['mtu']}):   iperf3 "
                  f"{statistics.median(swan['mbit']):7.0f} Mbit/s "
                  f"(runs {', '.join(f'{r:.0f}' for r in swan['mbit'])}), ping median/mean "
                  f"{swan['rtt_ms'][0]:.3f}/{swan['rtt_ms'][1]:.3f} ms")
        for mtu, offload in ((m, o) for m in args.mtu for o in args.offload):
            btmm = run_btmm(mtu, args.time, args.runs, tmp, offload, args.inner4)
            rate = statistics.median(btmm["mbit"])
            swan = swans[mtu]
            swan_rate = statistics.median(swan["mbit"])
            print(f"btmm datapath (TUN MTU {mtu}, offload {offload:4}): iperf3 {rate:7.0f} Mbit/s "
                  f"(runs {', '.join(f'{r:.0f}' for r in btmm['mbit'])}), ping median/mean "
                  f"{btmm['rtt_ms'][0]:.3f}/{btmm['rtt_ms'][1]:.3f} ms\n"
                  f"    → {rate / swan_rate:.2f}× strongSwan's throughput at this MTU; RTT "
                  f"{btmm['rtt_ms'][0] / swan['rtt_ms'][0]:.2f}× (median) "
                  f"{btmm['rtt_ms'][1] / swan['rtt_ms'][1]:.2f}× (mean) of strongSwan's")
            if args.inner4:
                rate4 = statistics.median(btmm["mbit4"])
                print(f"    inner IPv4 ({A4} → {B4}): iperf3 {rate4:7.0f} Mbit/s "
                      f"(runs {', '.join(f'{r:.0f}' for r in btmm['mbit4'])})\n"
                      f"    → {rate4 / rate:.2f}× btmm's IPv6 in this tunnel, "
                      f"{rate4 / swan_rate:.2f}× strongSwan's (IPv6) throughput at this MTU")
    print("targets: throughput ≥ 0.5× now (goal ≥ 1.0×); RTT ≤ half of strongSwan's")


if __name__ == "__main__":
    main()
