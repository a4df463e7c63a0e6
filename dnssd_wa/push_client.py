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

import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from dnssd_wa import dso, push

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
