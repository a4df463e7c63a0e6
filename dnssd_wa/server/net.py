"""asyncio listeners: UDP (with a fast-path thread), TCP and DNS-over-TLS, DSO sessions.

How this works
--------------
* **UDP**: a plain thread blocks in ``recvfrom``; when the bytes of the query after its
  ID are in :attr:`ServerCore.udp_cache`, it answers right there (the cached answer after
  a patched-in ID). Anything else is handed to the event loop thread, which runs the
  core and fills the cache. The core replaces the cache with an empty dict on every
  change, so the thread never answers from stale data after an UPDATE was acknowledged.
* **TCP / TLS**: one :class:`DnsStream` protocol per connection. RFC 7766 framing
  (2-byte length), pipelined: requests are answered in order as they are read; idle
  connections close after 30 s. A message with opcode DSO
  turns the connection into a DSO session (RFC 8490), which carries DNS Push
  (RFC 8765) SUBSCRIBE / PUSH / UNSUBSCRIBE.
* **Leases**: a task sleeps until the next lease end (or until an UPDATE kicks it) and
  calls :meth:`ServerCore.expire`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import dns.name
import dns.rcode

from dnssd_wa import dso, push
from dnssd_wa.server.core import ServerCore

IDLE_TIMEOUT = 30.0
MAX_BACKLOG = 4096
MAX_WRITE_BUFFER = 4 << 20
KEEPALIVE = dso.Keepalive(inactivity_timeout_ms=60_000, keepalive_interval_ms=3_600_000)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class UdpListener:
    def __init__(self, core: ServerCore, loop: asyncio.AbstractEventLoop, address: str) -> None:
        host, port = _split(address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((host, port))
        self.sock.settimeout(0.2)
        self.address = f"{host}:{self.sock.getsockname()[1]}" if family == socket.AF_INET else \
            f"[{host}]:{self.sock.getsockname()[1]}"
        self.core = core
        self.loop = loop
        self.stopping = False
        self.backlog = 0  # datagrams handed to the event loop, not yet answered (approximate)
        self.thread = threading.Thread(target=self._run, name=f"udp {self.address}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        sock, core, loop = self.sock, self.core, self.loop
        recvfrom, sendto = sock.recvfrom, sock.sendto
        while not self.stopping:
            try:
                data, addr = recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                if self.stopping:
                    return
                continue
            hit = core.udp_cache.get(data[2:])
            if hit is not None:
                try:
                    sendto(data[:2] + hit, addr)
                except OSError:
                    pass
                continue
            if self.backlog >= MAX_BACKLOG:
                continue  # the event loop is behind: drop, the client retries
            self.backlog += 1
            try:
                loop.call_soon_threadsafe(self._slow, data, addr)
            except RuntimeError:
                return

    def _slow(self, data: bytes, addr: Any) -> None:
        self.backlog -= 1
        out = self.core.handle(data, "udp", time.time(), f"{addr[0]}#{addr[1]}")
        if out is not None:
            with contextlib.suppress(OSError):
                self.sock.sendto(out, addr)

    def close(self) -> None:
        self.stopping = True
        if self.thread.is_alive():
            self.thread.join(timeout=2)
        self.sock.close()


@dataclass
class DsoSession:
    """One DSO session (RFC 8490) on a TCP/TLS connection: keepalive and DNS Push."""

    core: ServerCore
    send: Callable[[bytes], None]
    subs: dict[int, tuple[dns.name.Name, int, int]] = field(default_factory=dict)
    established: bool = False

    def handle(self, wire: bytes) -> bool:
        """Process one DSO message; False means abort the connection (RFC 8490 §5.1.1)."""
        try:
            msg = dso.parse(wire)
        except dso.DsoError:
            return False
        if msg.response:
            return True  # we send no acknowledged requests; ignore stray responses
        primary = msg.primary
        if primary is None:
            return False
        if primary.dtype == dso.DsoType.KEEPALIVE:
            if msg.msg_id == 0:
                return False
            try:
                dso.Keepalive.from_tlv(primary)
            except dso.DsoError:
                return False
            self.established = True
            self._reply(dso.response(msg, dso.DsoRcode.NOERROR, KEEPALIVE.tlv()))
            return True
        if primary.dtype == dso.DsoType.SUBSCRIBE:
            return self._subscribe(msg, primary)
        if primary.dtype == dso.DsoType.UNSUBSCRIBE:
            if msg.msg_id != 0:
                return False
            try:
                sub = self.subs.pop(push.parse_unsubscribe(primary), None)
            except dso.DsoError:
                return False
            if sub is not None:
                self.core.unsubscribe(sub[0], sub[1], sub[2])
            return True
        if primary.dtype == dso.DsoType.RECONCILE:
            return msg.msg_id == 0
        if msg.msg_id == 0:
            return False
        self._reply(dso.response(msg, dso.DsoRcode.DSOTYPENI))
        return True

    def _subscribe(self, msg: dso.DsoMessage, primary: dso.Tlv) -> bool:
        if msg.msg_id == 0 or msg.msg_id in self.subs:
            return False
        try:
            question = push.Subscribe.from_tlv(primary)
        except dso.DsoError:
            self._reply(dso.response(msg, dso.DsoRcode.FORMERR))
            return True
        rcode, sub_id, current = self.core.subscribe(question.name, question.rdtype, self._pushed)
        self._reply(dso.response(msg, rcode))
        if rcode != dns.rcode.NOERROR:
            return True
        self.established = True
        self.subs[msg.msg_id] = (question.name, question.rdtype, sub_id)
        if current:
            self._pushed(current)
        return True

    def _pushed(self, records: list[push.PushRecord]) -> None:
        for start in range(0, len(records), 200):
            tlv = push.push_tlv(records[start:start + 200])
            self._reply(dso.DsoMessage(0, False, 0, (tlv,)))

    def _reply(self, msg: dso.DsoMessage) -> None:
        self.send(msg.build())

    def close(self) -> None:
        for name, rdtype, sub_id in self.subs.values():
            self.core.unsubscribe(name, rdtype, sub_id)
        self.subs.clear()


class DnsStream(asyncio.Protocol):
    """One TCP or TLS connection: RFC 7766 framing, requests answered in order as they
    arrive (pipelining), DSO sessions, idle timeouts, and reading paused while the peer
    does not read our answers. A Protocol rather than StreamReader/StreamWriter: one
    callback per segment, no task switch per message."""

    def __init__(self, server: Server, proto: str) -> None:
        self.server = server
        self.core = server.core
        self.proto = proto
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.buffer = b""
        self.session: DsoSession | None = None
        self.last = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # create_server hands stream transports
        self.transport = transport
        transport.set_write_buffer_limits(high=65536)
        peername = transport.get_extra_info("peername")
        self.peer = f"{peername[0]}#{peername[1]}" if peername else "?"
        self.server.streams.add(self)
        self._arm(IDLE_TIMEOUT)

    def _timeout(self) -> float | None:
        if self.session is None:
            return IDLE_TIMEOUT
        if self.session.subs:
            return None  # long-lived operations keep a DSO session active (RFC 8490 §6.2)
        return KEEPALIVE.inactivity_timeout_ms / 1000 * 2

    def _arm(self, delay: float) -> None:
        self.timer = asyncio.get_running_loop().call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        self.timer = None
        if self.transport is None or self.transport.is_closing():
            return
        timeout = self._timeout()
        if timeout is None:
            self._arm(IDLE_TIMEOUT)  # look again later: the subscriptions may end
            return
        left = self.last + timeout - time.monotonic()
        if left <= 0:
            self.transport.close()
        else:
            self._arm(left)

    def data_received(self, data: bytes) -> None:
        self.last = time.monotonic()
        buffer = self.buffer + data if self.buffer else data
        at, size = 0, len(buffer)
        transport = self.transport
        while size - at >= 2 and transport is not None and not transport.is_closing():
            end = at + 2 + (buffer[at] << 8 | buffer[at + 1])
            if end > size:
                break
            self._message(buffer[at + 2:end])
            at = end
        self.buffer = buffer[at:] if at < size else b""

    def _message(self, data: bytes) -> None:
        if dso.is_dso(data):
            if self.session is None:
                self.session = DsoSession(self.core, self.send)
            if not self.session.handle(data) and self.transport is not None:
                self.transport.close()
            return
        out = self.core.handle(data, self.proto, time.time(), self.peer)
        if out is not None:
            self.send(out)

    def send(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            transport.close()  # a subscriber that stopped reading: drop it, not our memory
            return
        transport.write(len(data).to_bytes(2, "big") + data)

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()  # a pipelining client that does not read: wait

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.session is not None:
            self.session.close()
        self.server.streams.discard(self)
        self.transport = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Server:
    """All listeners of one btmm-serve process."""

    def __init__(self, core: ServerCore) -> None:
        self.core = core
        self.udp: list[UdpListener] = []
        self.servers: list[asyncio.Server] = []
        self.listeners: list[dict[str, str]] = []
        self.kick = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.streams: set[DnsStream] = set()

    async def start(self, listen: list[str], tls_listen: list[str], ssl_ctx: ssl.SSLContext | None) -> None:
        loop = asyncio.get_running_loop()
        for address in listen:
            host, port = _split(address)
            for attempt in range(20):
                udp = UdpListener(self.core, loop, address)
                bound = int(udp.address.rpartition(":")[2])  # port 0: TCP follows UDP's port
                try:
                    tcp = await loop.create_server(lambda: DnsStream(self, "tcp"), host, bound,
                                                   reuse_address=True)
                except OSError:
                    udp.close()
                    if port != 0 or attempt == 19:
                        raise
                    continue
                break
            self.udp.append(udp)
            self.listeners.append({"proto": "udp", "address": udp.address})
            self.servers.append(tcp)
            self.listeners.append({"proto": "tcp", "address": _bound(tcp)})
        for address in tls_listen:
            host, port = _split(address)
            tls = await loop.create_server(lambda: DnsStream(self, "tls"), host, port, ssl=ssl_ctx,
                                           reuse_address=True, ssl_handshake_timeout=10)
            self.servers.append(tls)
            self.listeners.append({"proto": "tls", "address": _bound(tls)})
        for udp in self.udp:
            udp.start()
        self.core.on_schedule = self.kick.set
        self.core.log_later = loop.call_soon  # log lines after the answer is on its way
        task = asyncio.create_task(self._lease_loop())
        self._tasks.add(task)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for server in self.servers:
            server.close()
        for stream in list(self.streams):
            stream.close()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)
        for udp in self.udp:
            udp.close()

    async def _lease_loop(self) -> None:
        while True:
            nxt = self.core.next_expiry()
            delay = 1.0 if nxt is None else min(1.0, max(0.0, nxt - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.kick.wait(), delay)
            self.kick.clear()
            self.core.expire(time.time())


def _bound(server: asyncio.Server) -> str:
    name = server.sockets[0].getsockname()
    return f"{name[0]}:{name[1]}" if server.sockets[0].family == socket.AF_INET else f"[{name[0]}]:{name[1]}"
