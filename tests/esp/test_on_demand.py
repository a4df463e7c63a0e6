"""On-demand tunnels: a packet to a ULA without an SA is held and announced, then sent
once the SA is installed (no lost first packet); held packets expire and are counted."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from esp_udp.datapath import Datapath
from esp_udp.sa import Suite
from tests.esp.nslib import Demands, datapath_in, sa_pair
from tools.netns import Lab, wait_for

A_INNER, B_INNER, C_INNER = "fd00:6:1::a", "fd00:6:1::b", "fd00:6:2::c"
A_OUTER, B_OUTER = ("198.18.6.1", 4500), ("198.18.6.2", 4500)
PREFIX = "fd00:6::/32"

pytestmark = pytest.mark.netns

TCP_ECHO_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5002)); s.listen(1); s.settimeout(30)
print("ready", flush=True)
c, _ = s.accept(); c.settimeout(30)
c.sendall(c.recv(100)); c.close()
"""

TCP_ECHO_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], 5002), timeout=20)
c.sendall(b"on-demand"); print(c.recv(100).decode(), flush=True)
"""



@pytest.fixture(scope="module")
def topo() -> Iterator[tuple[Lab, str, str]]:
    with Lab() as lab:
        a, b = lab.ns("oda"), lab.ns("odb")
        lab.veth(a, "va", b, "vb")
        lab.addr(a, "va", "198.18.6.1/24")
        lab.addr(b, "vb", "198.18.6.2/24")
        yield lab, a, b


def syn_retransmits(lab: Lab, ns: str) -> int:
    out = lab.run(ns, ["nstat", "-asz", "TcpExtTCPSynRetrans"]).stdout.decode()
    for line in out.splitlines():
        if line.startswith("TcpExtTCPSynRetrans"):
            return int(line.split()[1])
    raise AssertionError(f"no TcpExtTCPSynRetrans in nstat output: {out!r}")


def test_on_demand_hold_release_and_expiry(topo: tuple[Lab, str, str]) -> None:
    lab, ns_a, ns_b = topo
    suite = Suite.AES256GCM16
    pa, pb = sa_pair(suite, A_INNER, A_OUTER, B_INNER, B_OUTER, spi_base=0x6000)
    demands = Demands()
    a: Datapath = datapath_in(ns_a, A_INNER, tun_name="btmmod0", on_demand=demands)
    b: Datapath = datapath_in(ns_b, B_INNER, tun_name="btmmod0")
    try:
        b.add_peer(pb)
        a.route_prefix(PREFIX)
        routes = lab.run(ns_a, ["ip", "-6", "route", "show", "dev", "btmmod0"]).stdout.decode()
        assert "fd00:6::/32 " in routes and "mtu 1280" in routes

        # 1. Echo requests to B with no SA yet: held, B announced (once), then delivered in
        #    order once the SA is there — all three answered, none lost.
        ping = lab.popen(ns_a, ["ping", "-6", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "5", B_INNER],
                         stdout=subprocess.PIPE)
        wait_for(lambda: demands.count(B_INNER) == 1, 5, what="on_demand for B")
        wait_for(lambda: a.counters()["pending"].get(B_INNER, 0) >= 1, 5, what="held echo request")
        a.add_peer(pa)  # the prefix route covers B already: the /128 route must still work
        out, _ = ping.communicate(timeout=30)
        assert " 3 received" in out.decode(), out.decode()
        assert demands.count(B_INNER) == 1
        counters = a.counters()
        assert counters["pending"] == {}
        assert counters["peers"][0]["packets_out"] == 3 and counters["peers"][0]["drops"] == 0
        assert b.counters()["peers"][0]["packets_in"] == 3
        routes = lab.run(ns_a, ["ip", "-6", "route", "show", "dev", "btmmod0"]).stdout.decode()
        assert f"{B_INNER} " in routes and "fd00:6::/32 " in routes

        # 2. TCP: the first SYN is held, not lost (no SYN retransmission in A's namespace).
        qa, qb = sa_pair(suite, A_INNER, A_OUTER, B_INNER, B_OUTER, spi_base=0x6100)
        b.add_peer(qb)
        a.remove_peer(B_INNER)
        server = lab.popen(ns_b, [sys.executable, "-c", TCP_ECHO_SERVER, B_INNER], stdout=subprocess.PIPE)
        assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
        retrans = syn_retransmits(lab, ns_a)
        client = lab.popen(ns_a, [sys.executable, "-c", TCP_ECHO_CLIENT, B_INNER], stdout=subprocess.PIPE)
        wait_for(lambda: a.counters()["pending"].get(B_INNER, 0) == 1, 10, what="held SYN")
        a.add_peer(qa)
        reply, _ = client.communicate(timeout=30)
        assert reply.decode().strip() == "on-demand"
        assert server.wait(timeout=10) == 0
        assert syn_retransmits(lab, ns_a) == retrans
        assert demands.count(B_INNER) == 2  # remove_peer() restarted the once-a-second limit

        # 3. A destination whose SA never comes: announced at most once a second, its held
        #    packets expire (pending_timeout 1 s) and are counted; nothing is sent.
        a.pending_timeout = 1.0  # (3 s by default: room for a slow add_peer above)
        sent = 8
        lab.run(ns_a, ["ping", "-6", "-n", "-q", "-c", str(sent), "-i", "0.2", "-W", "1", C_INNER],
                check=False, timeout=30)
        wait_for(lambda: a.counters()["unattributed"]["drop_reasons"].get("pending_expired", 0) == sent,
                 5, what="held packets to expire")
        assert 1 <= demands.count(C_INNER) < sent
        assert a.counters()["pending"] == {}

        # Multicast and link-local destinations are never announced (MLD, router solicitations).
        assert all(not d.startswith(("ff", "fe80")) for d in demands.calls)

        a.unroute_prefix(PREFIX)
        routes = lab.run(ns_a, ["ip", "-6", "route", "show", "dev", "btmmod0"]).stdout.decode()
        assert "fd00:6::/32" not in routes and f"{B_INNER} " in routes

        # One ULA routed by the owner (armed on-demand peer) and also a peer's host route:
        # removing the peer keeps the owner's route, unrouting it keeps the peer's.
        a.route_prefix(B_INNER)
        a.remove_peer(B_INNER)
        routes = lab.run(ns_a, ["ip", "-6", "route", "show", "dev", "btmmod0"]).stdout.decode()
        assert f"{B_INNER} " in routes
        a.add_peer(qa)
        a.unroute_prefix(B_INNER)
        routes = lab.run(ns_a, ["ip", "-6", "route", "show", "dev", "btmmod0"]).stdout.decode()
        assert f"{B_INNER} " in routes
        a.remove_peer(B_INNER)
        routes = lab.run(ns_a, ["ip", "-6", "route", "show", "dev", "btmmod0"]).stdout.decode()
        assert f"{B_INNER} " not in routes
    finally:
        a.close()
        b.close()


def test_without_on_demand_unrouted_packets_are_dropped(topo: tuple[Lab, str, str]) -> None:
    lab, ns_a, _ = topo
    a = datapath_in(ns_a, A_INNER, tun_name="btmmod1")
    try:
        a.route_prefix(PREFIX)
        lab.run(ns_a, ["ping", "-6", "-n", "-q", "-c", "2", "-i", "0.1", "-W", "1", C_INNER],
                check=False, timeout=30)
        wait_for(lambda: a.counters()["unattributed"]["drop_reasons"].get("no_route", 0) >= 2, 5,
                 what="no_route drops")
        assert a.counters()["pending"] == {} and a.on_demand_calls == 0
    finally:
        a.close()
