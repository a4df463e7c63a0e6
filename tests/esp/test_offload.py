"""TUN offload helpers: checksums, TSO segmentation and GRO coalescing, checked with scapy."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esp_udp.errors import EspError
from esp_udp.offload import (
    F_DATA_VALID,
    F_NEEDS_CSUM,
    FLUSH,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    IPV4_HDR,
    NOT_TCP,
    TAKEN,
    VNET_HDR,
    VNET_HDR_LEN,
    TcpCoalescer,
    TcpSegmenter,
    finish_checksum,
    ones_sum,
)

SRC, DST = "fd00:8::1", "fd00:8::2"
SRC4, DST4 = "10.8.0.1", "10.8.0.2"
TS_OPTIONS = [("NOP", None), ("NOP", None), ("Timestamp", (123, 456))]


def reference_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=300))
def test_ones_sum_matches_reference(data: bytes) -> None:
    assert ones_sum(data) % 0xFFFF == reference_sum(data) % 0xFFFF


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=140, max_size=6000))
def test_ones_sum_folded_lengths(data: bytes) -> None:
    """Lengths where ones_sum folds the big integer (> 150 bytes) and halves it (> 2400)."""
    assert 0 <= ones_sum(data) < 0xFFFF
    assert ones_sum(data) == reference_sum(data) % 0xFFFF


@pytest.mark.parametrize("size", [151, 1199, 1200, 1201, 1208, 1499, 2400, 2401, 9001, 65535])
def test_ones_sum_sizes(size: int) -> None:
    for fill in (b"\xff", b"\x00", b"\x80", None):
        data = os.urandom(size) if fill is None else fill * size
        assert ones_sum(data) == reference_sum(data) % 0xFFFF, (size, fill)


def tcp_packet(payload: bytes, flags: str = "PA", seq: int = 1000, options: bool = True) -> bytes:
    from scapy.layers.inet import TCP
    from scapy.layers.inet6 import IPv6

    opts = [("NOP", None), ("NOP", None), ("Timestamp", (123, 456))] if options else []
    return bytes(IPv6(src=SRC, dst=DST) / TCP(sport=40000, dport=5201, seq=seq, ack=77, flags=flags,
                                               window=500, options=opts) / payload)


def valid_tcp6(packet: bytes) -> bool:
    from scapy.layers.inet import TCP
    from scapy.layers.inet6 import IPv6

    parsed = IPv6(packet)
    original = parsed[TCP].chksum
    del parsed[TCP].chksum
    return bool(IPv6(bytes(parsed))[TCP].chksum == original)


@pytest.mark.parametrize(("size", "mss"), [
    (1, 1220), (1219, 1220), (1220, 1220), (1221, 1220), (5000, 1220), (60000, 1220),
    (60001, 1208), (4001, 1501), (3000, 1500), (30000, 8960)])
def test_tso_segments_are_valid_tcp(size: int, mss: int) -> None:
    from scapy.layers.inet import TCP
    from scapy.layers.inet6 import IPv6

    payload = os.urandom(size)
    big = tcp_packet(payload, flags="FPAC", seq=2**32 - 3000)
    packets = cut(big, mss)
    for i, packet in enumerate(packets):
        assert valid_tcp6(packet), i
        assert IPv6(packet).plen == len(packet) - 40
    check_tcp_segments([IPv6(p)[TCP] for p in packets], 2**32 - 3000, mss, payload)


def cut(big: bytes, mss: int) -> list[bytes]:
    """The segments TcpSegmenter cuts ``big`` into."""
    seg = TcpSegmenter(memoryview(big), mss)
    out = memoryview(bytearray(10000))
    return [bytes(out[:seg.write(i, out)]) for i in range(seg.count)]


def check_tcp_segments(tcps: list[Any], seq0: int, mss: int, payload: bytes) -> None:
    """Sequence numbers, flags (FIN/PSH last, CWR first), sizes and payload of TSO segments."""
    for i, tcp in enumerate(tcps):
        assert tcp.seq == (seq0 + i * mss) % 2**32, i
        last = i == len(tcps) - 1
        assert ("F" in str(tcp.flags)) == last and ("P" in str(tcp.flags)) == last
        assert ("C" in str(tcp.flags)) == (i == 0) and "A" in str(tcp.flags)
        assert len(tcp.payload) == (mss if not last else len(payload) - i * mss)
    assert len(tcps) == max(1, -(-len(payload) // mss))
    assert b"".join(bytes(tcp.payload) for tcp in tcps) == payload


def test_finish_checksum() -> None:
    packet = bytearray(tcp_packet(b"hello world"))
    # What the kernel hands over with NEEDS_CSUM: the pseudo-header sum in the field.
    from esp_udp.offload import tcp6_pseudo_sum

    pseudo = (tcp6_pseudo_sum(packet) + len(packet) - 40) % 0xFFFF
    packet[56:58] = pseudo.to_bytes(2, "big")
    finish_checksum(memoryview(packet), 40, 16)
    assert valid_tcp6(bytes(packet))
    with pytest.raises(EspError):
        finish_checksum(memoryview(packet), 200, 16)


def test_segmenter_rejects_non_tcp() -> None:
    from scapy.layers.inet import UDP
    from scapy.layers.inet6 import IPv6

    with pytest.raises(EspError):
        TcpSegmenter(memoryview(bytes(IPv6(src=SRC, dst=DST) / UDP() / (b"x" * 100))), 1000)


def test_coalescer_round_trip() -> None:
    payload = os.urandom(1220 * 5 + 300)
    big = tcp_packet(payload, flags="PA")
    seg = TcpSegmenter(memoryview(big), 1220)
    out = memoryview(bytearray(2000))
    co = TcpCoalescer()
    for i in range(seg.count):
        n = seg.write(i, out)
        assert co.feed(out[:n]) == TAKEN
    assert (co.merged6, co.merged4) == (0, 0)
    merged = co.take()
    assert (co.merged6, co.merged4) == (1, 0)
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(merged, 0)
    assert (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) == \
        (F_NEEDS_CSUM, GSO_TCPV6, 72, 1220, 40, 16)
    rebuilt = bytearray(merged[VNET_HDR_LEN:])
    assert rebuilt[72:] == payload and rebuilt[:56] == big[:56] and rebuilt[58:72] == big[58:72]
    finish_checksum(memoryview(rebuilt), 40, 16)  # what the kernel would do: a valid packet
    assert bytes(rebuilt) == big
    assert len(co.take()) == 0


def test_coalescer_boundaries() -> None:
    co = TcpCoalescer()
    first = memoryview(tcp_packet(b"a" * 100, flags="A", seq=1))
    assert co.feed(first) == TAKEN
    gap = memoryview(tcp_packet(b"b" * 100, flags="A", seq=500))
    assert co.feed(gap) == FLUSH  # not contiguous
    other_flow = bytearray(tcp_packet(b"b" * 100, flags="A", seq=101))
    other_flow[41] ^= 1  # source port
    assert co.feed(memoryview(other_flow)) == FLUSH
    longer = memoryview(tcp_packet(b"c" * 200, flags="A", seq=101))
    assert co.feed(longer) == FLUSH  # bigger than the first segment's size
    short = memoryview(tcp_packet(b"d" * 50, flags="PA", seq=101))
    assert co.feed(short) == TAKEN
    after = memoryview(tcp_packet(b"e" * 50, flags="A", seq=151))
    assert co.feed(after) == FLUSH  # nothing after a short or PSH segment
    single = TcpCoalescer()
    assert single.feed(first) == TAKEN
    taken = single.take()
    assert VNET_HDR.unpack_from(taken, 0)[:2] == (F_DATA_VALID, GSO_NONE)
    assert bytes(taken[VNET_HDR_LEN:]) == bytes(first)
    assert single.merged6 == 0  # a single segment is no super-packet
    assert single.feed(memoryview(tcp_packet(b"", flags="A"))) == NOT_TCP  # no payload
    assert single.feed(memoryview(tcp_packet(b"x", flags="SA"))) == NOT_TCP
    assert single.count == 0


def test_coalescer_feed_compares_every_header_byte() -> None:
    """A second segment that differs from a joinable one in any single header byte."""
    first = memoryview(tcp_packet(b"a" * 100, flags="A", seq=1))
    second = tcp_packet(b"b" * 100, flags="A", seq=101)
    co = TcpCoalescer()
    assert co.feed(first) == TAKEN
    assert co.feed(memoryview(bytearray(second))) == TAKEN  # the unchanged one joins
    for offset in range(72):
        co = TcpCoalescer()
        assert co.feed(first) == TAKEN
        changed = bytearray(second)
        changed[offset] ^= 0x01
        if offset in (56, 57):  # checksum: ESP authenticated the packet (DATA_VALID)
            expected = TAKEN
        elif offset in (4, 5, 6, 53):  # IPv6 length, next header, TCP flags (FIN)
            expected = NOT_TCP
        else:
            expected = FLUSH
        assert co.feed(memoryview(changed)) == expected, offset
        assert co.count == (2 if expected == TAKEN else 1)


# ---------------------------------------------------------------- IPv4 (TSO4, GRO)

def tcp4_packet(payload: bytes, flags: str = "PA", seq: int = 1000, options: bool = True, ident: int = 1001,
                df: bool = True, ip_options: bool = False, tos: int = 0) -> bytes:
    from scapy.layers.inet import IP, TCP, IPOption_RR

    ip = IP(src=SRC4, dst=DST4, id=ident, flags="DF" if df else 0, ttl=61, tos=tos,
            options=[IPOption_RR(routers=["10.8.0.9", "10.8.0.10"])] if ip_options else [])
    return bytes(ip / TCP(sport=40000, dport=5201, seq=seq, ack=77, flags=flags, window=500,
                          options=TS_OPTIONS if options else []) / payload)


def same_checksum(a: int, b: int) -> bool:
    """Equal, or the two one's-complement zeros (0x0000 and 0xFFFF both verify)."""
    return a == b or {a, b} == {0, 0xFFFF}


def valid_tcp4(packet: bytes) -> bool:
    """IPv4 header and TCP checksums as scapy computes them."""
    from scapy.layers.inet import IP, TCP

    parsed = IP(packet)
    ip_sum, tcp_sum = parsed.chksum, parsed[TCP].chksum
    del parsed.chksum
    del parsed[TCP].chksum
    rebuilt = IP(bytes(parsed))
    return same_checksum(rebuilt.chksum, ip_sum) and same_checksum(rebuilt[TCP].chksum, tcp_sum)


def with_ip4_checksum(packet: bytearray, ihl: int = 20) -> bytearray:
    """``packet`` with the checksum of its ``ihl``-byte IPv4 header recomputed."""
    packet[10:12] = b"\0\0"
    packet[10:12] = (0xFFFF - reference_sum(bytes(packet[:ihl])) % 0xFFFF).to_bytes(2, "big")
    return packet


@pytest.mark.parametrize(("size", "mss", "options", "ip_options", "ident"), [
    (1, 1240, True, False, 7), (1239, 1240, True, False, 7), (1240, 1240, False, False, 7),
    (1241, 1240, True, True, 7), (5001, 1220, True, False, 65533), (60001, 1228, False, False, 65500),
    (4001, 1501, True, True, 0), (30000, 8960, True, False, 12345), (777, 100, False, True, 65535)])
def test_tso4_segments_are_valid_tcp(size: int, mss: int, options: bool, ip_options: bool,
                                     ident: int) -> None:
    from scapy.layers.inet import IP, TCP

    payload = os.urandom(size)
    seq0 = 2**32 - 3000
    big = tcp4_packet(payload, flags="FPAC", seq=seq0, options=options, ident=ident, ip_options=ip_options)
    original = IP(big)
    assert TcpSegmenter(memoryview(big), mss).ip_len == (32 if ip_options else 20)
    packets = cut(big, mss)
    for i, packet in enumerate(packets):
        assert valid_tcp4(packet), i
        ip = IP(packet)
        tcp = ip[TCP]
        assert (ip.version, ip.ihl, ip.len, ip.id) == (4, original.ihl, len(packet), (ident + i) % 2**16), i
        assert (ip.flags, ip.ttl, ip.tos, ip.frag, ip.options) == (original.flags, 61, 0, 0, original.options)
        assert (ip.src, ip.dst, tcp.sport, tcp.dport) == (SRC4, DST4, 40000, 5201)
        assert (tcp.ack, tcp.window, tcp.options) == (77, 500, original[TCP].options)
    check_tcp_segments([IP(p)[TCP] for p in packets], seq0, mss, payload)


def test_segmenter_rejects_ipv4_it_cannot_cut() -> None:
    from scapy.layers.inet import IP, UDP

    fragment = bytearray(tcp4_packet(b"x" * 3000, df=False))
    fragment[6] |= 0x20  # more fragments
    udp = bytes(IP(src=SRC4, dst=DST4) / UDP() / (b"x" * 100))
    long_ihl = bytearray(tcp4_packet(b""))[:40]
    long_ihl[0] = 0x4F  # a 60-byte IPv4 header in a 40-byte packet
    for bad in (bytes(with_ip4_checksum(fragment)), udp, bytes(long_ihl), tcp4_packet(b"x")[:39]):
        with pytest.raises(EspError):
            TcpSegmenter(memoryview(bad), 1000)


def test_coalescer_round_trip_ipv4() -> None:
    payload = os.urandom(1240 * 5 + 301)
    big = tcp4_packet(payload, flags="PA", ident=65534)
    seg = TcpSegmenter(memoryview(big), 1240)
    out = memoryview(bytearray(2000))
    co = TcpCoalescer()
    for i in range(seg.count):  # IDs 65534, 65535, 0, 1, ...
        n = seg.write(i, out)
        assert co.feed(out[:n], IPV4_HDR) == TAKEN, i
    merged = co.take()
    assert (co.merged4, co.merged6) == (1, 0)
    assert VNET_HDR.unpack_from(merged, 0) == (F_NEEDS_CSUM, GSO_TCPV4, 52, 1240, 20, 16)
    rebuilt = bytearray(merged[VNET_HDR_LEN:])
    assert reference_sum(bytes(rebuilt[:20])) == 0xFFFF  # the new header checksum is valid
    assert rebuilt[52:] == payload and rebuilt[:36] == big[:36] and rebuilt[38:52] == big[38:52]
    finish_checksum(memoryview(rebuilt), 20, 16)  # what the kernel would do: the original packet
    assert bytes(rebuilt) == big
    assert len(co.take()) == 0


def segments4(count: int, ids: list[int], df: bool = True, size: int = 100) -> list[memoryview]:
    return [memoryview(tcp4_packet(bytes([65 + i]) * size, flags="A", seq=1 + i * size, ident=ids[i], df=df))
            for i in range(count)]


def test_coalescer_ipv4_ids() -> None:
    """Linux GRO: IDs count up by one, or (DF set) stay fixed — decided by the second segment."""
    cases = [
        ([7, 8, 9, 10], True, [TAKEN] * 4),
        ([65535, 0, 1], False, [TAKEN] * 3),  # counting up wraps
        ([7, 7, 7, 7], True, [TAKEN] * 4),  # fixed, DF
        ([7, 7], False, [TAKEN, FLUSH]),  # fixed without DF: no
        ([7, 7, 8], True, [TAKEN, TAKEN, FLUSH]),  # fixed, then counting
        ([7, 8, 8], True, [TAKEN, TAKEN, FLUSH]),  # counting, then fixed
        ([7, 9], True, [TAKEN, FLUSH]),
        ([7, 6], True, [TAKEN, FLUSH]),
    ]
    for ids, df, expected in cases:
        co = TcpCoalescer()
        results = [co.feed(p, IPV4_HDR) for p in segments4(len(ids), ids, df)]
        assert results == expected, (ids, df)


def test_coalescer_ipv4_written_alone() -> None:
    co = TcpCoalescer()
    with_options = memoryview(tcp4_packet(b"a" * 100, flags="A", ip_options=True))
    assert co.feed(with_options, IPV4_HDR) == NOT_TCP  # IPv4 options: no GRO (as Linux)
    bad = bytearray(tcp4_packet(b"a" * 100, flags="A"))
    bad[11] ^= 0xFF  # header checksum
    assert co.feed(memoryview(bad), IPV4_HDR) == NOT_TCP
    first, second, third = segments4(3, [7, 8, 9])
    assert co.feed(first, IPV4_HDR) == TAKEN
    bad = bytearray(second)
    bad[10] ^= 0x01
    assert co.feed(memoryview(bad), IPV4_HDR) == NOT_TCP and co.count == 1
    assert co.feed(second, IPV4_HDR) == TAKEN
    assert co.feed(memoryview(tcp4_packet(b"", flags="A", ident=9)), IPV4_HDR) == NOT_TCP  # no payload
    assert co.feed(third, IPV4_HDR) == TAKEN and co.count == 3
    single = TcpCoalescer()
    assert single.feed(first, IPV4_HDR) == TAKEN
    taken = single.take()
    assert VNET_HDR.unpack_from(taken, 0)[:2] == (F_DATA_VALID, GSO_NONE)
    assert bytes(taken[VNET_HDR_LEN:]) == bytes(first) and single.merged4 == 0


def test_coalescer_never_mixes_families() -> None:
    v6 = memoryview(tcp_packet(b"a" * 100, flags="A", seq=1))
    v4_first, v4_next = segments4(2, [7, 8])
    co = TcpCoalescer()
    assert co.feed(v6) == TAKEN
    assert co.feed(v4_next, IPV4_HDR) == FLUSH
    co.take()
    assert co.feed(v4_first, IPV4_HDR) == TAKEN
    assert co.feed(memoryview(tcp_packet(b"b" * 100, flags="A", seq=101))) == FLUSH
    co.take()
    assert co.feed(v4_first) == NOT_TCP  # an IPv4 packet fed as IPv6
    # IPv4 that passes IPv6's checks: length and next header TCP where IPv6 has them, and a
    # plausible TCP header (offset 5, ACK) where IPv6's would be
    odd = bytearray(tcp4_packet(b"\x50\x10" + b"x" * 98, flags="A"))
    odd[4:7] = (len(odd) - 40).to_bytes(2, "big") + b"\x06"
    assert co.feed(memoryview(odd)) == NOT_TCP
    for first_byte in (0x44, 0x46, 0x55, 0x65):  # IPv4 with options (or not IPv4) starts no flow
        odd = bytearray(v4_first)
        odd[0] = first_byte
        assert co.feed(memoryview(with_ip4_checksum(odd)), IPV4_HDR) == NOT_TCP, first_byte
    assert co.feed(v6, IPV4_HDR) == NOT_TCP  # and the other way round


def test_coalescer_ipv4_feed_compares_every_header_byte() -> None:
    """A second IPv4 segment that differs from a joinable one in any single header byte
    (its header checksum made valid again, but where the change is to the checksum)."""
    first, second = segments4(2, [1001, 1002])
    co = TcpCoalescer()
    assert co.feed(first, IPV4_HDR) == TAKEN
    assert co.feed(second, IPV4_HDR) == TAKEN
    for offset in range(52):
        co = TcpCoalescer()
        assert co.feed(first, IPV4_HDR) == TAKEN
        changed = bytearray(second)
        changed[offset] ^= 0x01
        if offset not in (10, 11):
            changed = with_ip4_checksum(changed)
        if offset in (36, 37):  # TCP checksum: ESP authenticated the packet (DATA_VALID)
            expected = TAKEN
        elif offset in (0, 2, 3, 6, 7, 9, 10, 11, 33):
            # version/IHL, total length, fragment bits, protocol, header checksum, TCP flags (FIN)
            expected = NOT_TCP
        else:  # TOS, ID (1002 -> 1003 or 1258), TTL, addresses, ports, seq, ack, offset, window, ...
            expected = FLUSH
        assert co.feed(memoryview(changed), IPV4_HDR) == expected, offset
        assert co.count == (2 if expected == TAKEN else 1)
