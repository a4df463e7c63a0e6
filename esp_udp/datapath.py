"""The userspace ESP-in-UDP datapath: one UDP port, one TUN device, many peers.

How this works
--------------
One :class:`Datapath` per host owns

* one UDP socket on ``port`` (4500), shared by IKE and ESP (RFC 3948 non-ESP marker);
* one TUN device (``btmm0``) holding the local ULA /128, and one host route per peer ULA
  /128 with the tunnel MTU (1280 by default, like BTMM);
* the SA tables: inner destination → peer → outbound SA ("cryptokey routing", as in
  wireguard-go) and inbound SPI → (inbound SA, peer).

A **worker thread** runs the packet pump: an ``epoll`` loop that drains up to ``batch``
packets per wake-up from the TUN device (seal → UDP) and from the socket (classify →
open → TUN), with preallocated buffers and ``readv`` / ``recvmsg_into`` / ``encrypt_into``
/ ``decrypt_into`` / ``pack_into``, so the hot path allocates almost nothing. Syscalls are
batched where Linux allows it:

* send: equal-sized ESP packets to one peer leave in one ``sendmsg`` with ``UDP_SEGMENT``
  (UDP GSO);
* receive: ``UDP_GRO`` hands over runs of datagrams in one ``recvmsg``;
* TUN (``offload``, default on): with virtio-net headers, decrypted segments of one TCP
  flow (IPv6, or inner IPv4) are written as one super-packet (GRO, esp_udp.offload), so
  the kernel's TCP receive path runs once per ~64 KiB; ``tso`` (default on) also takes
  IPv6 and IPv4 TCP super-packets from the kernel and cuts them into segments here, one
  TUN read per ~64 KiB (IPv6, measured 2026-11-26 with bench/esp_iperf.py: 1.40 vs 1.24
  Gbit/s at MTU 1280, 1.47 vs 1.40 at 1400). The price: with checksum offload on, non-TSO
  packets that the kernel leaves ``NEEDS_CSUM`` get their checksum completed in Python.
  :meth:`Datapath.counters` shows under ``offload`` how many super-packets were read
  (``tso_reads``) and written (``gro_writes``) per family.

Everything else — IKE (asyncio in the main thread), the command line — talks to the worker
through this class's methods, which are safe to call from any thread:

* SA tables are replaced copy-on-write under a lock; the worker only reads the current
  dict, so it never locks. Sequence numbers and replay windows are touched only by the
  worker.
* IKE datagrams (received with the non-ESP marker) are passed, marker stripped, to the
  ``on_ike(data, addr)`` callback **in the worker thread**; an asyncio IKE wraps it with
  :func:`asyncio_bridge` (``loop.call_soon_threadsafe``). :meth:`Datapath.send_ike` adds
  the marker and sends from the caller's thread.
* Events (:class:`DatapathEvent`: ``rekey_needed``, ``seq_exhausted``, ``nat_rebind``,
  ``sa_expired``) go to ``on_event(event)``, also in the worker thread.

Why a thread and not asyncio or a process: measured on this machine (see
/work/shared/reference/datapath-facts.md) a single tight epoll loop with batching reaches
≈1.5× strongSwan's kernel-libipsec; asyncio adds per-packet overhead; extra threads do not
help (cryptography holds the GIL), and IKE is a handful of packets, so sharing the GIL with
it costs nothing measurable. Scaling past one core needs worker *processes* (``SO_REUSEPORT``
sockets steered by SPI with a cBPF program, one SA pair per worker, a multi-queue TUN); the
API below is shaped so that change stays inside this module.

Make-before-break rekey (RFC 7296 §2.8): :meth:`Datapath.install_inbound` the new inbound SA
first, then :meth:`Datapath.replace_outbound` switches sending; the old inbound SA stays
(``linger`` seconds, packets in flight still open) and is then removed — or remove it
yourself with :meth:`Datapath.remove_sa`. :meth:`Datapath.rekey` does all three.

NAT: a peer's outer address follows the source of authenticated ESP (NAT rebinding), and a
one-byte 0xFF keepalive is sent after ``keepalive_interval`` seconds without sending to a
peer added with ``keepalive=True`` (set it when we are behind a NAT).

On-demand tunnels (``on_demand=callback``): the owner routes a whole prefix into the TUN
device with :meth:`Datapath.route_prefix` (e.g. the account's ULA /48; :meth:`Datapath.
unroute_prefix` removes it), so packets to peers that are not connected yet reach the
datapath. A packet read from the TUN whose destination has no peer, or whose peer has no
outbound SA, then

* calls ``on_demand(destination)`` (the address as text, e.g. ``"fd00:1:2::5"``) **in the
  worker thread** — at most once per destination per second (the second starts over when
  :meth:`Datapath.remove_peer` removes that destination's peer); keep it short (an asyncio
  owner hands it over with ``loop.call_soon_threadsafe``, like :func:`asyncio_bridge`);
  multicast and link-local destinations are never announced (dropped as ``no_route``);
* is held in a bounded per-destination queue (≤ 32 packets and ≤ 64 KiB per destination,
  ≤ 256 destinations; beyond that dropped as ``pending_full``). Held packets older than
  ``pending_timeout`` (3 s) are dropped as ``pending_expired`` — counted on the peer if it
  exists, else under ``unattributed``.

When :meth:`Datapath.add_peer` (or :meth:`Datapath.replace_outbound`) installs an outbound
SA for that destination, the worker seals and sends the held packets first, in order, so a
connection's first SYN is not lost (no 1 s TCP retransmission). :meth:`Datapath.counters`
shows ``pending`` (held packets per destination) and ``on_demand_calls``. Without
``on_demand`` nothing is held: such packets are dropped (``no_route`` / ``no_sa``).

Ingress filter: a decrypted packet must be IPv6 from the peer's own ULA, or it is dropped
(``bad_inner``) — an authenticated peer cannot speak for another. Its IP version must match
ESP's next header (the TUN device goes by the version, the filter by next header).

Inner IPv4 (optional): with ``local_inner4="10.x.y.z"`` the TUN device also holds that /32,
and a peer whose :class:`SAParams` has ``inner4`` gets a /32 route; IPv4 packets are routed
by destination to that peer's SA (next header 4), and decrypted IPv4 must come from the
peer's ``inner4``. IPv4 TCP gets the same offloads as IPv6 (TSO super-packets segmented,
received segments coalesced).

Latency: on this (virtualised) machine code that ran 20 ms ago runs 10-30× slower the next
time (measured: a 100-byte seal+open takes 3 µs warm, ~90 µs after a 20 ms sleep; a plain
Python loop likewise), so an idle ping pays that four times per round trip. While a tunnel is
in use (``warm_for`` seconds after the last sealed or opened packet) the worker therefore wakes every
``keep_warm`` seconds and runs one dummy seal+open on a private SA (never sent): ~2000
cheap wake-ups a second while active, none when idle; each tick also tries one (empty,
non-blocking) read of the TUN and the socket, which keeps the kernel's read paths warm too.
Measured: idle ping RTT (20 ms apart) ≈ 40-50 % lower, for ≈ 4 % of a core per tunnel end
while pinging; the rest of the cold penalty is in the kernel and the VM, outside this loop.

Counters per peer (packets/bytes in and out, auth failures, replays, drops by reason) are
read with :meth:`Datapath.counters` as a JSON-able dict (with ``worker_errors``: bugs the
worker survived). :meth:`Datapath.close` stops the
worker, removes routes and deletes the TUN device.

Usage::

    dp = Datapath("fd00:1::1", port=4500, tun_name="btmm0", on_ike=handler)
    dp.start()
    dp.add_peer(SAParams.from_json(peer_dict))
    ...
    dp.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from esp_udp.encap import KEEPALIVE, KEEPALIVE_INTERVAL, NON_ESP_MARKER, KeepaliveTimer
from esp_udp.errors import ConfigError, DropReason, EspError
from esp_udp.esp import NH_IPV4, NH_IPV6, OVERHEAD_MAX, InboundSA, OutboundSA
from esp_udp.offload import (
    F_DATA_VALID,
    F_NEEDS_CSUM,
    FLUSH,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    IPV4_HDR,
    IPV6_HDR,
    TAKEN,
    VNET_HDR,
    VNET_HDR_LEN,
    TcpCoalescer,
    TcpSegmenter,
    finish_checksum,
)
from esp_udp.replay import DEFAULT_WINDOW
from esp_udp.sa import SAParams, Suite
from esp_udp.tun import TunDevice

Addr = tuple[str, int]
IkeHandler = Callable[[bytes, Addr], None]

DEFAULT_PORT = 4500
DEFAULT_TUN = "btmm0"
DEFAULT_MTU = 1280
DEFAULT_LINGER = 10.0
BUF_SIZE = 65536 + 256
_U32 = struct.Struct("!I")
_U16 = struct.Struct("=H")  # cmsg payloads are in host byte order
_U16_NATIVE = _U16
UDP_SEGMENT = 103  # linux/udp.h: UDP GSO segment size (setsockopt / cmsg)
UDP_GRO = 104  # linux/udp.h: receive coalesced datagrams, cmsg gives the segment size
GSO_MAX_BYTES = 65000  # one UDP GSO send: < 65,507 bytes of payload
GSO_MAX_SEGMENTS = 64
# On-demand tunnels: packets held per destination while its SA is being negotiated.
PENDING_TIMEOUT = 3.0  # seconds a held packet may wait
PENDING_MAX_PACKETS = 32  # per destination
PENDING_MAX_BYTES = 64 << 10  # per destination
PENDING_MAX_DESTS = 256
DEMAND_INTERVAL = 1.0  # at most one on_demand call per destination per second


@dataclass(frozen=True)
class DatapathEvent:
    """Something the control plane (IKE, the CLI) should know about."""

    kind: str  # "rekey_needed" | "seq_exhausted" | "nat_rebind" | "sa_expired"
    inner: str
    spi: int = 0
    old_outer: Addr | None = None
    new_outer: Addr | None = None


@dataclass
class PeerCounters:
    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    auth_failures: int = 0
    replays: int = 0
    drops: int = 0
    keepalives_sent: int = 0
    drop_reasons: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: DropReason) -> None:
        self.drops += 1
        self.drop_reasons[reason.value] = self.drop_reasons.get(reason.value, 0) + 1
        if reason is DropReason.AUTH_FAILED:
            self.auth_failures += 1
        elif reason is DropReason.REPLAY or reason is DropReason.TOO_OLD:
            self.replays += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "packets_in": self.packets_in, "bytes_in": self.bytes_in,
            "packets_out": self.packets_out, "bytes_out": self.bytes_out,
            "auth_failures": self.auth_failures, "replays": self.replays, "drops": self.drops,
            "keepalives_sent": self.keepalives_sent, "drop_reasons": dict(self.drop_reasons),
        }


class _Peer:
    """Mutable per-peer state (worker-owned fields: counters, outer on rebinding)."""

    __slots__ = ("counters", "inbound_spis", "inner", "inner4", "inner4_key", "inner_key", "keepalive",
                 "outbound", "outer", "signalled", "suite")

    def __init__(self, inner: ipaddress.IPv6Address, outer: Addr, keepalive: KeepaliveTimer | None,
                 inner4: ipaddress.IPv4Address | None = None) -> None:
        self.inner = inner
        self.inner_key = inner.packed
        self.inner4 = inner4
        self.inner4_key = inner4.packed if inner4 is not None else b""  # b"": never matches 4 bytes
        self.outer = outer
        self.outbound: OutboundSA | None = None
        self.suite: Suite | None = None
        self.inbound_spis: list[int] = []
        self.counters = PeerCounters()
        self.keepalive = keepalive
        self.signalled: set[tuple[str, int]] = set()  # (event kind, SPI) already reported


class _Pending:
    """Packets held for one destination until its outbound SA exists (worker-owned)."""

    __slots__ = ("nbytes", "packets")

    def __init__(self) -> None:
        self.packets: deque[tuple[float, bytes]] = deque()  # (time read, packet as read)
        self.nbytes = 0


def _on_demand_candidate(key: bytes) -> bool:
    """Unicast, not link-local: a destination an on-demand tunnel can exist for."""
    first = key[0]
    if len(key) == 4:
        return 0 < first < 224 and first != 127
    return first != 0xFF and not (first == 0xFE and key[1] & 0xC0 == 0x80) and any(key)


class _Warmer:
    """One dummy seal+open of a 100-byte packet on a private SA pair (never sent).

    The worker runs it on its keep-warm ticks so the hot path's code, the AEAD context and
    the buffers stay in the CPU caches between sparse packets. Resets its own sequence
    number and replay window, so it can run forever.
    """

    __slots__ = ("_dbuf", "_in", "_obuf", "_out", "_pbuf")

    def __init__(self, pbuf: memoryview | None = None, obuf: memoryview | None = None,
                 dbuf: memoryview | None = None) -> None:
        """Buffers: the datapath's own (free between drains), so their cache lines stay warm."""
        keymat = bytes(Suite.AES256GCM16.keymat_len)
        self._out = OutboundSA(1, Suite.AES256GCM16, keymat)
        self._in = InboundSA(1, Suite.AES256GCM16, keymat)
        self._pbuf = memoryview(bytearray(256)) if pbuf is None else pbuf
        self._obuf = memoryview(bytearray(256)) if obuf is None else obuf
        self._dbuf = memoryview(bytearray(256)) if dbuf is None else dbuf

    def run(self) -> int:
        """Seal and open once; the opened length (100), EspError if something is broken."""
        self._out.seq = 0
        self._in.replay.reset()
        n = self._out.seal_into(self._obuf, self._pbuf, 100)
        return self._in.open_into(self._obuf[:n], self._dbuf)[2]


def asyncio_bridge(loop: asyncio.AbstractEventLoop, handler: IkeHandler) -> IkeHandler:
    """An ``on_ike`` callback that runs ``handler(data, addr)`` in ``loop``'s thread."""

    def deliver(data: bytes, addr: Addr) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            loop.call_soon_threadsafe(handler, data, addr)

    return deliver


class Datapath:
    """ESP-in-UDP datapath over a TUN device. See the module docstring."""

    def __init__(
        self,
        local_inner: str | ipaddress.IPv6Address,
        *,
        local_inner4: str | ipaddress.IPv4Address | None = None,
        port: int = DEFAULT_PORT,
        bind: str = "0.0.0.0",  # noqa: S104 - the tunnel port is public by design
        tun_name: str = DEFAULT_TUN,
        mtu: int = DEFAULT_MTU,
        on_ike: IkeHandler | None = None,
        on_event: Callable[[DatapathEvent], None] | None = None,
        on_demand: Callable[[str], None] | None = None,
        pending_timeout: float = PENDING_TIMEOUT,
        replay_window: int = DEFAULT_WINDOW,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        linger: float = DEFAULT_LINGER,
        socket_buffer: int = 4 << 20,
        batch: int = 64,
        seq_limits: tuple[int, int] | None = None,
        gso: bool = True,
        gro: bool = True,
        busy_poll: float = 0.0,
        keep_warm: float = 0.0005,
        warm_for: float = 1.0,
        offload: bool = True,
        tso: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.local_inner = ipaddress.IPv6Address(str(local_inner).split("/")[0])
        self.local_inner4 = (ipaddress.IPv4Address(str(local_inner4).split("/")[0])
                             if local_inner4 is not None else None)
        self.port = port
        self.bind = bind
        self.tun_name = tun_name
        self.mtu = mtu
        self.on_ike = on_ike
        self.on_event = on_event
        self.on_demand = on_demand
        self.pending_timeout = pending_timeout
        self.on_demand_calls = 0
        self._prefixes: set[ipaddress.IPv6Network | ipaddress.IPv4Network] = set()
        # worker-owned on-demand state: held packets and last callback time per destination
        self._pending: dict[bytes, _Pending] = {}
        self._demand_last: dict[bytes, float] = {}
        self._ready: deque[bytes] = deque()  # destinations that got an outbound SA (any thread)
        self._qbuf = bytearray(BUF_SIZE)
        self._qview = memoryview(self._qbuf)
        self.replay_window = replay_window
        self.keepalive_interval = keepalive_interval
        self.linger = linger
        self.socket_buffer = socket_buffer
        self.batch = batch
        self.seq_limits = seq_limits
        self.clock = clock
        self.tun: TunDevice | None = None
        self.sock: socket.socket | None = None
        self.counters_global = PeerCounters()  # drops not attributable to a peer, IKE, keepalives
        self.ike_in = 0
        self.ike_out = 0
        self.keepalives_in = 0
        self.worker_errors = 0  # exceptions caught in the worker loop (bugs), see counters()
        self.last_worker_error = ""
        self._lock = threading.Lock()
        self._peers: dict[bytes, _Peer] = {}  # inner address (16 bytes) → peer
        self._peers4: dict[bytes, _Peer] = {}  # inner IPv4 address (4 bytes) → peer
        self._inbound: dict[int, tuple[InboundSA, _Peer]] = {}
        self._expiring: list[tuple[float, int]] = []  # (deadline, inbound spi)
        self._thread: threading.Thread | None = None
        self._running = False
        self._wake_r = -1
        self._wake_w = -1
        self._gso = gso
        self.offload = offload
        self.tso = tso
        self._rx_base = 0  # where decrypted packets start in _dbuf (room for a vnet header)
        self._coalescer = TcpCoalescer()
        self.tso_reads4 = self.tso_reads6 = 0  # TSO super-packets read from the TUN and segmented
        self._sview = memoryview(bytearray(BUF_SIZE))
        self._b_peer: _Peer | None = None
        self._b_seg = self._b_start = self._b_used = self._b_count = 0
        self.busy_poll = busy_poll
        self.keep_warm = keep_warm  # 0 disables the keep-warm ticks
        self.warm_for = warm_for
        self._traffic = False  # set by the worker when a packet was sealed or opened
        self._gro = gro
        self._gso_bytes = GSO_MAX_BYTES
        self._cmsg_space = socket.CMSG_SPACE(4)
        self._tun_fd = -1
        # Preallocated buffers, used only by the worker thread.
        self._pbuf = bytearray(BUF_SIZE)
        self._pview = memoryview(self._pbuf)
        self._oview = memoryview(bytearray(4 * BUF_SIZE + OVERHEAD_MAX))
        self._rbuf = bytearray(BUF_SIZE)
        self._rview = memoryview(self._rbuf)
        self._dbuf = bytearray(BUF_SIZE)
        self._dview = memoryview(self._dbuf)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Create the TUN device and the socket, start the worker thread."""
        if self._thread is not None:
            return
        self.tun = TunDevice(self.tun_name, mtu=self.mtu, offload=self.offload, tso=self.tso)
        self._rx_base = 16 if self.tun.offload else 0
        try:
            self.tun.set_address(self.local_inner)
            if self.local_inner4 is not None:
                self.tun.set_address4(self.local_inner4)
            self.sock = self._open_socket()
        except BaseException:
            self.tun.close()
            raise
        self.tun_name = self.tun.name
        self._tun_fd = self.tun.fd
        for net in self._prefixes:
            self.tun.add_prefix(net, self.mtu)
        for peer in self._peers.values():
            self.tun.add_route(peer.inner, self.mtu)
            if peer.inner4 is not None:
                self.tun.add_route(peer.inner4, self.mtu)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._running = True
        self._thread = threading.Thread(target=self._run, name="esp-datapath", daemon=True)
        self._thread.start()

    def _open_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):  # *BUFFORCE
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, self.socket_buffer)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, opt, self.socket_buffer)
        try:
            sock.bind((self.bind, self.port))
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"cannot bind UDP {self.bind}:{self.port}: {exc.strerror} "
                          "(another tunnel or IKE daemon on this port? use --port)") from None
        if self._gro:
            try:
                sock.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
            except OSError:
                self._gro = False
        sock.setblocking(False)
        return sock

    def close(self) -> None:
        """Stop the worker, remove the routes, delete the TUN device, close the socket."""
        self._running = False
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None
        if self.tun is not None:
            self.tun.close()
        if self.sock is not None:
            self.sock.close()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> Datapath:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def local_port(self) -> int:
        """The bound UDP port (useful with ``port=0``)."""
        if self.sock is None:
            return self.port
        return int(self.sock.getsockname()[1])

    # ------------------------------------------------------------------ control plane
    def add_peer(self, params: SAParams, *, keepalive: bool = False) -> None:
        """A peer with its first SA pair: route its ULA /128 into the TUN device.

        ``keepalive``: send 0xFF after ``keepalive_interval`` s of silence toward it (set
        when this host is behind a NAT). Replaces an existing peer of the same inner address.
        """
        if params.inner == self.local_inner:
            raise ConfigError(f"peer inner address {params.inner} is this host's own address")
        inner4 = params.inner4
        if inner4 is not None and inner4 == self.local_inner4:
            raise ConfigError(f"peer inner IPv4 address {inner4} is this host's own address")
        timer = KeepaliveTimer(self.keepalive_interval, self.clock()) if keepalive else None
        peer = _Peer(params.inner, params.outer, timer, inner4)
        stale4 = None
        with self._lock:
            if inner4 is not None:
                other = self._peers4.get(peer.inner4_key)
                if other is not None and other.inner != params.inner:
                    raise ConfigError(f"inner IPv4 address {inner4} already belongs to peer {other.inner}")
            old = self._peers.get(peer.inner_key)
            if old is not None:
                self._drop_peer_locked(old)
                if old.inner4 is not None and old.inner4 != inner4:
                    stale4 = old.inner4
                    self._peers4 = {k: v for k, v in self._peers4.items() if v is not old}
            self._peers = {**self._peers, peer.inner_key: peer}
            if inner4 is not None:
                self._peers4 = {**self._peers4, peer.inner4_key: peer}
        self.install_inbound(str(params.inner), params.spi_in, params.suite, params.key_in)
        self.replace_outbound(str(params.inner), params.spi_out, params.suite, params.key_out)
        if self.tun is not None:
            self.tun.add_route(params.inner, self.mtu)
            if inner4 is not None:
                self.tun.add_route(inner4, self.mtu)
            if stale4 is not None:
                self._unroute_host(stale4)

    def route_prefix(self, prefix: str) -> None:
        """Route ``prefix`` (e.g. the account's ULA /48, or one ULA) into the TUN device.

        Packets to addresses in it without a peer then reach the datapath: dropped as
        ``no_route``, or held and announced through ``on_demand``. Peers' /128 routes are
        more specific and coexist with it; routing a single address again restarts its
        once-a-second announcement limit (like :meth:`remove_peer`). A single address
        (``"fd00:1:2::5"``, a /128) may also be a peer's: :meth:`remove_peer` then keeps the
        route, :meth:`unroute_prefix` keeps it while the peer exists. Works before
        :meth:`start` (applied then) and after; idempotent.
        """
        try:
            net = ipaddress.ip_network(prefix, strict=False)
        except ValueError:
            raise ConfigError(f"route prefix {prefix!r} is not an IP prefix (e.g. fd00:1:2::/48)") from None
        with self._lock:
            self._prefixes.add(net)
            if net.prefixlen == net.max_prefixlen:  # (re-)armed: announced by its next packet
                self._demand_last.pop(net.network_address.packed, None)
        if self.tun is not None:
            self.tun.add_prefix(net, self.mtu)

    def unroute_prefix(self, prefix: str) -> None:
        """Remove a route added with :meth:`route_prefix` (no error if it is not there)."""
        try:
            net = ipaddress.ip_network(prefix, strict=False)
        except ValueError:
            raise ConfigError(f"route prefix {prefix!r} is not an IP prefix (e.g. fd00:1:2::/48)") from None
        with self._lock:
            self._prefixes.discard(net)
        if self.tun is None:
            return
        if net.prefixlen == net.max_prefixlen and self._lookup(net.network_address.packed) is not None:
            self.tun.prefixes.discard(net)  # the same host route is a peer's: it stays
        else:
            self.tun.remove_prefix(net)

    def _unroute_host(self, address: ipaddress.IPv6Address | ipaddress.IPv4Address) -> None:
        """Remove a peer's host route, unless the owner routed that address itself."""
        assert self.tun is not None
        if ipaddress.ip_network(address) in self._prefixes:
            self.tun.routes.discard(address)  # identical route from route_prefix(): keep it
        else:
            self.tun.remove_route(address)

    def remove_peer(self, inner: str | ipaddress.IPv6Address) -> None:
        """Forget a peer: its SAs, its route."""
        key = ipaddress.IPv6Address(str(inner)).packed
        with self._lock:
            peer = self._peers.get(key)
            if peer is None:
                return
            self._drop_peer_locked(peer)
            self._peers = {k: v for k, v in self._peers.items() if k != key}
            if peer.inner4 is not None:
                self._peers4 = {k: v for k, v in self._peers4.items() if v is not peer}
        # on-demand: the next packet to this peer is announced at once, not up to 1 s later
        # (single dict operations are atomic; the worker only iterates a snapshot)
        self._demand_last.pop(peer.inner_key, None)
        if peer.inner4_key:
            self._demand_last.pop(peer.inner4_key, None)
        if self.tun is not None:
            self._unroute_host(peer.inner)
            if peer.inner4 is not None:
                self._unroute_host(peer.inner4)

    def _drop_peer_locked(self, peer: _Peer) -> None:
        spis = set(peer.inbound_spis)
        self._inbound = {s: e for s, e in self._inbound.items() if s not in spis}
        peer.outbound = None

    def _peer(self, inner: str | ipaddress.IPv6Address) -> _Peer:
        peer = self._peers.get(ipaddress.IPv6Address(str(inner)).packed)
        if peer is None:
            raise ConfigError(f"no peer with inner address {inner}; add_peer() first")
        return peer

    def install_inbound(self, inner: str, spi: int, suite: Suite, keymat: bytes) -> None:
        """Accept ESP with ``spi`` from the peer (before the peer starts using it)."""
        peer = self._peer(inner)
        sa = InboundSA(spi, suite, keymat, window=self.replay_window)
        with self._lock:
            if spi in self._inbound and self._inbound[spi][1] is not peer:
                raise ConfigError(f"inbound SPI {spi:08x} is already used by another peer")
            self._inbound = {**self._inbound, spi: (sa, peer)}
            if spi not in peer.inbound_spis:
                peer.inbound_spis.append(spi)

    def replace_outbound(self, inner: str, spi: int, suite: Suite, keymat: bytes) -> None:
        """Send to the peer with the new SA from now on (sequence numbers restart at 1)."""
        peer = self._peer(inner)
        if self.seq_limits is not None:
            sa = OutboundSA(spi, suite, keymat, soft_limit=self.seq_limits[0],
                            hard_limit=self.seq_limits[1])
        else:
            sa = OutboundSA(spi, suite, keymat)
        peer.outbound = sa
        peer.suite = suite
        if self.on_demand is not None:  # packets held for this peer leave now, in order
            self._ready.append(peer.inner_key)
            if peer.inner4_key:
                self._ready.append(peer.inner4_key)
            self._wake()

    def _wake(self) -> None:
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):  # a full pipe is readable anyway
                os.write(self._wake_w, b"r")

    def remove_sa(self, spi: int, *, after: float = 0.0) -> None:
        """Remove the inbound SA ``spi`` now, or ``after`` seconds (from the worker's tick)."""
        if after > 0:
            with self._lock:
                self._expiring.append((self.clock() + after, spi))
            return
        with self._lock:
            entry = self._inbound.get(spi)
            if entry is None:
                return
            self._inbound = {s: e for s, e in self._inbound.items() if s != spi}
            with contextlib.suppress(ValueError):
                entry[1].inbound_spis.remove(spi)

    def rekey(self, params: SAParams, *, linger: float | None = None) -> None:
        """Make-before-break: new inbound, switch outbound, old inbound removed after ``linger``."""
        peer = self._peer(str(params.inner))
        old_spis = [s for s in peer.inbound_spis if s != params.spi_in]
        self.install_inbound(str(params.inner), params.spi_in, params.suite, params.key_in)
        self.replace_outbound(str(params.inner), params.spi_out, params.suite, params.key_out)
        for spi in old_spis:
            self.remove_sa(spi, after=self.linger if linger is None else linger)

    def update_outer(self, inner: str, outer: Addr) -> None:
        """Send to the peer at ``outer`` from now on (e.g. after an IKE MOBIKE update)."""
        self._peer(inner).outer = outer

    def set_keepalive(self, inner: str, enabled: bool) -> None:
        peer = self._peer(inner)
        peer.keepalive = KeepaliveTimer(self.keepalive_interval, self.clock()) if enabled else None

    def send_ike(self, data: bytes, addr: Addr) -> None:
        """Send one IKE message to ``addr`` from the shared port, with the non-ESP marker."""
        if self.sock is None:
            raise ConfigError("datapath not started")
        self.sock.sendto(NON_ESP_MARKER + data, addr)
        self.ike_out += 1

    def peer_outer(self, inner: str) -> Addr:
        return self._peer(inner).outer

    def counters(self) -> dict[str, Any]:
        """Counters and SA facts as a JSON-able dict (no keys)."""
        peers = []
        for peer in list(self._peers.values()):
            sa = peer.outbound
            peers.append({
                "inner": str(peer.inner), "outer": f"{peer.outer[0]}:{peer.outer[1]}",
                "inner4": str(peer.inner4) if peer.inner4 is not None else None,
                "suite": peer.suite.value if peer.suite else None,
                "spi_out": f"{sa.spi:08x}" if sa else None, "seq_out": sa.seq if sa else 0,
                "spi_in": [f"{s:08x}" for s in peer.inbound_spis],
                **peer.counters.to_json(),
            })
        return {
            "local": str(self.local_inner), "port": self.local_port, "tun": self.tun_name,
            "local4": str(self.local_inner4) if self.local_inner4 is not None else None,
            "mtu": self.mtu, "ike_in": self.ike_in, "ike_out": self.ike_out,
            "keepalives_in": self.keepalives_in, "worker_errors": self.worker_errors,
            "last_worker_error": self.last_worker_error,
            "on_demand_calls": self.on_demand_calls,
            # TUN offloads: TCP super-packets read and segmented (TSO), written coalesced (GRO)
            "offload": {"tso_reads": {"ipv4": self.tso_reads4, "ipv6": self.tso_reads6},
                        "gro_writes": {"ipv4": self._coalescer.merged4, "ipv6": self._coalescer.merged6}},
            "pending": {str(ipaddress.ip_address(k)): len(v.packets) for k, v in list(self._pending.items())},
            "unattributed": self.counters_global.to_json(), "peers": peers,
        }

    # ------------------------------------------------------------------ worker
    def _emit(self, event: DatapathEvent) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # noqa: S110 - a broken callback must not stop the datapath
                pass

    def _run(self) -> None:
        assert self.tun is not None and self.sock is not None
        ep = select.epoll()
        tun_fd, sock_fd, wake_r = self.tun.fd, self.sock.fileno(), self._wake_r
        ep.register(tun_fd, select.EPOLLIN)
        ep.register(sock_fd, select.EPOLLIN)
        ep.register(self._wake_r, select.EPOLLIN)
        next_tick = 0.0
        spin = self.busy_poll
        busy_until = 0.0
        warm = self.keep_warm
        warm_for = self.warm_for
        warm_until = 0.0
        warmer = _Warmer(self._pview, self._oview, self._dview)
        timeout = 0.25
        clock = self.clock
        try:
            while self._running:
                events = ep.poll(timeout)
                try:
                    for fd, _ in events:
                        if fd == tun_fd:
                            self._drain_tun()
                        elif fd == sock_fd:
                            self._drain_sock()
                        elif fd == wake_r:
                            with contextlib.suppress(OSError):
                                os.read(wake_r, 4096)
                            self._release_ready()
                    now = clock()
                    if now >= next_tick:
                        self._tick(now)
                        next_tick = now + 0.25
                except Exception as exc:  # a bug must not silently stop every tunnel
                    self.worker_errors += 1
                    self.last_worker_error = f"{type(exc).__name__}: {exc}"
                    now = clock()
                if events:
                    busy_until = now + spin
                    if self._traffic:  # tunnel packets, not just stray ones (RS, MLD) dropped
                        self._traffic = False
                        warm_until = now + warm_for
                elif now < warm_until and warm:
                    # keep code, kernel paths and caches warm between sparse packets: a dummy
                    # seal+open in the real buffers, and one (empty) read of each fd
                    warmer.run()
                    self._drain_tun()
                    self._drain_sock()
                # Optional busy-poll after activity (``busy_poll`` seconds): catches a reply
                # without a thread wake-up, but on a 2-core VM the spinning costs more than it
                # saves (measured), so it is off by default. Idle tunnels never spin.
                timeout = 0.0 if now < busy_until else (warm if now < warm_until and warm else 0.25)
        finally:
            ep.close()

    def _drain_tun(self) -> None:
        """TUN → seal → UDP, up to ``batch`` reads.

        Consecutive packets to the same peer that seal to the same size are written
        back to back into one buffer and sent with one ``sendmsg`` carrying ``UDP_SEGMENT``
        (UDP GSO: the kernel cuts them into datagrams), so a TCP burst costs one UDP
        syscall per batch instead of one per packet. With TUN offloads a read may return a
        TCP super-packet, cut into MSS segments here (esp_udp.offload).
        """
        assert self.tun is not None
        tun_fd = self.tun.fd
        pbuf = self._pbuf
        pview = self._pview
        peers = self._peers
        glob = self.counters_global
        offload = self.tun.offload
        base = VNET_HDR_LEN if offload else 0
        self._b_count = 0
        for _ in range(self.batch):
            try:
                n = os.readv(tun_fd, (pbuf,))
            except OSError:
                break
            if n >= base + 40 and pbuf[base] >> 4 == 6:
                key = bytes(pview[base + 24:base + 40])
                peer = peers.get(key)
                nh = NH_IPV6
            elif n >= base + 20 and pbuf[base] >> 4 == 4:  # inner IPv4: routed by the peers' inner4
                key = bytes(pview[base + 16:base + 20])
                peer = self._peers4.get(key)
                nh = NH_IPV4
            else:
                glob.drop(DropReason.BAD_INNER)
                continue
            sa = None if peer is None else peer.outbound
            if peer is None or sa is None:
                if self.on_demand is None:
                    if peer is None:
                        glob.drop(DropReason.NO_ROUTE)
                    else:
                        peer.counters.drop(DropReason.NO_SA)
                else:
                    self._hold(key, peer, pview[:n])
                continue
            if self._pending and key in self._pending:  # held packets go first
                self._release(key)
            if not offload:
                self._queue(peer, sa, pview, n, nh)
                continue
            if pbuf[1] == GSO_NONE:  # the common case inlined: one packet (_send_read does the rest)
                try:
                    if pbuf[0] & F_NEEDS_CSUM:
                        _, _, _, _, csum_start, csum_offset = VNET_HDR.unpack_from(pbuf, 0)
                        finish_checksum(pview[base:n], csum_start, csum_offset)
                    self._queue(peer, sa, pview[base:], n - base, nh)
                except EspError as exc:
                    peer.counters.drop(exc.reason)
                continue
            self._send_read(peer, sa, pbuf, pview, n, nh)
        self._flush_batch()

    def _flush_batch(self) -> None:
        if self._b_count:
            self._flush(self._b_peer, self._oview[self._b_start:self._b_used], self._b_seg,
                        self._b_count)
            self._b_count = 0

    def _send_read(self, peer: _Peer, sa: OutboundSA, pbuf: bytearray, pview: memoryview, n: int,
                   nh: int) -> None:
        """Seal one TUN read (virtio-net header first) into the GSO batch, segmenting TSO."""
        base = VNET_HDR_LEN
        flags, gso_type, _, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(pbuf, 0)
        try:
            if gso_type == GSO_NONE:
                if flags & F_NEEDS_CSUM:
                    finish_checksum(pview[base:n], csum_start, csum_offset)
                self._queue(peer, sa, pview[base:], n - base, nh)
            elif gso_type & ~GSO_ECN == (GSO_TCPV6 if nh == NH_IPV6 else GSO_TCPV4):
                segmenter = TcpSegmenter(pview[base:n], gso_size)
                if nh == NH_IPV6:
                    self.tso_reads6 += 1
                else:
                    self.tso_reads4 += 1
                sview = self._sview
                for index in range(segmenter.count):
                    self._queue(peer, sa, sview, segmenter.write(index, sview), nh)
            else:
                peer.counters.drop(DropReason.BAD_INNER)
        except EspError as exc:
            peer.counters.drop(exc.reason)

    # ------------------------------------------------------------------ on-demand
    def _hold(self, key: bytes, peer: _Peer | None, data: memoryview) -> None:
        """No SA for ``key`` yet: announce it (rate-limited) and hold the packet."""
        counters = self.counters_global if peer is None else peer.counters
        if not _on_demand_candidate(key):
            counters.drop(DropReason.NO_ROUTE if peer is None else DropReason.NO_SA)
            return
        now = self.clock()
        last = self._demand_last.get(key)
        if (last is None or now - last >= DEMAND_INTERVAL) and self.on_demand is not None:
            self._demand_last[key] = now
            self.on_demand_calls += 1
            try:
                self.on_demand(str(ipaddress.ip_address(key)))
            except Exception:  # noqa: S110 - a broken callback must not stop the datapath
                pass
        entry = self._pending.get(key)
        if entry is None:
            if len(self._pending) >= PENDING_MAX_DESTS:
                counters.drop(DropReason.PENDING_FULL)
                return
            entry = self._pending[key] = _Pending()
        else:
            self._expire(entry, now, counters)
        size = len(data)
        if len(entry.packets) >= PENDING_MAX_PACKETS or entry.nbytes + size > PENDING_MAX_BYTES:
            counters.drop(DropReason.PENDING_FULL)
            return
        entry.packets.append((now, bytes(data)))
        entry.nbytes += size

    def _expire(self, entry: _Pending, now: float, counters: PeerCounters) -> None:
        packets = entry.packets
        limit = now - self.pending_timeout
        while packets and packets[0][0] < limit:
            entry.nbytes -= len(packets.popleft()[1])
            counters.drop(DropReason.PENDING_EXPIRED)

    def _release(self, key: bytes) -> None:
        """Seal and queue the packets held for ``key`` (its peer has an outbound SA now)."""
        peer = self._lookup(key)
        sa = None if peer is None else peer.outbound
        entry = self._pending.get(key)
        if peer is None or sa is None or entry is None:
            return
        del self._pending[key]
        self._expire(entry, self.clock(), peer.counters)
        qbuf, qview = self._qbuf, self._qview
        offload = self._rx_base != 0
        nh = NH_IPV6 if len(key) == 16 else NH_IPV4
        for _, data in entry.packets:
            n = len(data)
            qbuf[:n] = data
            if offload:
                self._send_read(peer, sa, qbuf, qview, n, nh)
            else:
                self._queue(peer, sa, qview, n, nh)

    def _lookup(self, key: bytes) -> _Peer | None:
        """The peer of an inner destination (16-byte IPv6 or 4-byte IPv4 key)."""
        return self._peers.get(key) if len(key) == 16 else self._peers4.get(key)

    def _release_ready(self) -> None:
        """Destinations that got an outbound SA (signalled by replace_outbound): send held packets."""
        ready = self._ready
        while ready:
            key = ready.popleft()
            if key in self._pending:
                self._release(key)
        self._flush_batch()

    def _tick_pending(self, now: float) -> None:
        for key, entry in list(self._pending.items()):
            peer = self._lookup(key)
            if peer is not None and peer.outbound is not None:
                self._release(key)
                continue
            self._expire(entry, now, self.counters_global if peer is None else peer.counters)
            if not entry.packets:
                del self._pending[key]
        self._flush_batch()
        stale = now - DEMAND_INTERVAL
        for key, last in list(self._demand_last.items()):  # a snapshot: remove_peer() pops too
            if last < stale:
                self._demand_last.pop(key, None)

    def _queue(self, peer: _Peer, sa: OutboundSA, buf: memoryview, n: int, nh: int = NH_IPV6) -> None:
        """Seal ``buf[:n]`` for ``peer`` into the pending GSO batch (flushing it when needed)."""
        oview = self._oview
        count = self._b_count
        if count:
            if (peer is not self._b_peer or self._b_used - self._b_start + n + 64 > self._gso_bytes
                    or count >= GSO_MAX_SEGMENTS or not self._gso):
                self._flush(self._b_peer, oview[self._b_start:self._b_used], self._b_seg, count)
                count = self._b_count = 0
        used = self._b_used if count else 0
        try:
            length = sa.seal_into(oview[used:], buf, n, nh)
        except EspError as exc:
            peer.counters.drop(exc.reason)
            if exc.reason is DropReason.SEQ_EXHAUSTED and ("seq_exhausted", sa.spi) not in peer.signalled:
                peer.signalled.add(("seq_exhausted", sa.spi))
                self._emit(DatapathEvent("seq_exhausted", str(peer.inner), sa.spi))
            return
        c = peer.counters
        c.packets_out += 1
        self._traffic = True
        c.bytes_out += n
        if count == 0:
            self._b_peer, self._b_seg, self._b_start, self._b_count = peer, length, used, 1
            self._b_used = used + length
        elif length == self._b_seg:
            self._b_used += length
            self._b_count = count + 1
        elif length < self._b_seg:  # a shorter segment may only end a GSO batch
            self._flush(peer, oview[self._b_start:self._b_used + length], self._b_seg, count + 1)
            self._b_count = 0
        else:  # longer: send what we have; this packet starts the next batch
            self._flush(self._b_peer, oview[self._b_start:self._b_used], self._b_seg, count)
            self._b_peer, self._b_seg, self._b_start, self._b_count = peer, length, self._b_used, 1
            self._b_used += length

    def _flush(self, peer: _Peer | None, data: memoryview, seg: int, count: int) -> None:
        """Send ``count`` sealed packets of size ``seg`` (the last may be shorter)."""
        if peer is None:
            return
        assert self.sock is not None
        outer = peer.outer
        for attempt in range(2):
            try:
                if count == 1:
                    self.sock.sendto(data, outer)
                else:
                    self.sock.sendmsg((data,), ((socket.SOL_UDP, UDP_SEGMENT, _U16.pack(seg)),),
                                      0, outer)
                break
            except BlockingIOError:
                if attempt == 0 and self._wait_writable():
                    continue
                peer.counters.drop(DropReason.SEND_FAILED)
                return
            except OSError as exc:
                if count > 1 and exc.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT):
                    self._gso = False  # no UDP GSO here: fall back to one datagram each
                    for off in range(0, len(data), seg):
                        self._flush(peer, data[off:off + seg], seg, 1)
                    return
                peer.counters.drop(DropReason.SEND_FAILED)
                return
        if peer.keepalive is not None:
            peer.keepalive.last_sent = self.clock()

    def _wait_writable(self) -> bool:
        assert self.sock is not None
        _, writable, _ = select.select([], [self.sock], [], 0.05)
        return bool(writable)

    def _drain_sock(self) -> None:
        """UDP → classify → open → TUN, up to ``batch`` receive calls.

        With ``UDP_GRO`` one receive may return several datagrams of one flow glued
        together; the control message gives their size and they are handled one by one.
        """
        assert self.sock is not None
        recvmsg_into = self.sock.recvmsg_into
        rbuf = self._rbuf
        rview = self._rview
        bufs = (rbuf,)
        space = self._cmsg_space
        for _ in range(self.batch):
            try:
                n, ancdata, _flags, addr = recvmsg_into(bufs, space)
            except OSError:
                break
            seg = n
            for level, kind, data in ancdata:
                if level == socket.SOL_UDP and kind == UDP_GRO and len(data) >= 2:
                    seg = _U16_NATIVE.unpack_from(data, 0)[0] or n
            if seg >= n:
                self._datagram(rview[:n], n, addr)
            else:
                for off in range(0, n, seg):
                    end = min(off + seg, n)
                    self._datagram(rview[off:end], end - off, addr)
        if self._rx_base:
            self._flush_tun()

    def _datagram(self, view: memoryview, n: int, addr: Addr) -> None:
        """One received datagram: keepalive, IKE or ESP."""
        if n < 8:
            if n == 1 and view[0] == 0xFF:
                self.keepalives_in += 1
            elif n > 4 and view[0:4] == NON_ESP_MARKER:
                self._deliver_ike(bytes(view[4:n]), addr)
            else:
                self.counters_global.drop(DropReason.TRUNCATED)
            return
        spi = _U32.unpack_from(view, 0)[0]
        if spi == 0:
            self._deliver_ike(bytes(view[4:n]), addr)
            return
        entry = self._inbound.get(spi)
        if entry is None:
            self.counters_global.drop(DropReason.UNKNOWN_SPI)
            return
        sa, peer = entry
        dview = self._dview
        base = self._rx_base
        try:
            _, nh, plen = sa.open_into(view, dview[base:])
        except EspError as exc:
            peer.counters.drop(exc.reason)
            return
        # Ingress filter: only the peer's own ULA (or its own inner IPv4) may come out, and
        # the IP version must be the one next header says (the TUN goes by the version): the
        # coalescer takes only packets of the family it is told, the rest is checked here.
        if nh == NH_IPV6:
            if plen < 40 or self._dbuf[base + 8:base + 24] != peer.inner_key:
                peer.counters.drop(DropReason.BAD_INNER)
                return
            ip = IPV6_HDR
        elif plen < 20 or self._dbuf[base + 12:base + 16] != peer.inner4_key:
            peer.counters.drop(DropReason.BAD_INNER)
            return
        else:
            ip = IPV4_HDR
        try:
            if not base:
                if self._dbuf[0] >> 4 != (6 if ip == IPV6_HDR else 4):
                    peer.counters.drop(DropReason.BAD_INNER)
                    return
                os.write(self._tun_fd, dview[:plen])
            else:  # with a virtio-net header; TCP segments are glued (GRO) first
                packet = dview[base:base + plen]
                fed = self._coalescer.feed(packet, ip)
                if fed != TAKEN and not self._to_tun_offload(packet, fed, ip):
                    peer.counters.drop(DropReason.BAD_INNER)
                    return
        except OSError:
            peer.counters.drop(DropReason.SEND_FAILED)
            return
        c = peer.counters
        c.packets_in += 1
        self._traffic = True
        c.bytes_in += plen
        if addr != peer.outer:
            old = peer.outer
            peer.outer = addr
            self._emit(DatapathEvent("nat_rebind", str(peer.inner), spi, old, addr))

    def _to_tun_offload(self, packet: memoryview, fed: int, ip: int) -> bool:
        """Write a decrypted packet the coalescer did not take (``fed``: FLUSH or NOT_TCP;
        ``ip``: the family, as for TcpCoalescer.feed); False if its IP version is not that
        family's (nothing written)."""
        co = self._coalescer
        if fed == FLUSH:  # a TCP segment that starts a new super-packet
            os.write(self._tun_fd, co.take())
            if co.feed(packet, ip) == TAKEN:
                return True
        if packet[0] >> 4 != (6 if ip == IPV6_HDR else 4):
            return False
        if co.count:
            os.write(self._tun_fd, co.take())
        start = self._rx_base - VNET_HDR_LEN
        VNET_HDR.pack_into(self._dview, start, F_DATA_VALID, GSO_NONE, 0, 0, 0, 0)
        os.write(self._tun_fd, self._dview[start:self._rx_base + len(packet)])
        return True

    def _flush_tun(self) -> None:
        """Write the pending coalesced packet, if any (end of a receive batch)."""
        if self._coalescer.count:
            try:
                os.write(self._tun_fd, self._coalescer.take())
            except OSError:
                self.counters_global.drop(DropReason.SEND_FAILED)

    def _deliver_ike(self, data: bytes, addr: Addr) -> None:
        self.ike_in += 1
        if self.on_ike is not None:
            try:
                self.on_ike(data, addr)
            except Exception:  # noqa: S110 - a broken callback must not stop the datapath
                pass

    def _tick(self, now: float) -> None:
        """Timers: expired inbound SAs, keepalives, rekey signals, held on-demand packets."""
        if self._pending or self._demand_last:
            self._tick_pending(now)
        if self._expiring:
            with self._lock:
                due = [spi for deadline, spi in self._expiring if deadline <= now]
                self._expiring = [(d, s) for d, s in self._expiring if d > now]
            for spi in due:
                entry = self._inbound.get(spi)
                self.remove_sa(spi)
                if entry is not None:
                    self._emit(DatapathEvent("sa_expired", str(entry[1].inner), spi))
        assert self.sock is not None
        for peer in list(self._peers.values()):
            timer = peer.keepalive
            if timer is not None and timer.due(now):
                with contextlib.suppress(OSError):
                    self.sock.sendto(KEEPALIVE, peer.outer)
                    peer.counters.keepalives_sent += 1
                timer.note_sent(now)
            sa = peer.outbound
            if sa is not None and sa.rekey_needed and ("rekey_needed", sa.spi) not in peer.signalled:
                peer.signalled.add(("rekey_needed", sa.spi))
                self._emit(DatapathEvent("rekey_needed", str(peer.inner), sa.spi))
