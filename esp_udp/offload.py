"""TUN offloads: virtio-net headers, TCP segmentation (TSO) and coalescing (GRO) in Python.

How this works
--------------
With ``IFF_VNET_HDR`` every packet read from or written to the TUN device starts with a
10-byte ``virtio_net_hdr`` (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset;
host byte order). After ``TUNSETOFFLOAD(CSUM | TSO4 | TSO6)`` the kernel hands us TCP
*super-packets* of up to 64 KiB (one read instead of ~50) and packets whose checksum is
left for us to finish (``NEEDS_CSUM``: the field holds the pseudo-header sum, we add the
rest). Before sealing, a super-packet is cut into MSS-sized segments, each a complete,
correctly checksummed IPv6/TCP packet — the peer (any ESP implementation) sees ordinary
packets. This is what wireguard-go does on Linux.

On the way in, consecutive decrypted segments of one TCP flow are glued back into one
super-packet (same headers, contiguous sequence numbers, ACK-only flags, full-size
segments but the last) and written with ``gso_type = TCPV6``: the kernel's TCP receive
path then runs once per 64 KiB instead of once per segment. Decrypted packets are marked
``DATA_VALID`` — ESP authenticated them, so the kernel need not verify checksums again
(the WireGuard rule).

Checksums use one big-integer conversion: the 16-bit one's-complement sum of a buffer is
``int.from_bytes(buf) mod 0xFFFF`` (2^16 ≡ 1 mod 0xFFFF), computed in C.

Sans-I/O: buffers in, buffers out.
"""

from __future__ import annotations

import struct

from esp_udp.errors import DecodeError, DropReason

VNET_HDR = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HDR_LEN = VNET_HDR.size
F_NEEDS_CSUM = 0x01
F_DATA_VALID = 0x02
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80

IPV6_HDR = 40
NH_TCP = 6
TCP_MIN = 20
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20
TCP_CWR = 0x80
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
MAX_GRO_BYTES = 65535 - 2048
MAX_GRO_SEGMENTS = 64


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """One's-complement sum of 16-bit big-endian words (odd length padded), mod 0xFFFF."""
    total = int.from_bytes(data, "big")
    if len(data) & 1:
        total <<= 8
    return total % 0xFFFF


def checksum(partial: int) -> int:
    """The value to store: complement of a folded sum (0xFFFF, never 0, for a zero sum)."""
    return 0xFFFF - partial % 0xFFFF


def finish_checksum(packet: memoryview, csum_start: int, csum_offset: int) -> None:
    """Complete a ``NEEDS_CSUM`` packet in place (the field holds the pseudo-header sum)."""
    field = csum_start + csum_offset
    if csum_start >= len(packet) or field + 2 > len(packet):
        raise DecodeError("checksum offsets outside the packet", DropReason.BAD_INNER)
    _U16.pack_into(packet, field, checksum(ones_sum(packet[csum_start:])))


def tcp6_pseudo_sum(packet: memoryview | bytes | bytearray) -> int:
    """Sum of the IPv6 pseudo-header without the length: source, destination, next header 6."""
    return ones_sum(packet[8:IPV6_HDR]) + NH_TCP


class TcpSegmenter:
    """Cuts one IPv6/TCP super-packet (TSO, ``gso_size`` = MSS) into MSS-sized segments.

    Segment *i* copies the IP and TCP headers, carries payload bytes ``[i*mss, (i+1)*mss)``,
    has sequence number ``seq + i*mss``, FIN/PSH only on the last segment, CWR only on the
    first, and a complete TCP checksum.
    """

    __slots__ = ("count", "flags", "hdr_len", "mss", "packet", "payload_len", "pseudo", "seq")

    def __init__(self, packet: memoryview, mss: int) -> None:
        if len(packet) < IPV6_HDR + TCP_MIN or packet[0] >> 4 != 6 or packet[6] != NH_TCP:
            raise DecodeError("TSO packet is not IPv6/TCP without extension headers",
                              DropReason.BAD_INNER)
        thl = (packet[IPV6_HDR + 12] >> 4) * 4
        self.hdr_len = IPV6_HDR + thl
        if thl < TCP_MIN or self.hdr_len > len(packet) or mss <= 0:
            raise DecodeError("TSO packet has a bad TCP header or MSS", DropReason.BAD_INNER)
        self.packet = packet
        self.mss = mss
        self.payload_len = len(packet) - self.hdr_len
        self.count = max(1, -(-self.payload_len // mss))
        self.seq = _U32.unpack_from(packet, IPV6_HDR + 4)[0]
        self.flags = packet[IPV6_HDR + 13]
        self.pseudo = tcp6_pseudo_sum(packet)

    def write(self, index: int, out: memoryview) -> int:
        """Write segment ``index`` into ``out``; returns its length."""
        hdr_len = self.hdr_len
        start = hdr_len + index * self.mss
        chunk = self.packet[start:start + self.mss]
        n = len(chunk)
        out[:hdr_len] = self.packet[:hdr_len]
        out[hdr_len:hdr_len + n] = chunk
        tcp_len = hdr_len - IPV6_HDR + n
        _U16.pack_into(out, 4, tcp_len)
        _U32.pack_into(out, IPV6_HDR + 4, (self.seq + index * self.mss) & 0xFFFFFFFF)
        flags = self.flags
        if index != self.count - 1:
            flags &= ~(TCP_FIN | TCP_PSH)
        if index:
            flags &= ~TCP_CWR
        out[IPV6_HDR + 13] = flags
        out[IPV6_HDR + 16] = 0
        out[IPV6_HDR + 17] = 0
        total = self.pseudo + tcp_len + ones_sum(out[IPV6_HDR:hdr_len + n])
        _U16.pack_into(out, IPV6_HDR + 16, checksum(total))
        return hdr_len + n


class TcpCoalescer:
    """Glues consecutive segments of one IPv6/TCP flow into a super-packet for the TUN.

    ``buf`` holds the pending super-packet behind room for a virtio-net header. Feed each
    decrypted packet to :meth:`add`: True means it was taken (copied in); False means it
    cannot join — :meth:`take` the pending packet first, then try again or write it alone.
    """

    __slots__ = ("_short", "buf", "count", "end", "hdr_len", "key", "mss", "next_seq", "view")

    def __init__(self, size: int = 65536 + 4096) -> None:
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.count = 0
        self.end = 0
        self.hdr_len = 0
        self.mss = 0
        self.next_seq = 0
        self.key = b""
        self._short = False

    @staticmethod
    def candidate(packet: memoryview) -> int:
        """Header length if ``packet`` is a plain IPv6/TCP data segment (ACK, maybe PSH), else 0."""
        n = len(packet)
        if n <= IPV6_HDR + TCP_MIN or packet[6] != NH_TCP:
            return 0
        thl = (packet[IPV6_HDR + 12] >> 4) * 4
        flags = packet[IPV6_HDR + 13]
        if thl < TCP_MIN or IPV6_HDR + thl >= n or flags & ~(TCP_ACK | TCP_PSH) or not flags & TCP_ACK:
            return 0
        if _U16.unpack_from(packet, 4)[0] != n - IPV6_HDR:
            return 0
        return IPV6_HDR + thl

    def add(self, packet: memoryview, hdr_len: int) -> bool:
        """Take ``packet`` (a :meth:`candidate` with header length ``hdr_len``) if it joins."""
        n = len(packet)
        payload = n - hdr_len
        header = packet[:hdr_len].tobytes()
        if self.count == 0:
            self.view[VNET_HDR_LEN:VNET_HDR_LEN + n] = packet
            self.end = VNET_HDR_LEN + n
            self.count = 1
            self.hdr_len = hdr_len
            self.mss = payload
            self.next_seq = (_U32.unpack_from(header, IPV6_HDR + 4)[0] + payload) & 0xFFFFFFFF
            self.key = header
            self._short = False
            return True
        # Everything must match but the IPv6 length, TCP seq, flags and checksum (Linux GRO).
        key = self.key
        if (hdr_len != self.hdr_len or payload > self.mss or self._short
                or self.count >= MAX_GRO_SEGMENTS or self.end + payload > MAX_GRO_BYTES
                or key[IPV6_HDR + 13] & TCP_PSH
                or _U32.unpack_from(header, IPV6_HDR + 4)[0] != self.next_seq
                or header[6:IPV6_HDR + 4] != key[6:IPV6_HDR + 4]
                or header[IPV6_HDR + 8:IPV6_HDR + 13] != key[IPV6_HDR + 8:IPV6_HDR + 13]
                or header[IPV6_HDR + 14:IPV6_HDR + 16] != key[IPV6_HDR + 14:IPV6_HDR + 16]
                or header[IPV6_HDR + 18:] != key[IPV6_HDR + 18:]
                or header[:4] != key[:4]):
            return False
        end = self.end
        self.view[end:end + payload] = packet[hdr_len:]
        self.end = end + payload
        self.count += 1
        self.next_seq = (self.next_seq + payload) & 0xFFFFFFFF
        if header[IPV6_HDR + 13] & TCP_PSH:
            self.view[VNET_HDR_LEN + IPV6_HDR + 13] |= TCP_PSH
            self.key = key[:IPV6_HDR + 13] + bytes((key[IPV6_HDR + 13] | TCP_PSH,)) + key[IPV6_HDR + 14:]
        self._short = payload < self.mss
        return True

    def take(self) -> memoryview:
        """The pending packet with its virtio-net header (and reset); empty if none."""
        if self.count == 0:
            return self.view[:0]
        base = VNET_HDR_LEN
        total = self.end - base
        if self.count == 1:
            VNET_HDR.pack_into(self.view, 0, F_DATA_VALID, GSO_NONE, 0, 0, 0, 0)
        else:
            tcp_len = total - IPV6_HDR
            _U16.pack_into(self.view, base + 4, tcp_len)
            pseudo = tcp6_pseudo_sum(self.view[base:base + IPV6_HDR]) + tcp_len
            _U16.pack_into(self.view, base + IPV6_HDR + 16, pseudo % 0xFFFF)
            VNET_HDR.pack_into(self.view, 0, F_NEEDS_CSUM, GSO_TCPV6, self.hdr_len, self.mss,
                               IPV6_HDR, 16)
        self.count = 0
        self._short = False
        return self.view[:self.end]
