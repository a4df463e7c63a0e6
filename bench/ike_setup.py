"""IKE setup time, btmm (ike_lite) vs strongSwan 5.9.8, and a half-open flood with cookies.

Run as root: ``.venv/bin/python bench/ike_setup.py [--rounds 20] [--flood 10000]``.

Setup time = first IKE_SA_INIT request sent → first CHILD SA ready, on the initiator:
* btmm initiator: measured inside ike_lite (``ChildSaUp.setup_s``, monotonic clock);
* strongSwan initiator: from charon's own log (ms timestamps), "generating IKE_SA_INIT
  request 0" → "CHILD_SA … established".
Pairs, all in the same run, over a direct veth between two namespaces, IKE only (no ESP
datapath on our side: this measures the control plane): strongSwan↔strongSwan (baseline),
btmm→strongSwan, strongSwan→btmm, btmm↔btmm. Ratios are against the baseline; target ≤ 1.0.

Flood: 10,000 IKE_SA_INIT requests (distinct SPIs, valid proposals and KE) from one
namespace at our responder, while a legitimate btmm initiator in another namespace
connects. With cookies (threshold 100 half-open SAs) and, for contrast, without.
Bounded: the flood is sent once, at a capped rate; every wait has a timeout.
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.netns import Lab
from tools.peers.strongswan import Charon, Conn, ike_sas
from tools.tunnel_ike import ServiceProcess

PSK = b"btmm benchmark psk 0123456789abcdef0123456789abcdef"
ID = {1: "one.bob.members.example", 2: "two.bob.members.example"}
INNER = {1: "fd00:b0b:2::1", 2: "fd00:b0b:2::2"}
ADDR = {1: "198.18.0.1", 2: "198.18.0.2"}


def pair_topology(lab: Lab, a: str, b: str) -> tuple[str, str]:
    na, nb = lab.ns(a), lab.ns(b)
    lab.veth(na, "va", nb, "vb")
    lab.addr(na, "va", f"{ADDR[1]}/24")
    lab.addr(nb, "vb", f"{ADDR[2]}/24")
    lab.addr(na, "lo", f"{INNER[1]}/128")
    lab.addr(nb, "lo", f"{INNER[2]}/128")
    return na, nb


def conn(me: int, name: str, remote: str, remote_port: int = 4500) -> Conn:
    other = 3 - me
    return Conn(
        name=name,
        local_id=ID[me],
        remote_id=ID[other],
        local_ts=INNER[me],
        remote_ts=INNER[other],
        remote_addrs=remote,
        local_port=4500,
        remote_port=remote_port,
        child=f"{name}-child",
    )


def charon_at(lab: Lab, ns: str, tmp: Path, me: int) -> Charon:
    ch = Charon(lab, ns, tmp / f"charon{me}")
    ch.start()
    ch.load([conn(me, "out", ADDR[3 - me]), conn(me, "in", "%any")], PSK)
    return ch


def service_at(lab: Lab, ns: str, tmp: Path, me: int, *extra: str) -> ServiceProcess:
    return ServiceProcess(lab, ns, tmp, *extra, psk=PSK, inner=INNER[me], ident=ID[me])


def _ts(line: str) -> float:
    t = datetime.strptime(line[:12], "%H:%M:%S.%f")
    return t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6


def charon_setup_ms(ch: Charon, after: int) -> float:
    """From charon's log after offset: IKE_SA_INIT request generated → CHILD_SA established."""
    m1 = ch.wait_log(r"(?m)^(\S+) \d+\[ENC\] generating IKE_SA_INIT request 0", after=after)
    m2 = ch.wait_log(r"(?m)^(\S+) \d+\[IKE\] CHILD_SA \S+ established with SPIs", after=after)
    return (_ts(m2.group(1)) - _ts(m1.group(1))) * 1000


def swan_initiates(ch: Charon, rounds: int, peer_down: ServiceProcess | Charon | None = None) -> list[float]:
    out = []
    for _ in range(rounds):
        mark = ch.log_size()
        ch.initiate("out-child")
        out.append(charon_setup_ms(ch, mark))
        for sa in ike_sas(ch.list_sas()):
            ch.swanctl("--terminate", "--ike-id", sa["uniqueid"], "--timeout", "5")
        if isinstance(peer_down, ServiceProcess):
            peer_down.wait("IkeSaDown")
            peer_down.clear()
    return out


def btmm_initiates(
    svc: ServiceProcess, rounds: int, peer_addr: str, peer: int, peer_svc: ServiceProcess | None = None
) -> list[float]:
    out = []
    for _ in range(rounds):
        svc.clear()
        svc.send(cmd="initiate", addr=f"{peer_addr}:4500", peer_id=ID[peer], inner=INNER[peer])
        up = svc.wait("ChildSaUp", timeout=15)
        out.append(float(up["setup_ms"]))
        svc.send(cmd="close")
        svc.wait("IkeSaDown", timeout=15)
        if peer_svc is not None:
            peer_svc.wait("IkeSaDown", timeout=15)
            peer_svc.clear()
    return out


def summary(values: list[float]) -> str:
    values = sorted(values)
    p90 = values[int(0.9 * (len(values) - 1))]
    return f"median {statistics.median(values):6.2f} ms  p90 {p90:6.2f} ms  (n={len(values)})"


FLOOD = r"""
import socket, sys, time
sys.path.insert(0, sys.argv[4])
from ike_lite import Config, IkeEndpoint
import os
n, target, rate = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
ep = IkeEndpoint(Config(psk=b"x", local_id="flood.example", local_inner="fd00::f"), os.urandom)
ep.initiate((target, 4500), None, "fd00::1", 0.0)
template = bytearray(ep.datagrams_to_send(0.0)[0].data)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
start = time.monotonic()
for i in range(n):
    template[4:12] = os.urandom(8)
    s.sendto(template, (target, 4500))
    ahead = start + (i + 1) / rate - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)
print(time.monotonic() - start, flush=True)
"""


def flood_run(tmp: Path, count: int, threshold: int, rate: float) -> dict[str, object]:
    with Lab() as lab:
        resp, fl, cl = lab.ns("resp"), lab.ns("flood"), lab.ns("client")
        lab.veth(resp, "rf", fl, "fr")
        lab.veth(resp, "rc", cl, "cr")
        lab.addr(resp, "rf", "198.18.1.1/24")
        lab.addr(fl, "fr", "198.18.1.2/24")
        lab.addr(resp, "rc", "198.18.2.1/24")
        lab.addr(cl, "cr", "198.18.2.2/24")
        responder = service_at(lab, resp, tmp, 2, "--cookie-threshold", str(threshold))
        client = service_at(lab, cl, tmp, 1)
        repo = str(Path(__file__).resolve().parent.parent)
        import subprocess

        flood = lab.popen(
            fl,
            [sys.executable, "-c", FLOOD, str(count), "198.18.1.1", str(rate), repo],
            stdout=subprocess.PIPE,
        )
        time.sleep(min(1.0, count / rate / 3))  # the flood is well under way
        t0 = time.monotonic()
        client.send(cmd="initiate", addr="198.18.2.1:4500", peer_id=ID[2], inner=INNER[2])
        try:
            up = client.wait("ChildSaUp", timeout=60)
            result: dict[str, object] = {
                "connected": True,
                "setup_ms": up["setup_ms"],
                "wall_ms": round((time.monotonic() - t0) * 1000, 1),
            }
        except Exception as exc:  # report the failure in the results
            downs = [e for e in client.drain() if e["event"] == "IkeSaDown"]
            result = {"connected": False, "error": downs[0]["message"] if downs else str(exc)[:200]}
        assert flood.stdout is not None
        result["flood_s"] = float(flood.stdout.readline() or 0)
        responder.send(cmd="stats")
        stats = responder.wait("stats", timeout=30)
        result.update({k: stats[k] for k in ("cookies_sent", "half_open_peak", "dropped", "sessions")})
        return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--flood", type=int, default=10_000)
    p.add_argument("--rate", type=float, default=5000.0, help="flood packets per second (cap)")
    p.add_argument("--flood-only", action="store_true", help="skip the setup-time comparison")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="btmm-bench-ike-"))
    atexit.register(shutil.rmtree, tmp, True)  # logs, account, keys: gone at exit
    if not args.flood_only:
        setup_times(tmp, args.rounds)
    print(
        f"\nhalf-open flood: {args.flood} IKE_SA_INIT requests at ≤{args.rate:.0f}/s while a btmm "
        "initiator connects",
        flush=True,
    )
    for label, threshold in (("cookies (threshold 100)", 100), ("no cookies", 10**9)):
        r = flood_run(tmp, args.flood, threshold, args.rate)
        print(f"  {label:24s} {r}", flush=True)
    return 0


def setup_times(tmp: Path, rounds: int) -> None:
    args = argparse.Namespace(rounds=rounds)
    results: dict[str, list[float]] = {}
    print(f"IKE setup (first request → CHILD SA ready), {args.rounds} rounds each, direct veth", flush=True)
    with Lab() as lab:
        s1, s2 = pair_topology(lab, "s1", "s2")
        c1, c2 = charon_at(lab, s1, tmp, 1), charon_at(lab, s2, tmp, 2)
        swan_initiates(c1, 2)  # warm-up
        results["strongSwan → strongSwan"] = swan_initiates(c1, args.rounds)
    with Lab() as lab:
        b1, s2 = pair_topology(lab, "b1", "s2")
        c2 = charon_at(lab, s2, tmp, 2)
        svc = service_at(lab, b1, tmp, 1)
        btmm_initiates(svc, 2, ADDR[2], 2)
        results["btmm → strongSwan"] = btmm_initiates(svc, args.rounds, ADDR[2], 2)
        results["strongSwan → btmm"] = swan_initiates(c2, args.rounds, peer_down=svc)
    with Lab() as lab:
        b1, b2 = pair_topology(lab, "b1", "b2")
        one, two = service_at(lab, b1, tmp, 1), service_at(lab, b2, tmp, 2)
        btmm_initiates(one, 2, ADDR[2], 2, two)
        results["btmm → btmm"] = btmm_initiates(one, args.rounds, ADDR[2], 2, two)
    base = statistics.median(results["strongSwan → strongSwan"])
    for name, values in results.items():
        ratio = statistics.median(values) / base
        print(f"  {name:26s} {summary(values)}  ratio {ratio:4.2f}×", flush=True)


if __name__ == "__main__":
    sys.exit(main())
