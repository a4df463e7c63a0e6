"""TUN offload helpers: checksums, TSO segmentation and GRO coalescing, checked with scapy."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esp_udp.errors import EspError
from esp_udp.offload import (
    F_DATA_VALID,
    F_NEEDS_CSUM,
    FLUSH,
    GSO_NONE,
    GSO_TCPV6,
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
    seg = TcpSegmenter(memoryview(big), mss)
    out = memoryview(bytearray(10000))
    pieces = []
    for i in range(seg.count):
        n = seg.write(i, out)
        packet = bytes(out[:n])
        assert valid_tcp6(packet), i
        tcp = IPv6(packet)[TCP]
        assert tcp.seq == (2**32 - 3000 + i * mss) % 2**32
        last = i == seg.count - 1
        assert ("F" in str(tcp.flags)) == last and ("P" in str(tcp.flags)) == last
        assert ("C" in str(tcp.flags)) == (i == 0) and "A" in str(tcp.flags)
        assert IPv6(packet).plen == len(packet) - 40
        pieces.append(bytes(tcp.payload))
    assert b"".join(pieces) == payload


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
        packet = out[:n]
        hdr = TcpCoalescer.candidate(packet)
        assert hdr == 40 + 32
        assert co.add(packet, hdr)
    merged = co.take()
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
    assert co.add(first, 72)
    gap = memoryview(tcp_packet(b"b" * 100, flags="A", seq=500))
    assert not co.add(gap, 72)  # not contiguous
    other_flow = bytearray(tcp_packet(b"b" * 100, flags="A", seq=101))
    other_flow[41] ^= 1  # source port
    assert not co.add(memoryview(other_flow), 72)
    longer = memoryview(tcp_packet(b"c" * 200, flags="A", seq=101))
    assert not co.add(longer, 72)  # bigger than the first segment's size
    short = memoryview(tcp_packet(b"d" * 50, flags="PA", seq=101))
    assert co.add(short, 72)
    after = memoryview(tcp_packet(b"e" * 50, flags="A", seq=151))
    assert not co.add(after, 72)  # nothing after a short or PSH segment
    single = TcpCoalescer()
    assert single.add(first, 72)
    taken = single.take()
    assert VNET_HDR.unpack_from(taken, 0)[:2] == (F_DATA_VALID, GSO_NONE)
    assert bytes(taken[VNET_HDR_LEN:]) == bytes(first)
    assert TcpCoalescer.candidate(memoryview(tcp_packet(b"", flags="A"))) == 0  # no payload
    assert TcpCoalescer.candidate(memoryview(tcp_packet(b"x", flags="SA"))) == 0


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
