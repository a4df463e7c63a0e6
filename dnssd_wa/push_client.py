"""DNS Push Notifications client (RFC 8765 over an RFC 8490 DSO session on TLS) — asyncio driver.

How this works
--------------
:meth:`PushConnection.connect` opens a TLS connection (2-byte framed DNS messages,
RFC 7766), establishes the DSO session with a Keepalive request, and starts one reader
task. :meth:`PushConnection.subscribe` sends a SUBSCRIBE, waits for its NOERROR and returns
a :class:`Subscription`, an async iterator of :class:`PushEvent` (``add``/``remove``) fed
by the PUSH messages the server sends — first the current answers, then every change.

TLS: the records pushed are the same public DNS data a plain UDP query returns, so by
default the server certificate is not verified (RFC 8310's opportunistic profile), unless
a ``fingerprint`` (``sha256:<hex>`` of the certificate, as ``btmm-serve`` prints it) or an
``ssl_context`` that verifies is given. Codecs live in :mod:`dnssd_wa.dso` and
:mod:`dnssd_wa.push`; this module only moves bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import secrets
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import dns.exception
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from dnssd_wa import dso, push
from dnssd_wa.browse import Problem, Service
from dnssd_wa.driver import DnsClient
from dnssd_wa.errors import DnssdError
from dnssd_wa.watch import BrowseOnce, WatchState

CLIENT_KEEPALIVE = dso.Keepalive(inactivity_timeout_ms=60_000, keepalive_interval_ms=3_600_000)


class PushError(Exception):
    """The DNS Push server refused, misbehaved or went away."""


@dataclass(frozen=True)
class PushEvent:
    """One change: ``kind`` is ``add`` or ``remove``; ``rdata`` None means "every record of
    ``name`` (and ``rdtype``, unless ANY)" for a collective removal."""

    kind: str
    name: dns.name.Name
    rdtype: int
    rdata: dns.rdata.Rdata | None
    ttl: int


@dataclass
class Subscription:
    connection: PushConnection
    msg_id: int
    name: dns.name.Name
    rdtype: int
    queue: asyncio.Queue[PushEvent | None] = field(default_factory=asyncio.Queue)
    closed: bool = False

    def matches(self, record: push.PushRecord) -> bool:
        if record.name != self.name:
            return False
        return dns.rdatatype.ANY in (self.rdtype, record.rdtype) or record.rdtype == self.rdtype

    def __aiter__(self) -> AsyncIterator[PushEvent]:
        return self

    async def __anext__(self) -> PushEvent:
        if self.closed and self.queue.empty():
            raise StopAsyncIteration
        event = await self.queue.get()
        if event is None:
            self.closed = True
            if self.connection.error is not None:
                raise PushError(self.connection.error)
            raise StopAsyncIteration
        return event

    async def unsubscribe(self) -> None:
        if not self.closed:
            self.closed = True
            self.connection.subs.pop(self.msg_id, None)
            await self.connection.send(dso.DsoMessage(0, False, 0, (push.unsubscribe_tlv(self.msg_id),)))
            self.queue.put_nowait(None)


class PushConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.subs: dict[int, Subscription] = {}
        self.pending: dict[int, asyncio.Future[dso.DsoMessage]] = {}
        self.error: str | None = None
        self.server_keepalive: dso.Keepalive | None = None
        self._ids = itertools.cycle(range(1, 0x10000))
        for _ in range(secrets.randbelow(0xFFFF)):
            next(self._ids)
        self._task = asyncio.create_task(self._read_loop())

    @classmethod
    async def connect(cls, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None,
                      fingerprint: str | None = None, server_hostname: str | None = None,
                      timeout: float = 5.0) -> PushConnection:
        ctx = ssl_context
        if ctx is None:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ctx, server_hostname=server_hostname or host),
                timeout)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise PushError(f"cannot reach DNS Push server {host}:{port}: {exc}") from exc
        if fingerprint is not None:
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True) or b""
            if "sha256:" + hashlib.sha256(der).hexdigest() != fingerprint.lower():
                writer.close()
                raise PushError(f"DNS Push server {host}:{port} certificate does not match {fingerprint}")
        conn = cls(reader, writer)
        reply = await conn.request(CLIENT_KEEPALIVE.tlv(), timeout=timeout)
        if reply.rcode != 0:
            await conn.close()
            raise PushError(f"DNS Push server refused the DSO session (rcode {reply.rcode})")
        for tlv in reply.tlvs:
            if tlv.dtype == dso.DsoType.KEEPALIVE:
                with contextlib.suppress(dso.DsoError):
                    conn.server_keepalive = dso.Keepalive.from_tlv(tlv)
        return conn

    async def send(self, msg: dso.DsoMessage) -> None:
        data = msg.build()
        self.writer.write(len(data).to_bytes(2, "big") + data)
        await self.writer.drain()

    async def request(self, tlv: dso.Tlv, timeout: float = 5.0) -> dso.DsoMessage:
        if self.error is not None:
            raise PushError(self.error)
        msg_id = next(self._ids)
        while msg_id in self.pending or msg_id in self.subs:
            msg_id = next(self._ids)
        future: asyncio.Future[dso.DsoMessage] = asyncio.get_running_loop().create_future()
        self.pending[msg_id] = future
        try:
            await self.send(dso.request(msg_id, tlv))
            return await asyncio.wait_for(future, timeout)
        except TimeoutError as exc:
            raise PushError(f"no answer to DSO request {dso.DsoType(tlv.dtype).name} in {timeout} s") from exc
        finally:
            self.pending.pop(msg_id, None)

    async def subscribe(self, name: dns.name.Name | str, rdtype: int | str,
                        timeout: float = 5.0) -> Subscription:
        qname = dns.name.from_text(name) if isinstance(name, str) else name
        qtype = dns.rdatatype.from_text(rdtype) if isinstance(rdtype, str) else rdtype
        question = push.Subscribe(qname, qtype, dns.rdataclass.IN)
        if self.error is not None:
            raise PushError(self.error)
        msg_id = next(self._ids)
        while msg_id in self.pending or msg_id in self.subs:
            msg_id = next(self._ids)
        sub = Subscription(self, msg_id, qname, qtype)
        self.subs[msg_id] = sub  # registered before sending: the initial PUSH follows the reply at once
        future: asyncio.Future[dso.DsoMessage] = asyncio.get_running_loop().create_future()
        self.pending[msg_id] = future
        try:
            await self.send(dso.request(msg_id, question.tlv()))
            reply = await asyncio.wait_for(future, timeout)
        except TimeoutError as exc:
            self.subs.pop(msg_id, None)
            raise PushError(f"no answer to SUBSCRIBE {qname} type {qtype}") from exc
        finally:
            self.pending.pop(msg_id, None)
        if reply.rcode != 0:
            self.subs.pop(msg_id, None)
            rcode = dns.rcode.to_text(dns.rcode.Rcode.make(reply.rcode))
            raise PushError(f"SUBSCRIBE {qname} refused: {rcode}")
        return sub

    async def _read_loop(self) -> None:
        try:
            while True:
                header = await self.reader.readexactly(2)
                data = await self.reader.readexactly(int.from_bytes(header, "big"))
                self._dispatch(dso.parse(data))
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ssl.SSLError):
            self.error = "DNS Push server closed the connection"
        except dso.DsoError as exc:
            self.error = f"DNS Push server sent a malformed message: {exc}"
        except asyncio.CancelledError:
            self.error = "DNS Push connection closed"
            raise
        finally:
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(PushError(self.error or "closed"))
            for sub in self.subs.values():
                sub.queue.put_nowait(None)

    def _dispatch(self, msg: dso.DsoMessage) -> None:
        if msg.response:
            future = self.pending.get(msg.msg_id)
            if future is not None and not future.done():
                future.set_result(msg)
            return
        primary = msg.primary
        if primary is None:
            raise dso.DsoError("DSO message without a primary TLV")
        if primary.dtype == dso.DsoType.PUSH:
            for record in push.parse_push(primary):
                event = PushEvent(record.kind, record.name, record.rdtype, record.rdata,
                                  record.ttl if record.kind == "add" else 0)
                for sub in self.subs.values():
                    if sub.matches(record):
                        sub.queue.put_nowait(event)
        elif primary.dtype == dso.DsoType.KEEPALIVE and msg.msg_id == 0:
            with contextlib.suppress(dso.DsoError):
                self.server_keepalive = dso.Keepalive.from_tlv(primary)
        elif msg.msg_id != 0:
            self.writer.write(_frame(dso.response(msg, dso.DsoRcode.DSOTYPENI)))

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


def _frame(msg: dso.DsoMessage) -> bytes:
    data = msg.build()
    return len(data).to_bytes(2, "big") + data


async def watch_records(host: str, port: int, name: dns.name.Name | str, rdtype: int | str,
                        on_event: Callable[[PushEvent], Awaitable[None] | None], *,
                        stop: asyncio.Event, fingerprint: str | None = None) -> None:
    """Subscribe and call ``on_event`` for every change until ``stop`` is set."""
    conn = await PushConnection.connect(host, port, fingerprint=fingerprint)
    try:
        sub = await conn.subscribe(name, rdtype)
        stopper = asyncio.create_task(stop.wait())
        while not stop.is_set():
            getter = asyncio.create_task(sub.__anext__())
            done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                break
            result = on_event(getter.result())
            if result is not None:
                await result
        stopper.cancel()
    except StopAsyncIteration:
        pass
    finally:
        await conn.close()


# -- btmm-browse --watch over DNS Push ---------------------------------------------------------

async def find_push_server(client: DnsClient, domain: dns.name.Name) -> tuple[str, int] | None:
    """(address, port) from SRV ``_dns-push-tls._tcp.<domain>`` (RFC 8765 §6.1), or None.

    The SRV target is resolved through the same DNS server; if it has no address there,
    the DNS server's own address is used (btmm-serve serves both).
    """
    qname = dns.name.Name((b"_dns-push-tls", b"_tcp", *domain.labels))
    try:
        reply = await client.query(qname, dns.rdatatype.SRV)
    except DnssdError:
        return None
    srvs = [rd for rrset in reply.answer if rrset.rdtype == dns.rdatatype.SRV for rd in rrset]
    if not srvs:
        return None
    srv = min(srvs, key=lambda r: (r.priority, -r.weight))
    host = client.config.host
    for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        try:
            found = await client.query(srv.target, rdtype)
        except DnssdError:
            continue
        addresses = [rd.address for rrset in found.answer if rrset.rdtype == rdtype for rd in rrset]
        if addresses:
            host = addresses[0]
            break
    return host, int(srv.port)


async def watch_with_push(client: DnsClient, domain: dns.name.Name, types: list[str],
                          browse_once: BrowseOnce, emit: Callable[[str, Service], None], *,
                          stop: asyncio.Event, report: Callable[[list[Problem]], None] | None = None,
                          explain: Callable[[str], None] | None = None,
                          settle: float = 0.02) -> bool:
    """``--watch`` driven by DNS Push: False at once when the server offers no DNS Push (or
    the session cannot be set up, or is lost later), so the caller polls instead.

    Subscribes to the PTR RRset of each service type and to every name a found service
    depends on (the instance's SRV/TXT, the target host's addresses); any PUSH triggers one
    re-browse (after ``settle`` seconds, to batch an UPDATE's records) whose differences are
    emitted exactly like the polling watcher's.
    """
    say = explain or (lambda _msg: None)
    target = await find_push_server(client, domain)
    if target is None:
        say("no _dns-push-tls._tcp SRV record: polling")
        return False
    try:
        conn = await PushConnection.connect(target[0], target[1])
    except PushError as exc:
        say(f"DNS Push server {target[0]}:{target[1]} unusable ({exc}): polling")
        return False
    say(f"DNS Push session with {target[0]}:{target[1]}")
    changed = asyncio.Event()
    pumps: list[asyncio.Task[None]] = []
    watched: set[tuple[dns.name.Name, int]] = set()

    async def pump(sub: Subscription) -> None:
        with contextlib.suppress(PushError):
            async for _event in sub:
                changed.set()
        changed.set()  # the session ended: wake the loop so it notices

    async def watch_name(name: dns.name.Name, rdtype: int) -> None:
        if (name, rdtype) not in watched:
            watched.add((name, rdtype))
            pumps.append(asyncio.create_task(pump(await conn.subscribe(name, rdtype))))

    state = WatchState()
    reported: set[tuple[str, str]] = set()
    try:
        for service_type in types:
            await watch_name(dns.name.from_text(service_type, domain), dns.rdatatype.PTR)
        while not stop.is_set():
            changed.clear()
            services, problems = await browse_once()
            fresh = [p for p in problems if (p.name, p.message) not in reported]
            reported.update((p.name, p.message) for p in problems)
            if report is not None and fresh:
                report(fresh)
            for event, svc in state.update(services):
                emit(event, svc)
            for svc in services:
                await watch_name(svc.name, dns.rdatatype.ANY)
                with contextlib.suppress(dns.exception.DNSException):
                    await watch_name(dns.name.from_text(svc.host), dns.rdatatype.ANY)
            if conn.error is not None:
                raise PushError(conn.error)
            waiter = asyncio.create_task(changed.wait())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
            if conn.error is not None:
                raise PushError(conn.error)
            if not stop.is_set():
                await asyncio.sleep(settle)
        return True
    except PushError as exc:
        say(f"DNS Push session lost ({exc}): polling")
        return False
    finally:
        for task in pumps:
            task.cancel()
        await conn.close()
