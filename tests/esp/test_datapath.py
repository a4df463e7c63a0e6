"""The Datapath API in two namespaces: traffic, IKE demux, keepalive, make-before-break rekey,
rekey signals, peer removal and teardown (in-process, so the API itself is exercised)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from esp_udp.datapath import Datapath, DatapathEvent
from esp_udp.errors import ConfigError
from esp_udp.sa import Suite
from tests.esp.nslib import datapath_in, expected_digest, ping, sa_pair, tcp_transfer
from tools.netns import Lab, wait_for

A_INNER, B_INNER, C_INNER = "fd00:5::a", "fd00:5::b", "fd00:5::c"
A_OUTER, B_OUTER = ("198.18.5.1", 4500), ("198.18.5.2", 4500)

pytestmark = pytest.mark.netns


class Side:
    def __init__(self, dp: Datapath) -> None:
        self.dp = dp
        self.ike: list[tuple[bytes, tuple[str, int]]] = []
        self.events: list[DatapathEvent] = []
        self.lock = threading.Lock()
        dp.on_ike = self._ike
        dp.on_event = self._event

    def _ike(self, data: bytes, addr: tuple[str, int]) -> None:
        with self.lock:
            self.ike.append((data, addr))

    def _event(self, event: DatapathEvent) -> None:
        with self.lock:
            self.events.append(event)

    def kinds(self) -> list[str]:
        with self.lock:
            return [e.kind for e in self.events]


@pytest.fixture(scope="module")
def topo() -> Iterator[tuple[Lab, str, str]]:
    with Lab() as lab:
        a, b = lab.ns("dpa"), lab.ns("dpb")
        lab.veth(a, "va", b, "vb")
        lab.addr(a, "va", "198.18.5.1/24")
        lab.addr(b, "vb", "198.18.5.2/24")
        yield lab, a, b



def test_datapath_api(topo: tuple[Lab, str, str]) -> None:
    lab, ns_a, ns_b = topo
    suite = Suite.AES128GCM16
    pa, pb = sa_pair(suite, A_INNER, A_OUTER, B_INNER, B_OUTER)
    a = Side(datapath_in(ns_a, A_INNER, tun_name="btmmt0", keepalive_interval=0.3, linger=0.5,
                         seq_limits=(40, 60)))
    b = Side(datapath_in(ns_b, B_INNER, tun_name="btmmt0", linger=0.5))
    try:
        a.dp.add_peer(pa, keepalive=True)
        b.dp.add_peer(pb)
        routes = lab.run(ns_a, ["ip", "-6", "route", "show", "dev", "btmmt0"]).stdout.decode()
        assert f"{B_INNER} " in routes and "mtu 1280" in routes
        assert ping(lab, ns_a, B_INNER) == 3

        # IKE shares the port: marker added on send, stripped and handed over on receipt.
        a.dp.send_ike(b"\x11" * 28, B_OUTER)
        wait_for(lambda: b.ike, 5, what="IKE datagram at B")
        assert b.ike[0] == (b"\x11" * 28, A_OUTER)

        # Keepalive: A marked B as "we are behind a NAT"; idle → 0xFF datagrams.
        before = b.dp.keepalives_in
        wait_for(lambda: b.dp.keepalives_in >= before + 2, 5, what="keepalives at B")
        assert b.dp.keepalives_in >= 2 and b.dp.counters()["peers"][0]["drops"] == 0

        # Make-before-break rekey under a ping stream: no loss.
        qa, qb = sa_pair(suite, A_INNER, A_OUTER, B_INNER, B_OUTER, spi_base=0x2000)
        flood = lab.popen(ns_a, ["ping", "-6", "-n", "-q", "-c", "60", "-i", "0.01", B_INNER],
                          stdout=subprocess.PIPE)
        time.sleep(0.2)
        a.dp.install_inbound(B_INNER, qa.spi_in, suite, qa.key_in)
        b.dp.install_inbound(A_INNER, qb.spi_in, suite, qb.key_in)
        a.dp.rekey(qa)
        b.dp.rekey(qb)
        out, _ = flood.communicate(timeout=30)
        assert " 0% packet loss" in out.decode(), out.decode()
        counters_a = a.dp.counters()["peers"][0]
        assert counters_a["spi_out"] == f"{qa.spi_out:08x}"
        wait_for(lambda: a.kinds().count("sa_expired") == 1 and b.kinds().count("sa_expired") == 1,
                 5, what="old inbound SAs to expire")
        assert a.dp.counters()["peers"][0]["spi_in"] == [f"{qa.spi_in:08x}"]
        assert ping(lab, ns_a, B_INNER) == 3

        # Sequence limits (40 soft / 60 hard on A): rekey_needed, then exhausted and counted.
        ra, rb = sa_pair(suite, A_INNER, A_OUTER, B_INNER, B_OUTER, spi_base=0x2100)
        b.dp.install_inbound(A_INNER, rb.spi_in, suite, rb.key_in)
        a.dp.replace_outbound(B_INNER, ra.spi_out, suite, ra.key_out)
        assert ping(lab, ns_a, B_INNER, count=70, interval="0.002") == 60
        wait_for(lambda: "seq_exhausted" in a.kinds(), 5, what="seq_exhausted")
        assert "rekey_needed" in a.kinds()
        drops = a.dp.counters()["peers"][0]["drop_reasons"]
        assert drops.get("seq_exhausted", 0) >= 10
        json.dumps(a.dp.counters())

        a.dp.remove_peer(B_INNER)
        routes = lab.run(ns_a, ["ip", "-6", "route", "show", "dev", "btmmt0"]).stdout.decode()
        assert B_INNER not in routes
        with pytest.raises(ConfigError):
            a.dp.rekey(qa)
    finally:
        a.dp.close()
        b.dp.close()
    link = lab.run(ns_a, ["ip", "link", "show", "btmmt0"], check=False)
    assert link.returncode != 0  # the TUN device is gone


def test_ike_callback_errors_do_not_stop_the_datapath(topo: tuple[Lab, str, str]) -> None:
    lab, ns_a, ns_b = topo
    pa, pb = sa_pair(Suite.CHACHA20POLY1305, A_INNER, A_OUTER, B_INNER, B_OUTER, spi_base=0x3000)

    def broken(data: bytes, addr: tuple[str, int]) -> None:
        raise RuntimeError("IKE bug")

    a = datapath_in(ns_a, A_INNER, tun_name="btmmt1")
    b = datapath_in(ns_b, B_INNER, tun_name="btmmt1", on_ike=broken)
    try:
        a.add_peer(pa)
        b.add_peer(pb)
        a.send_ike(b"boom", B_OUTER)
        wait_for(lambda: b.ike_in == 1, 5, what="IKE at B")
        assert ping(lab, ns_a, B_INNER) == 3
        assert b.counters()["peers"][0]["packets_in"] == 3
        # A bug inside the worker loop is counted and reported; the tunnel keeps working.
        real = b._drain_sock

        def buggy() -> None:
            b._drain_sock = real  # type: ignore[method-assign]
            raise ZeroDivisionError("bug")

        b._drain_sock = buggy  # type: ignore[method-assign]
        a.send_ike(b"again", B_OUTER)
        wait_for(lambda: b.worker_errors == 1, 5, what="worker error")
        assert b.counters()["last_worker_error"] == "ZeroDivisionError: bug"
        assert ping(lab, ns_a, B_INNER) == 3
    finally:
        a.close()
        b.close()


def test_cryptokey_routing_many_peers_and_ingress_filter() -> None:
    """One TUN, two peers: the inner destination picks the SA; a peer may only send from its ULA."""
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6

    from esp_udp.esp import OutboundSA

    c_outer = ("198.18.7.2", 4500)
    with Lab() as lab:
        ns_a, ns_b, ns_c = lab.ns("ra"), lab.ns("rb"), lab.ns("rc")
        lab.veth(ns_a, "vb", ns_b, "va")
        lab.veth(ns_a, "vc", ns_c, "va")
        lab.addr(ns_a, "vb", "198.18.5.1/24")
        lab.addr(ns_b, "va", "198.18.5.2/24")
        lab.addr(ns_a, "vc", "198.18.7.1/24")
        lab.addr(ns_c, "va", "198.18.7.2/24")
        ab_a, ab_b = sa_pair(Suite.AES256GCM16, A_INNER, A_OUTER, B_INNER, B_OUTER, spi_base=0x4000)
        ac_a, ac_c = sa_pair(Suite.CHACHA20POLY1305, A_INNER, ("198.18.7.1", 4500), C_INNER, c_outer,
                             spi_base=0x5000)
        # Three TUN modes at once: A segments TSO super-packets, B coalesces (GRO, the
        # default), C does plain TUN I/O — so C's kernel verifies A's TCP checksums.
        a = datapath_in(ns_a, A_INNER, tso=True)
        b = datapath_in(ns_b, B_INNER)
        c = datapath_in(ns_c, C_INNER, offload=False)
        try:
            a.add_peer(ab_a)
            a.add_peer(ac_a)
            b.add_peer(ab_b)
            c.add_peer(ac_c)
            assert ping(lab, ns_a, B_INNER) == 3
            assert ping(lab, ns_a, C_INNER) == 3
            assert ping(lab, ns_c, A_INNER) == 3
            peers = {p["inner"]: p for p in a.counters()["peers"]}
            assert peers[B_INNER]["packets_out"] == 3 and peers[C_INNER]["packets_out"] == 6
            assert peers[B_INNER]["suite"] == "aes256gcm16"
            assert peers[C_INNER]["suite"] == "chacha20poly1305"
            # B authenticates a packet claiming to come from C's ULA: A must drop it.
            spoofed = bytes(IPv6(src=C_INNER, dst=A_INNER) / ICMPv6EchoRequest())
            forger = OutboundSA(ab_b.spi_out, ab_b.suite, ab_b.key_out)
            forger.seq = 1000
            code = ("import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                    "s.sendto(bytes.fromhex(sys.argv[1]),('198.18.5.1',4500))\n")
            lab.run(ns_b, [sys.executable, "-c", code, forger.seal(spoofed).hex()])
            wait_for(lambda: a.counters()["peers"][0]["drop_reasons"].get("bad_inner", 0) == 1, 5,
                     what="bad_inner drop")
            for server_ns, client_ns, dst in ((ns_c, ns_a, C_INNER), (ns_b, ns_a, B_INNER),
                                              (ns_a, ns_c, A_INNER)):
                assert tcp_transfer(lab, server_ns, client_ns, dst, 3) == (3 << 20, expected_digest(3))
            assert a.tun is not None and a.tun.tso
            # No route for an unknown inner destination: counted, not sent.
            lab.run(ns_a, ["ip", "-6", "route", "add", "fd00:5::99/128", "dev", "btmm0"])
            assert ping(lab, ns_a, "fd00:5::99", count=1) == 0
            assert a.counters()["unattributed"]["drop_reasons"].get("no_route", 0) >= 1
        finally:
            for dp in (a, b, c):
                dp.close()
