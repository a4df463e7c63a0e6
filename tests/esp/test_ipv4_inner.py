"""Inner IPv4 through the tunnel: a peer with an inner IPv4 /32 next to its ULA — cryptokey
routing by IPv4 destination, next header 4, the ingress filter on the peer's inner IPv4 (and
on the IP version next header announces), TUN offloads for IPv4 TCP (A takes TSO super-packets
and cuts them into segments whose IP and TCP checksums B's plain TUN makes B's kernel verify;
A glues what B sends into TCPV4 super-packets), and on-demand announcements for IPv4
destinations."""

from __future__ import annotations

import dataclasses
import ipaddress
import sys

import pytest

from esp_udp.esp import OutboundSA
from esp_udp.sa import SAParams, Suite
from tests.esp.nslib import Demands, datapath_in, expected_digest, ping, sa_pair, tcp_transfer
from tools.netns import Lab, wait_for

A_INNER, B_INNER = "fd00:7::a", "fd00:7::b"
A4, B4 = "10.77.0.1", "10.77.0.2"
A_OUTER, B_OUTER = ("198.18.8.1", 4500), ("198.18.8.2", 4500)

pytestmark = pytest.mark.netns


def test_inner_ipv4() -> None:
    demands = Demands()
    with Lab() as lab:
        ns_a, ns_b = lab.ns("v4a"), lab.ns("v4b")
        lab.veth(ns_a, "va", ns_b, "vb")
        lab.addr(ns_a, "va", "198.18.8.1/24")
        lab.addr(ns_b, "vb", "198.18.8.2/24")
        pa, pb = sa_pair(Suite.AES256GCM16, A_INNER, A_OUTER, B_INNER, B_OUTER, spi_base=0x7000)
        pa = dataclasses.replace(pa, inner4=ipaddress.IPv4Address(B4))
        pb = dataclasses.replace(pb, inner4=ipaddress.IPv4Address(A4))
        assert pa.to_json()["inner4"] == B4 and pa.from_json(pa.to_json()) == pa
        a = datapath_in(ns_a, A_INNER, local_inner4=A4, tso=True, on_demand=demands)
        b = datapath_in(ns_b, B_INNER, local_inner4=B4, offload=False)
        try:
            a.add_peer(pa)
            b.add_peer(pb)
            routes = lab.run(ns_a, ["ip", "-4", "route", "show", "dev", "btmm0"]).stdout.decode()
            assert f"{B4} " in routes and "mtu 1280" in routes
            assert ping(lab, ns_a, B4) == 3
            assert ping(lab, ns_b, A4) == 3
            # IPv6 keeps working in the same tunnel
            v6 = lab.run(ns_a, ["ping", "-6", "-n", "-q", "-c", "2", "-i", "0.05", "-W", "1", B_INNER],
                         check=False, timeout=30).stdout.decode()
            assert " 2 received" in v6
            peer_a = a.counters()["peers"][0]
            assert peer_a["inner4"] == B4 and peer_a["packets_out"] == 3 + 3 + 2
            assert a.counters()["local4"] == A4

            # TCP both ways: A cuts the kernel's TSO super-packets into segments (B's plain
            # TUN makes B's kernel verify their checksums); B→A goes through A's coalescer.
            assert a.counters()["offload"] == {"tso_reads": {"ipv4": 0, "ipv6": 0},
                                               "gro_writes": {"ipv4": 0, "ipv6": 0}}
            assert tcp_transfer(lab, ns_b, ns_a, B4, 2) == (2 << 20, expected_digest(2))
            offload = a.counters()["offload"]
            assert offload["tso_reads"]["ipv4"] > 0, offload  # super-packets did come and were cut
            assert tcp_transfer(lab, ns_a, ns_b, A4, 2) == (2 << 20, expected_digest(2))
            offload = a.counters()["offload"]
            assert offload["gro_writes"]["ipv4"] > 0, offload
            assert offload["tso_reads"]["ipv6"] == offload["gro_writes"]["ipv6"] == 0
            assert a.counters()["peers"][0]["drops"] == 0

            # Ingress filter: B authenticates an IPv4 packet from an address not its own, and
            # packets whose IP version is not the one next header says: IPv6 from an address
            # whose bytes 4-7 are B's inner IPv4 (sent as next header 4), IPv4 sent as 41.
            # The same two from A to B (B's plain TUN: the check without the coalescer).
            from scapy.layers.inet import ICMP, IP
            from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6

            code = ("import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                    "[s.sendto(bytes.fromhex(h),(sys.argv[1],4500)) for h in sys.argv[2:]]\n")

            def forge(src_ns: str, params: SAParams, dst_outer: str, src4: str, src6: str, dst6: str,
                      extra: list[bytes]) -> None:
                as_ipv4 = bytes(IPv6(src=src4, dst=dst6) / ICMPv6EchoRequest())
                as_ipv6 = bytearray(bytes(IPv6(src=src6, dst=dst6) / ICMPv6EchoRequest()))
                as_ipv6[0] = 0x45
                forger = OutboundSA(params.spi_out, params.suite, params.key_out)
                forger.seq = 1 << 20
                packets = [forger.seal(p, 4).hex() for p in [*extra, as_ipv4]]
                lab.run(src_ns, [sys.executable, "-c", code, dst_outer, *packets,
                                 forger.seal(as_ipv6, 41).hex()])

            forge(ns_b, pb, A_OUTER[0], "fd00:0:a4d:2::1", B_INNER, A_INNER,
                  [bytes(IP(src="10.77.0.9", dst=A4) / ICMP())])
            forge(ns_a, pa, B_OUTER[0], "fd00:0:a4d:1::1", A_INNER, B_INNER, [])
            wait_for(lambda: a.counters()["peers"][0]["drop_reasons"].get("bad_inner", 0) == 3, 5,
                     what="3 bad_inner drops at A")
            wait_for(lambda: b.counters()["peers"][0]["drop_reasons"].get("bad_inner", 0) == 2, 5,
                     what="2 bad_inner drops at B")

            # On-demand for an IPv4 destination in a routed prefix.
            a.route_prefix("10.77.0.0/16")
            assert ping(lab, ns_a, "10.77.5.5", count=1) == 0
            wait_for(lambda: demands.count("10.77.5.5") > 0, 5, what="on_demand for 10.77.5.5")
            assert a.counters()["pending"].get("10.77.5.5") == 1

            a.remove_peer(B_INNER)
            routes = lab.run(ns_a, ["ip", "-4", "route", "show", "dev", "btmm0"]).stdout.decode()
            assert f"{B4} " not in routes
        finally:
            a.close()
            b.close()
