"""Python CPU per TCP segment in the datapath's two hot paths, without syscalls.

The iperf3 bench (bench/esp_iperf.py) on this 2-core machine is CPU-bound: the sending and
the receiving datapath together use both cores. This bench times the Python side of each
path alone, so a change to it can be judged without the noise of a whole tunnel:

* **send**: one TSO super-packet read from the TUN (virtio-net header, IPv6/TCP, 64 KiB,
  ``NEEDS_CSUM``) → cut into MSS segments with TCP checksums → sealed → batched for UDP GSO
  (``Datapath._send_read``; the socket is replaced by a recorder, no syscall);
* **receive**: the same segments as ESP datagrams → opened → ingress-checked → coalesced
  into one super-packet for the TUN (``Datapath._datagram``; the TUN write goes to
  /dev/null).

It also prints the cost of one bare ``AESGCM.encrypt`` of a segment measured in the same
run, so the per-segment numbers read as "N AEAD calls' worth". Best of ``--rounds``
round-robin rounds. ``--ipv4``: the same with inner IPv4/TCP (TCPV4 super-packets, next
header 4, peers routed by their inner IPv4). Run: .venv/bin/python -m bench.esp_pipeline
[--mtu 1280] [--ipv4]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import struct
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench.esp_crypto import race
from esp_udp.datapath import Datapath, _Peer
from esp_udp.esp import NH_IPV4, NH_IPV6, InboundSA, OutboundSA
from esp_udp.offload import (
    F_NEEDS_CSUM,
    GSO_TCPV4,
    GSO_TCPV6,
    VNET_HDR,
    ones_sum,
    tcp4_pseudo_sum,
    tcp6_pseudo_sum,
)
from esp_udp.sa import Suite

A_INNER, B_INNER = "fd00:9::1", "fd00:9::2"
A4, B4 = "10.99.0.1", "10.99.0.2"
OUTER = ("198.18.9.2", 4500)


class Recorder:
    """Stands in for the UDP socket: keeps what would have been sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, int]] = []  # (data, segment size)
        self.keep = True

    def sendmsg(self, buffers: Any, ancdata: Any, flags: int, address: Any) -> int:
        if self.keep:
            seg = struct.unpack("=H", ancdata[0][2])[0]
            self.sent.append((bytes(buffers[0]), seg))
        return 0

    def sendto(self, data: Any, address: Any) -> int:
        if self.keep:
            self.sent.append((bytes(data), len(data)))
        return 0


class FakeTun:
    offload = True
    tso = True

    def __init__(self) -> None:
        self.fd = os.open(os.devnull, os.O_WRONLY)


def super_packet(mss: int, payload_len: int, ipv4: bool = False) -> bytes:
    """A TSO read: virtio-net header + IPv6/TCP or IPv4/TCP (timestamps option) + payload."""
    tcp_hdr_len = 32
    payload = os.urandom(payload_len)
    if ipv4:
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + tcp_hdr_len + payload_len, 4242, 0x4000,
                                   64, 6, 0, ipaddress.IPv4Address(A4).packed,
                                   ipaddress.IPv4Address(B4).packed))
        struct.pack_into("!H", ip, 10, 0xFFFF - ones_sum(ip))
        gso_type, pseudo_sum = GSO_TCPV4, tcp4_pseudo_sum
    else:
        ip = bytearray(struct.pack("!IHBB16s16s", 6 << 28, tcp_hdr_len + payload_len, 6, 64,
                                   ipaddress.IPv6Address(A_INNER).packed,
                                   ipaddress.IPv6Address(B_INNER).packed))
        gso_type, pseudo_sum = GSO_TCPV6, tcp6_pseudo_sum
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1000, 2000, (tcp_hdr_len // 4) << 4, 0x18, 512, 0, 0)
    tcp += b"\x01\x01\x08\x0a" + os.urandom(8)
    packet = bytearray(ip + tcp + payload)
    pseudo = (pseudo_sum(packet) + tcp_hdr_len + payload_len) % 0xFFFF
    struct.pack_into("!H", packet, len(ip) + 16, pseudo)
    vnet = VNET_HDR.pack(F_NEEDS_CSUM, gso_type, len(ip) + tcp_hdr_len, mss, len(ip), 16)
    return vnet + bytes(packet)


def make_datapath(local: str, remote: str, out_sa: OutboundSA | None, in_sa: InboundSA | None,
                  remote4: str | None = None) -> tuple[Datapath, _Peer, Recorder]:
    dp = Datapath(local, tso=True)
    tun = FakeTun()
    dp.tun = tun  # type: ignore[assignment]
    dp._tun_fd = tun.fd
    dp._rx_base = 16
    recorder = Recorder()
    dp.sock = recorder  # type: ignore[assignment]
    peer = _Peer(ipaddress.IPv6Address(remote), OUTER, None,
                 None if remote4 is None else ipaddress.IPv4Address(remote4))
    peer.outbound = out_sa
    dp._peers[peer.inner_key] = peer
    if remote4 is not None:
        dp._peers4[peer.inner4_key] = peer
    if in_sa is not None:
        dp._inbound[in_sa.spi] = (in_sa, peer)
    return dp, peer, recorder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mtu", type=int, default=1280, help="tunnel MTU (MSS = MTU - 72)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("-n", type=int, default=40, help="super-packets per round")
    parser.add_argument("--ipv4", action="store_true", help="inner IPv4/TCP instead of IPv6/TCP")
    args = parser.parse_args()
    ip_len, nh = (20, NH_IPV4) if args.ipv4 else (40, NH_IPV6)
    mss = args.mtu - ip_len - 32
    segments = 65000 // mss
    read = super_packet(mss, segments * mss, args.ipv4)
    suite = Suite.AES256GCM16
    keymat = os.urandom(suite.keymat_len)

    # Sender: fresh SA per run of the bench, the recorder keeps the first batch only.
    out_sa = OutboundSA(0x9001, suite, keymat)
    sender, peer, recorder = make_datapath(A_INNER, B_INNER, out_sa, None, B4)
    pbuf = bytearray(len(read) + 64)
    pbuf[:len(read)] = read
    pview = memoryview(pbuf)

    def send() -> None:
        sender._b_count = 0
        sender._send_read(peer, out_sa, pbuf, pview, len(read), nh)
        sender._flush_batch()

    send()
    datagrams = [data[off:off + seg] for data, seg in recorder.sent for off in range(0, len(data), seg)]
    recorder.keep = False
    if len(datagrams) != segments:
        raise SystemExit(f"expected {segments} datagrams, got {len(datagrams)}")

    # Receiver: a window big enough that replaying the same datagrams is a "new" run —
    # reset the window before each pass (what a fresh stream of sequence numbers costs).
    in_sa = InboundSA(0x9001, suite, keymat)
    receiver, rpeer, _ = make_datapath(B_INNER, A_INNER, None, in_sa, A4)
    views = [(memoryview(bytearray(d)), len(d)) for d in datagrams]
    datagram = receiver._datagram

    def receive() -> None:
        in_sa.replay.reset()
        for view, n in views:
            datagram(view, n, OUTER)
        receiver._flush_tun()

    receive()
    if rpeer.counters.packets_in != segments:
        raise SystemExit(f"receiver opened {rpeer.counters.packets_in} of {segments} segments "
                         f"(drops: {rpeer.counters.drops})")
    coalescer = receiver._coalescer
    if not (coalescer.merged4 if args.ipv4 else coalescer.merged6):
        raise SystemExit("the receiver wrote no coalesced super-packet")

    aead = AESGCM(keymat[:-4])
    nonce, aad, seg_payload = os.urandom(12), os.urandom(8), os.urandom(mss + 72)

    def bare() -> None:
        for _ in range(segments):
            aead.encrypt(nonce, seg_payload, aad)

    best = race({"bare": bare, "send": send, "receive": receive}, args.rounds, args.n)
    per = {k: v / segments for k, v in best.items()}
    print(f"datapath Python per {'IPv4' if args.ipv4 else 'IPv6'} TCP segment (MTU {args.mtu}, MSS {mss}, "
          f"{segments} segments per "
          f"64 KiB super-packet; best of {args.rounds} round-robin rounds, no syscalls)")
    print(f"  bare AESGCM.encrypt of a segment: {per['bare']:.2f} µs")
    print(f"  send    (segment + checksum + seal + batch): {per['send']:.2f} µs "
          f"({per['send'] / per['bare']:.1f}× bare)")
    print(f"  receive (open + check + coalesce):           {per['receive']:.2f} µs "
          f"({per['receive'] / per['bare']:.1f}× bare)")
    print(f"  both sides: {per['send'] + per['receive']:.2f} µs per segment → at most "
          f"{mss * 8 / (per['send'] + per['receive']):.0f} Mbit/s of TCP payload per core-second "
          "of Python")


if __name__ == "__main__":
    main()
