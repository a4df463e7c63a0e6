"""Port-mapping round trips against miniupnpd 2.3.1 in namespaces (home / router / peer).

Measured inside the home namespace, in one run:

* ``raw``: one NAT-PMP map request/response on a bare UDP socket — the server's floor;
* ``raw pcp``: the same for one PCP MAP request (miniupnpd does more work for PCP);
* ``portmap nat-pmp``: a full mapping with PortMapper + Driver (external address + map,
  i.e. two round trips, as the client does every round);
* ``portmap pcp``: a full PCP MAP (one round trip);
* ``natpmpc``: the libnatpmp command line (``natpmpc -a``), wall time including process start.

Prints medians and the ratios to ``raw`` / to natpmpc. Bounded: N iterations each.
Run: ``.venv/bin/python bench/portmap_latency.py [N]`` as root.
"""

from __future__ import annotations

import json
import socket
import statistics
import struct
import subprocess
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def worker(gateway: str, n: int) -> dict[str, list[float]]:
    from portmap.client import MappingUpdated, Mode
    from portmap.driver import Driver

    results: dict[str, list[float]] = {"raw": [], "raw pcp": [], "portmap nat-pmp": [], "portmap pcp": [],
                                       "natpmpc": []}
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((gateway, 5351))
    s.settimeout(2.0)
    request = struct.pack("!BBHHHI", 0, 1, 0, 5000, 5000, 600)
    for _ in range(n):
        t0 = time.perf_counter()
        s.send(request)
        s.recv(64)
        results["raw"].append(time.perf_counter() - t0)
    local = IPv4Address(s.getsockname()[0])
    pcp = (struct.pack("!BBHI", 2, 1, 0, 600) + b"\x00" * 10 + b"\xff\xff" + local.packed
           + bytes(range(12)) + struct.pack("!B3xHH", 17, 5004, 5004)
           + b"\x00" * 10 + b"\xff\xff" + b"\x00" * 4)
    for _ in range(n):
        t0 = time.perf_counter()
        s.send(pcp)
        s.recv(1100)
        results["raw pcp"].append(time.perf_counter() - t0)
    s.close()
    with Driver(IPv4Address(gateway), listen_announcements=False, clock=time.perf_counter) as driver:
        for mode, key, port in ((Mode.NATPMP, "portmap nat-pmp", 5001), (Mode.PCP, "portmap pcp", 5002)):
            for _ in range(n):
                mapper = driver.new_mapper(port, mode=mode, lifetime=600)
                t0 = time.perf_counter()
                mapper.start(t0)
                for now, event in driver.events(mapper, deadline=t0 + 5):
                    if isinstance(event, MappingUpdated):
                        results[key].append(now - t0)
                        break
    for _ in range(max(5, n // 10)):
        t0 = time.perf_counter()
        subprocess.run(["natpmpc", "-g", gateway, "-a", "5003", "5003", "udp", "600"],
                       capture_output=True, check=True)
        results["natpmpc"].append(time.perf_counter() - t0)
    return results


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], int(sys.argv[3]))))
        return
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    n = max(10, min(n, 2000))
    from tools.netns import Lab
    from tools.peers.miniupnpd import HomeRouter, Internet

    with Lab() as lab:
        inet = Internet(lab)
        home = HomeRouter(lab, "home", inet.ns)
        try:
            out = lab.run(home.lan_ns, [sys.executable, __file__, "--worker", home.router_lan, str(n)],
                          timeout=300)
        finally:
            home.close()
            inet.close()
        results: dict[str, list[float]] = json.loads(out.stdout)
    med = {k: statistics.median(v) * 1000 for k, v in results.items()}
    print(f"portmap round trips against miniupnpd 2.3.1 (median of {n}; natpmpc {len(results['natpmpc'])})")
    for key, value in med.items():
        p90 = sorted(results[key])[int(len(results[key]) * 0.9) - 1] * 1000
        print(f"  {key:16s} {value:7.3f} ms  (p90 {p90:.3f} ms)  x{value / med['raw']:.2f} of raw, "
              f"x{value / med['natpmpc']:.3f} of natpmpc")


if __name__ == "__main__":
    main()
