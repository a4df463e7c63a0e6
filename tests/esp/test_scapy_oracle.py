"""scapy as an independent oracle: our ESP-in-UDP opens with scapy's SecurityAssociation
(tunnel mode, NAT-T UDP header) and scapy's opens with ours — both suites families."""

from __future__ import annotations

import os

import pytest

from esp_udp.encap import Kind, classify
from esp_udp.esp import NH_IPV6, InboundSA, OutboundSA
from esp_udp.sa import Suite

SCAPY_ALGO = {Suite.AES128GCM16: "AES-GCM", Suite.AES256GCM16: "AES-GCM",
              Suite.CHACHA20POLY1305: "CHACHA20-POLY1305"}
SPI = 0x00C0DE42
OUTER_A, OUTER_B = "198.18.0.1", "198.18.0.2"


def scapy_sa(suite: Suite, keymat: bytes, seq: int = 1) -> object:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.ipsec import ESP, SecurityAssociation

    return SecurityAssociation(  # type: ignore[no-untyped-call]
        ESP, spi=SPI, seq_num=seq, crypt_algo=SCAPY_ALGO[suite], crypt_key=keymat,
        crypt_icv_size=16, tunnel_header=IP(src=OUTER_A, dst=OUTER_B),
        nat_t_header=UDP(sport=4500, dport=4500))


def inner_packet(size: int) -> bytes:
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6

    return bytes(IPv6(src="fd00:1::1", dst="fd00:1::2") / ICMPv6EchoRequest(data=os.urandom(size)))


@pytest.mark.parametrize("suite", list(Suite))
@pytest.mark.parametrize("size", [0, 1, 2, 3, 57, 1000, 1232])
def test_ours_opens_in_scapy(suite: Suite, size: int) -> None:
    import scapy.layers.ipsec  # noqa: F401 - binds UDP 4500 to ESP before parsing
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.packet import Raw

    keymat = os.urandom(suite.keymat_len)
    inner = inner_packet(size)
    out = OutboundSA(SPI, suite, keymat)
    out.seq = 9
    esp = out.seal(inner, NH_IPV6)
    wire = IP(bytes(IP(src=OUTER_A, dst=OUTER_B) / UDP(sport=4500, dport=4500) / Raw(esp)))
    decrypted = scapy_sa(suite, keymat).decrypt(wire)  # type: ignore[attr-defined]
    assert isinstance(decrypted, IPv6)
    assert bytes(decrypted) == inner


@pytest.mark.parametrize("suite", list(Suite))
@pytest.mark.parametrize("size", [0, 5, 100, 1232])
def test_scapy_opens_in_ours(suite: Suite, size: int) -> None:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6

    keymat = os.urandom(suite.keymat_len)
    inner = inner_packet(size)
    encrypted = scapy_sa(suite, keymat, seq=77).encrypt(IPv6(inner))  # type: ignore[attr-defined]
    wire = bytes(encrypted)
    parsed = IP(wire)
    assert parsed[UDP].dport == 4500
    datagram = bytes(parsed[UDP].payload)
    assert classify(datagram) is Kind.ESP
    opened = InboundSA(SPI, suite, keymat).open(datagram)
    assert (opened.payload, opened.next_header, opened.seq) == (inner, NH_IPV6, 77)
