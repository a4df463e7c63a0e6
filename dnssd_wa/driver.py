"""The asyncio driver: DNS over UDP (TCP fallback on TC), TCP and DNS-over-TLS.

How this works
--------------
:class:`DnsClient` owns the sockets for one server. It sends wire messages and returns
reply bytes, matching replies to requests by message ID so many queries run in parallel
on one UDP socket or one TCP/TLS connection (RFC 7766 pipelining). dnspython builds and
parses every message; this module only moves bytes, retransmits over UDP, retries a
truncated UDP reply over TCP, and turns socket/TLS failures into
:class:`~dnssd_wa.errors.TransportFailed`. (dnspython's ``dns.asyncquery`` opens a
socket per query and validates TSIG before we can read the TSIG error; a domain of 1,000
services is 2,000+ queries, so the multiplexed transport is ours.)

On top: :func:`send_update` (sign at ``now``, send, explain refusals — after a SERVFAIL it
counts the shared RRsets to say whether BIND's 100-records limit was hit),
:func:`run_plan` (executes a browse/resolve plan, each round in parallel),
:func:`browse`, :func:`resolve_tunnel_endpoint` (reused by btmm-resolve-tunnel) and
:func:`discover_update_server` (SRV ``_dns-update-tls._tcp.<domain>``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import ipaddress
import secrets
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from dnssd_wa import errors, names
from dnssd_wa.browse import (
    BrowsePlan,
    Plan,
    Problem,
    PtrListPlan,
    Question,
    Service,
    TunnelEndpoint,
    TunnelPlan,
)
from dnssd_wa.errors import Failure, TransportFailed, UpdateFailed

if TYPE_CHECKING:
    # updates (and the system resolver) are not on a browse's path: imported where used
    import dns.update

    from dnssd_wa import update
    from dnssd_wa.records import RRSet

Explain = Callable[[str], None]


class Transport(enum.Enum):
    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"


DNS_PORT = 53
DOT_PORT = 853


@dataclass(frozen=True)
class ServerConfig:
    """How to reach one DNS server."""

    host: str
    port: int
    transport: Transport = Transport.UDP
    ca_file: str | None = None
    tls_hostname: str | None = None  # default: host
    timeout: float = 2.0
    attempts: int = 3

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port} ({self.transport.value})"


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` → (host, port); raises BadName."""
    t = text.strip()
    if t.startswith("["):
        host, _, rest = t[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif t.count(":") == 1:
        host, _, port_text = t.partition(":")
    else:
        host, port_text = t, ""
    if not host:
        raise errors.BadName(f"server {text!r} has no host; give HOST or HOST:PORT")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise errors.BadName(f"server {text!r}: port must be 1-65535")
        return host, int(port_text)
    return host, default_port


_TLS_CONTEXTS: dict[str | None, ssl.SSLContext] = {}


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """A verifying client context (CA file, or the system store), built once per CA file.

    Loading the system store costs milliseconds; a long-running register or a watch reuses it.
    """
    ctx = _TLS_CONTEXTS.get(ca_file)
    if ctx is None:
        ctx = ssl.create_default_context(cafile=ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        _TLS_CONTEXTS[ca_file] = ctx
    return ctx


_QUERY_TEMPLATES: dict[int, tuple[bytes, bytes]] = {}


def query_wire(name: dns.name.Name, rdtype: dns.rdatatype.RdataType, msg_id: int) -> bytes:
    """The wire form of ``dns.message.make_query(name, rdtype)`` with ID ``msg_id``.

    dnspython renders one query for the root name per type (EDNS 1232 for PTR) once; each
    query splices ``name.to_wire()`` in place of the root label and patches the ID — the same
    bytes ``make_query(...).to_wire()`` produces (a lone question has nothing to compress),
    at ~2 µs instead of ~65 µs (2,000 queries for a 1,000-service browse).
    """
    template = _QUERY_TEMPLATES.get(rdtype)
    if template is None:
        msg = _make_query(dns.name.root, rdtype)
        msg.id = 0
        wire = msg.to_wire()
        # header (12 bytes), root label b"\x00", then QTYPE/QCLASS and any OPT record
        template = (wire[2:12], wire[13:])
        _QUERY_TEMPLATES[rdtype] = template
    qname = name.to_wire()  # uncompressed; bytes whenever no file is given
    return struct.pack("!H", msg_id) + template[0] + (qname or b"") + template[1]


def _make_query(name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.message.Message:
    if rdtype == dns.rdatatype.PTR:  # PTR answers grow with the number of services
        return dns.message.make_query(name, rdtype, use_edns=0, payload=1232)
    # SRV/TXT/AAAA fit in 512 bytes; no OPT/cookie to build and parse (TC → TCP if not)
    return dns.message.make_query(name, rdtype)


# a connection that opened but died during the TLS handshake (reset, EOF): not "unreachable"
_HANDSHAKE_ERRNOS = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, None}


class _UdpSocket:
    """A connected non-blocking UDP socket on the event loop.

    Not asyncio's datagram transport: that reads one datagram per loop iteration (one
    epoll_wait each); with 32 queries in flight replies queue up, and draining them in one
    callback saves a loop iteration per reply (2,000 of them for 1,000 services).
    """

    def __init__(self, client: DnsClient, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.sock = sock
        self.loop = loop
        self.closed = False
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        for _ in range(256):
            try:
                data = self.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP port unreachable on the connected socket
                self.client._fail_all(exc)
                return
            self.client._deliver(data)
            if self.closed:
                return

    def sendto(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            pass  # socket buffer full: the retransmit timer sends it again
        except OSError as exc:
            self.client._fail_all(exc)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()


class DnsClient:
    """Parallel DNS exchanges with one server (see module docstring)."""

    def __init__(self, config: ServerConfig, explain: Explain | None = None,
                 max_in_flight: int = 64) -> None:
        self.config = config
        self.explain = explain
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._udp: _UdpSocket | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._read_task: asyncio.Task[None] | None = None
        self._conn_lock = asyncio.Lock()
        self._window = asyncio.Semaphore(max_in_flight)
        self._udp_ids: dict[int, _UdpBatch] = {}  # IDs of batch queries in flight
        self._batches: list[_UdpBatch] = []
        self.queries = 0

    # ------------------------------------------------------------------ plumbing
    def new_id(self) -> int:
        """A random message ID, reserved until its exchange ends (IDs never collide in flight)."""
        msg_id = self._free_id()
        self._pending[msg_id] = asyncio.get_running_loop().create_future()
        return msg_id

    def _free_id(self) -> int:
        while True:
            msg_id = secrets.randbelow(65536)
            if msg_id not in self._pending and msg_id not in self._udp_ids:
                return msg_id

    def _future(self, msg_id: int) -> asyncio.Future[bytes]:
        fut = self._pending.get(msg_id)
        if fut is None or fut.done():
            fut = asyncio.get_running_loop().create_future()
            self._pending[msg_id] = fut
        return fut

    def _deliver(self, data: bytes) -> None:
        if len(data) < 12:
            return
        msg_id = (data[0] << 8) | data[1]
        batch = self._udp_ids.get(msg_id)
        if batch is not None:
            batch.on_reply(msg_id, data)
            return
        fut = self._pending.get(msg_id)
        if fut is not None and not fut.done():
            fut.set_result(data)

    def _fail_all(self, exc: BaseException) -> None:
        for batch in list(self._batches):
            batch.on_error(exc)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)

    async def _open_udp(self) -> _UdpSocket:
        if self._udp is not None and not self._udp.is_closing():
            return self._udp
        async with self._conn_lock:  # queries started together share one socket
            if self._udp is None or self._udp.is_closing():
                self._udp = await self._new_udp_socket()
            return self._udp

    async def _new_udp_socket(self) -> _UdpSocket:
        loop = asyncio.get_running_loop()
        try:
            try:  # an address needs no resolver (glibc's first getaddrinfo costs ~2 ms)
                ip = ipaddress.ip_address(self.config.host)
                family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
                addr: tuple[Any, ...] = (self.config.host, self.config.port)
            except ValueError:
                infos = await loop.getaddrinfo(self.config.host, self.config.port, type=socket.SOCK_DGRAM)
                family, _, _, _, addr = infos[0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.connect(addr)
            except OSError:
                sock.close()
                raise
        except OSError as exc:
            raise errors.unreachable(self.config.label, exc.strerror or str(exc)) from None
        return _UdpSocket(self, sock, loop)

    def _ssl_context(self) -> ssl.SSLContext:
        return tls_context(self.config.ca_file)

    async def _open_stream(self, transport: Transport) -> None:
        if self._writer is not None and not self._writer.is_closing():
            return
        host, port = self.config.host, self.config.port
        hostname = self.config.tls_hostname or host
        tls = transport is Transport.TLS
        try:
            # ssl= here, not StreamWriter.start_tls(): after start_tls, BIND's TLS 1.3 replies
            # often waited ~45 ms (measured), with ssl= they do not.
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=self._ssl_context() if tls else None,
                                        server_hostname=hostname if tls else None),
                self.config.timeout)
        except ssl.SSLCertVerificationError as exc:
            raise errors.tls_mismatch(self.config.label, hostname, exc.verify_message or str(exc)) from None
        except TimeoutError:
            raise errors.timed_out(self.config.label, self.config.timeout) from None
        except (ConnectionRefusedError, socket.gaierror) as exc:
            raise errors.unreachable(self.config.label, exc.strerror or str(exc)) from None
        except OSError as exc:
            if tls and (isinstance(exc, ssl.SSLError) or exc.errno in _HANDSHAKE_ERRNOS):
                detail = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
                raise TransportFailed(Failure.TLS_MISMATCH, (
                    f"TLS handshake with {self.config.label} failed ({detail}); is it a DNS-over-TLS "
                    "port? (Knot 3.2 has no DoT: use --tcp or --server with the DoT port)")) from None
            raise errors.unreachable(self.config.label, exc.strerror or str(exc)) from None
        if tls:
            # Measured against BIND 9.18 with TLS 1.3: a request written while the server's
            # session tickets are still in flight stalls ~45 ms in 5-10 % of new connections
            # (delayed ACK vs Nagle); letting the tickets land first (1 ms) removes the stall.
            await asyncio.sleep(0.001)
        self._reader, self._writer = reader, writer
        self._read_task = asyncio.create_task(self._read_loop(reader))

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                head = await reader.readexactly(2)
                data = await reader.readexactly(struct.unpack("!H", head)[0])
                self._deliver(data)
        except (asyncio.IncompleteReadError, OSError, ssl.SSLError) as exc:
            self._fail_all(ConnectionResetError(f"connection closed by the server ({exc})"))
            if self._writer is not None:
                self._writer.close()
            self._writer = None

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._writer is not None:
            if self._writer.get_extra_info("sslcontext") is not None:
                # Python waits for the server's close_notify, which BIND delays by ~30 s: DoT
                # needs no orderly TLS shutdown (RFC 7858 §3.4), so drop the connection.
                self._writer.transport.abort()
            else:
                self._writer.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._writer.wait_closed(), 1.0)
            self._writer = None
        if self._read_task is not None:
            self._read_task.cancel()
            with contextlib.suppress(BaseException):
                await self._read_task
            self._read_task = None

    async def __aenter__(self) -> DnsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ exchanges
    async def exchange(self, wire: bytes, msg_id: int, *, transport: Transport | None = None) -> bytes:
        """Send ``wire`` (whose ID is ``msg_id``) and return the reply's bytes."""
        try:
            return await self._exchange(wire, msg_id, transport or self.config.transport)
        finally:
            self._pending.pop(msg_id, None)  # also releases an ID reserved by new_id()

    async def _exchange(self, wire: bytes, msg_id: int, mode: Transport) -> bytes:
        async with self._window:
            self.queries += 1
            if mode is Transport.UDP:
                reply = await self._exchange_udp(wire, msg_id)
                if len(reply) >= 4 and reply[2] & 0x02:  # TC: retry over TCP (RFC 7766)
                    if self.explain:
                        self.explain("  reply truncated (TC): retrying over TCP")
                    return await self._exchange_stream(wire, msg_id, Transport.TCP)
                return reply
            return await self._exchange_stream(wire, msg_id, mode)

    async def _exchange_udp(self, wire: bytes, msg_id: int) -> bytes:
        udp = await self._open_udp()
        fut = self._future(msg_id)
        loop = asyncio.get_running_loop()
        interval = self.config.timeout / self.config.attempts
        timer: asyncio.TimerHandle | None = None

        def retransmit(sent: int) -> None:
            nonlocal timer
            if fut.done():
                return
            if sent >= self.config.attempts:
                fut.set_exception(errors.timed_out(self.config.label, self.config.timeout))
                return
            udp.sendto(wire)
            timer = loop.call_later(interval, retransmit, sent + 1)

        retransmit(0)
        try:
            return await fut
        except OSError as exc:
            raise errors.unreachable(self.config.label, exc.strerror or str(exc)) from None
        finally:
            if timer is not None:
                timer.cancel()
            self._pending.pop(msg_id, None)

    async def _exchange_stream(self, wire: bytes, msg_id: int, mode: Transport) -> bytes:
        if self.config.transport is Transport.UDP and mode is Transport.TCP:
            # fallback connection: a separate short-lived client on the same address
            sub = DnsClient(ServerConfig(self.config.host, self.config.port, Transport.TCP,
                                         timeout=self.config.timeout))
            try:
                return await sub._exchange_stream(wire, msg_id, Transport.TCP)
            finally:
                await sub.close()
        async with self._conn_lock:
            await self._open_stream(mode)
        writer = self._writer
        if writer is None:
            raise errors.unreachable(self.config.label, "connection closed")
        fut = self._future(msg_id)
        try:
            writer.write(struct.pack("!H", len(wire)) + wire)
            try:
                return await asyncio.wait_for(fut, self.config.timeout)
            except TimeoutError:
                raise errors.timed_out(self.config.label, self.config.timeout) from None
            except (ConnectionError, OSError) as exc:
                raise errors.TransportFailed(Failure.UNREACHABLE, (
                    f"{self.config.label} closed the connection before answering ({exc}); BIND does "
                    "this over DoT when its update queue (100 pending updates) is full — retry "
                    "later")) from None
        finally:
            self._pending.pop(msg_id, None)

    async def query(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.message.Message:
        """One query, parsed by dnspython (EDNS 1232 for PTR; TC falls back to TCP).

        RD stays set like any stub resolver's: BIND's default ``minimal-responses
        no-auth-recursive`` then leaves out the NS/glue it adds to RD=0 answers, which
        halves the bytes dnspython parses per reply (2,000 of them for 1,000 services).
        """
        msg_id = self.new_id()
        t0 = time.monotonic()
        if self.explain:
            self.explain(f"→ {names.name_text(name)}. {rdtype.name} via {self.config.label}")
        wire = await self.exchange(query_wire(name, rdtype, msg_id), msg_id)
        reply = self._parse_reply(wire, name, rdtype)
        if self.explain:
            ms = (time.monotonic() - t0) * 1000
            body = "; ".join(r.to_text() for r in reply.answer)[:300] or "(no answer records)"
            self.explain(f"← {names.name_text(name)}. {rdtype.name}: "
                         f"{dns.rcode.to_text(reply.rcode())} in {ms:.1f} ms: {body}")
        return reply

    def _parse_reply(self, wire: bytes, name: dns.name.Name,
                     rdtype: dns.rdatatype.RdataType) -> dns.message.Message:
        try:
            reply = dns.message.from_wire(wire)
        except (dns.exception.DNSException, ValueError) as exc:
            raise errors.DecodeError(f"malformed reply from {self.config.label}: {exc}") from None
        if not reply.question or reply.question[0].name != name or reply.question[0].rdtype != rdtype:
            raise errors.DecodeError(
                f"reply from {self.config.label} does not answer {names.name_text(name)}")
        return reply

    async def query_many(self, questions: list[Question], window: int = 32) -> list[Answer]:
        """Ask every question, ``window`` at a time; each result is a reply or the DnssdError.

        Over UDP (without ``--verbose``) this is one callback-driven pipeline (:class:`_UdpBatch`):
        no task, coroutine or timer per query — a reply is parsed as it arrives and the next
        question goes out at once. Other transports pipeline ``window`` coroutines.
        """
        if not questions:
            return []
        if self.config.transport is Transport.UDP and self.explain is None:
            udp = await self._open_udp()
            batch = _UdpBatch(self, udp, questions, window)
            return await batch.run()
        results: list[Answer] = [errors.DecodeError("not asked")] * len(questions)
        todo = iter(enumerate(questions))

        async def worker() -> None:
            for i, q in todo:
                try:
                    results[i] = await self.query(q.name, q.rdtype)
                except errors.DnssdError as exc:
                    results[i] = exc

        await asyncio.gather(*(worker() for _ in range(min(window, len(questions)))))
        return results


Answer = dns.message.Message | errors.DnssdError


class _Sent:
    """One question of a :class:`_UdpBatch` on the wire."""

    __slots__ = ("index", "last", "sends", "wire")

    def __init__(self, index: int, wire: bytes, sends: int, last: float) -> None:
        self.index, self.wire, self.sends, self.last = index, wire, sends, last


class _UdpBatch:
    """Many UDP queries on the client's socket, driven by reply callbacks (see query_many).

    Retransmission (``attempts`` sends, ``timeout / attempts`` apart) is one sweeping timer
    for the whole batch; a truncated reply is retried over TCP in its own task.
    """

    def __init__(self, client: DnsClient, udp: _UdpSocket, questions: list[Question],
                 window: int) -> None:
        self.client = client
        self.udp = udp
        self.questions = questions
        self.window = max(1, window)
        self.loop = asyncio.get_running_loop()
        self.results: list[Answer | None] = [None] * len(questions)
        self.next = 0
        self.remaining = len(questions)
        self.inflight: dict[int, _Sent] = {}  # by message ID
        self.interval = client.config.timeout / client.config.attempts
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.timer: asyncio.TimerHandle | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> list[Answer]:
        self.client._batches.append(self)
        try:
            while self.next < len(self.questions) and len(self.inflight) < self.window:
                self._send_next()
            self.timer = self.loop.call_later(self.interval, self._sweep)
            await self.done
        finally:
            self.client._batches.remove(self)
            for msg_id in self.inflight:
                self.client._udp_ids.pop(msg_id, None)
            self.inflight.clear()
            if self.timer is not None:
                self.timer.cancel()
            for task in list(self.tasks):
                task.cancel()
        return [r if r is not None else errors.DecodeError("not asked") for r in self.results]

    def _send_next(self) -> None:
        i = self.next
        self.next += 1
        q = self.questions[i]
        msg_id = self.client._free_id()
        wire = query_wire(q.name, q.rdtype, msg_id)
        self.inflight[msg_id] = _Sent(i, wire, 1, self.loop.time())
        self.client._udp_ids[msg_id] = self
        self.client.queries += 1
        self.udp.sendto(wire)

    def _finish(self, i: int, result: Answer) -> None:
        self.results[i] = result
        self.remaining -= 1
        if self.remaining == 0:
            if not self.done.done():
                self.done.set_result(None)
            return
        if self.next < len(self.questions) and len(self.inflight) < self.window:
            self._send_next()

    def on_reply(self, msg_id: int, data: bytes) -> None:
        entry = self.inflight.pop(msg_id, None)
        self.client._udp_ids.pop(msg_id, None)
        if entry is None:
            return
        i = entry.index
        q = self.questions[i]
        if len(data) >= 4 and data[2] & 0x02:  # TC: retry this one over TCP (RFC 7766)
            task = self.loop.create_task(self._over_tcp(i, entry.wire, msg_id))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return
        try:
            result: Answer = self.client._parse_reply(data, q.name, q.rdtype)
        except errors.DnssdError as exc:
            result = exc
        self._finish(i, result)

    async def _over_tcp(self, i: int, wire: bytes, msg_id: int) -> None:
        q = self.questions[i]
        try:
            data = await self.client._exchange_stream(wire, msg_id, Transport.TCP)
            result: Answer = self.client._parse_reply(data, q.name, q.rdtype)
        except errors.DnssdError as exc:
            result = exc
        self._finish(i, result)

    def on_error(self, exc: BaseException) -> None:
        """The socket failed (e.g. ICMP port unreachable): every open question fails with it."""
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        failure = errors.unreachable(self.client.config.label, reason)
        for msg_id, entry in list(self.inflight.items()):
            self.client._udp_ids.pop(msg_id, None)
            self.results[entry.index] = failure
        self.inflight.clear()
        for i in range(self.next, len(self.questions)):
            self.results[i] = failure
        self.next = len(self.questions)
        if not self.done.done():
            self.done.set_result(None)

    def _sweep(self) -> None:
        now = self.loop.time()
        attempts = self.client.config.attempts
        for msg_id, entry in list(self.inflight.items()):
            if now - entry.last < self.interval:
                continue
            if entry.sends >= attempts:
                del self.inflight[msg_id]
                self.client._udp_ids.pop(msg_id, None)
                self._finish(entry.index, errors.timed_out(self.client.config.label,
                                                           self.client.config.timeout))
                continue
            entry.sends, entry.last = entry.sends + 1, now
            self.udp.sendto(entry.wire)
        if not self.done.done():  # next at the earliest retransmit/give-up time
            due = min((e.last for e in self.inflight.values()), default=now) + self.interval
            self.timer = self.loop.call_at(max(due, now + 0.001), self._sweep)


# ---------------------------------------------------------------------- updates


async def send_update(client: DnsClient, msg: dns.update.UpdateMessage, key: update.TsigKey | None,
                      *, zone: str, now: float | None = None,
                      rrsets: tuple[RRSet, ...] = ()) -> update.Reply:
    """Sign at ``now`` (default: the clock), send, and raise UpdateFailed on a refusal."""
    from dnssd_wa import update

    signing_time = int(time.time() if now is None else now)
    msg.id = client.new_id()
    signed = update.sign(msg, key, signing_time)
    t0 = time.monotonic()
    if client.explain:
        client.explain(f"→ UPDATE zone {zone}: {sum(len(s) for s in msg.update)} RRsets, "
                       f"{len(signed.wire)} bytes via {client.config.label}")
    wire = await client.exchange(signed.wire, signed.msg_id)
    reply = update.parse_reply(wire, signed)
    if client.explain:
        client.explain(f"← UPDATE {dns.rcode.to_text(dns.rcode.Rcode.make(reply.rcode))} "
                       f"(TSIG {'verified' if reply.verified else 'not verified'}) in "
                       f"{(time.monotonic() - t0) * 1000:.1f} ms")
    key_name = key.name if key else "(unsigned)"
    if reply.rcode != dns.rcode.NOERROR or reply.tsig_error:
        largest = None
        if reply.rcode == dns.rcode.SERVFAIL and rrsets:
            largest = await _largest_after(client, rrsets)
        raise errors.explain_update(reply.rcode, reply.tsig_error, zone=zone,
                                    server=client.config.label, key_name=key_name,
                                    client_time=signing_time, server_time=reply.server_time,
                                    largest_rrset=largest)
    if key is not None and not reply.verified:
        raise UpdateFailed(Failure.UNSIGNED_REPLY, (
            f"{client.config.label} acknowledged the update but its reply is not signed with key "
            f"{key_name}; the answer cannot be trusted (is something in between?)"), reply.rcode)
    return reply


async def _largest_after(client: DnsClient, rrsets: tuple[RRSet, ...]) -> tuple[str, int] | None:
    """After a SERVFAIL: how big each shared RRset would have become."""
    from dnssd_wa import update

    best: tuple[str, int] | None = None
    for owner, adding in update.largest_shared_rrset(rrsets):
        try:
            reply = await client.query(owner, dns.rdatatype.PTR)
        except errors.DnssdError:
            continue
        existing = 0
        for rrset in reply.answer:
            if rrset.name == owner and rrset.rdtype == dns.rdatatype.PTR:
                existing = len(rrset)
        total = existing + adding
        if best is None or total > best[1]:
            best = (f"{names.name_text(owner)}. PTR", total)
    return best


# ---------------------------------------------------------------------- plans


async def run_plan(client: DnsClient, plan: Plan, workers: int = 32) -> None:
    """Ask each round of the plan's questions in parallel until it has none left.

    ``workers`` questions are in flight at a time (about 32 measured fastest against BIND on
    loopback: more only queues replies); see :meth:`DnsClient.query_many`.
    """
    while True:
        questions = plan.questions()
        if not questions:
            return
        results = await client.query_many(questions, workers)
        for q, res in zip(questions, results, strict=True):
            if isinstance(res, dns.message.Message):
                plan.answer(q, res)
            else:
                plan.answer(q, None, res.message)


async def browse(client: DnsClient, domain: dns.name.Name,
                 service_types: list[str]) -> tuple[list[Service], list[Problem]]:
    plan = BrowsePlan(domain, service_types)
    await run_plan(client, plan)
    return plan.services(), plan.problems


async def resolve_tunnel_endpoint(client: DnsClient,
                                  host: dns.name.Name) -> tuple[TunnelEndpoint, list[Problem]]:
    """The tunnel endpoint of ``host`` (AAAA, SRV _autotunnel._udp, A): reusable building block."""
    plan = TunnelPlan(host)
    await run_plan(client, plan)
    return plan.endpoint(), plan.problems


async def ptr_lists(client: DnsClient,
                    owners: list[dns.name.Name]) -> tuple[dict[dns.name.Name, list[dns.name.Name]],
                                                          list[Problem]]:
    plan = PtrListPlan(owners)
    await run_plan(client, plan)
    return plan.targets, plan.problems


async def discover_update_server(domain: dns.name.Name,
                                 resolver: tuple[str, int] | None = None,
                                 explain: Explain | None = None) -> tuple[str, int]:
    """The update server from SRV ``_dns-update-tls._tcp.<domain>`` (RFC 8490 style service).

    ``resolver`` is the DNS server to ask (host, port); default: the system resolver.
    """
    qname = names.child([b"_dns-update-tls", b"_tcp"], domain)
    if resolver is None:
        from dns.resolver import Resolver  # not `import dns.resolver`: that would make `dns` local

        try:
            ns = Resolver().nameservers
        except dns.exception.DNSException as exc:
            raise errors.unreachable("system resolver", str(exc)) from None
        if not ns:
            raise errors.unreachable("system resolver", "no nameserver in /etc/resolv.conf")
        resolver = (str(ns[0]), DNS_PORT)
    async with DnsClient(ServerConfig(resolver[0], resolver[1]), explain=explain) as client:
        reply = await client.query(qname, dns.rdatatype.SRV)
    for rrset in reply.answer:
        if rrset.rdtype == dns.rdatatype.SRV and rrset.name == qname:
            rd = min(rrset, key=lambda r: (r.priority, -r.weight))
            return names.name_text(rd.target), int(rd.port)
    raise errors.unreachable(f"{names.name_text(qname)} SRV",
                             f"no update server advertised for {names.name_text(domain)}; "
                             "pass --server HOST[:PORT]")


__all__ = [
    "DnsClient",
    "Question",
    "ServerConfig",
    "Transport",
    "browse",
    "discover_update_server",
    "parse_hostport",
    "ptr_lists",
    "resolve_tunnel_endpoint",
    "run_plan",
    "send_update",
]
