"""DNS Push (RFC 8765 over DSO, RFC 8490) against the real btmm-serve, with our client driver."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import dns.edns
import dns.rdatatype
import dns.update
import pytest

from dnssd_wa import dso
from dnssd_wa.push_client import PushConnection, PushError, PushEvent, Subscription
from tests.server.serve_proc import ServeProc, account_key, rcode

BOB = "bob.members.example."
LEASE = dns.edns.OptionType.make(2)


def run(coro_fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), 30))


async def next_event(sub: Subscription, timeout: float = 5.0) -> PushEvent:
    return await asyncio.wait_for(sub.__anext__(), timeout)


def update(server: ServeProc, account: Path, build: Callable[[dns.update.UpdateMessage], None],
           lease: int | None = None) -> None:
    up = dns.update.UpdateMessage(BOB, keyring=account_key(account))
    if lease is not None:
        up.use_edns(0, options=[dns.edns.GenericOption(LEASE, struct.pack("!I", lease))])
    build(up)
    assert rcode(server.send(up)) == "NOERROR"


def test_subscriber_sees_add_and_remove_from_update(server: ServeProc, account: Path) -> None:
    async def body() -> None:
        conn = await PushConnection.connect("127.0.0.1", server.tls_port,
                                            fingerprint=server.ready["fingerprint"])
        assert conn.server_keepalive is not None
        sub = await conn.subscribe(f"_ipp._tcp.{BOB}", "PTR")
        instance = f"Printer\\032One._ipp._tcp.{BOB}"
        t0 = time.monotonic()
        await asyncio.to_thread(update, server, account,
                                lambda up: up.add(f"_ipp._tcp.{BOB}", 120, "PTR", instance))
        event = await next_event(sub)
        assert (time.monotonic() - t0) < 5
        assert event.kind == "add" and event.rdtype == dns.rdatatype.PTR and event.ttl == 120
        assert event.rdata is not None and event.rdata.to_text() == instance
        await asyncio.to_thread(update, server, account,
                                lambda up: up.delete(f"_ipp._tcp.{BOB}", "PTR", instance))
        event = await next_event(sub)
        assert event.kind == "remove" and event.rdata is not None and event.rdata.to_text() == instance
        await sub.unsubscribe()
        await asyncio.to_thread(update, server, account,
                                lambda up: up.add(f"_ipp._tcp.{BOB}", 120, "PTR", instance))
        assert sub.queue.qsize() <= 1  # only the end marker of the unsubscribed iterator
        await conn.close()

    run(body)


def test_initial_state_and_lease_expiry_pushed(server: ServeProc, account: Path) -> None:
    async def body() -> None:
        update(server, account, lambda up: up.add(f"host-a.{BOB}", 120, "AAAA", "fd00::a"))
        conn = await PushConnection.connect("127.0.0.1", server.tls_port)
        sub = await conn.subscribe(f"host-a.{BOB}", dns.rdatatype.ANY)
        first = await next_event(sub)
        assert first.kind == "add" and first.rdata is not None and first.rdata.to_text() == "fd00::a"
        await asyncio.to_thread(update, server, account,
                                lambda up: up.add(f"host-a.{BOB}", 60, "TXT", '"leased"'), 1)
        added = await next_event(sub)
        assert added.kind == "add" and added.rdtype == dns.rdatatype.TXT
        t0 = time.monotonic()
        removed = await next_event(sub, timeout=10)
        assert removed.kind == "remove" and removed.rdtype == dns.rdatatype.TXT
        assert time.monotonic() - t0 < 10
        await conn.close()

    run(body)


def test_subscribe_outside_zone_and_unknown_tlv(server: ServeProc) -> None:
    async def body() -> None:
        conn = await PushConnection.connect("127.0.0.1", server.tls_port)
        with pytest.raises(PushError, match="NOTAUTH"):
            await conn.subscribe("www.example.com.", "A")
        reply = await conn.request(dso.Tlv(0xF0F0, b"xyz"))
        assert reply.rcode == dso.DsoRcode.DSOTYPENI
        sub = await conn.subscribe(f"nobody.{BOB}", "A")  # still usable after the errors
        assert sub.queue.empty()
        await conn.close()

    run(body)


def test_malformed_dso_aborts_only_that_session(server: ServeProc) -> None:
    async def body() -> None:
        conn = await PushConnection.connect("127.0.0.1", server.tls_port)
        conn.writer.write(b"\x00\x0e" + dso.request(7).build()[:12] + b"\x00\x40")  # truncated TLV
        await asyncio.sleep(0.2)
        with pytest.raises(PushError):
            await conn.subscribe(f"x.{BOB}", "A", timeout=2)
        await conn.close()
        other = await PushConnection.connect("127.0.0.1", server.tls_port)
        await other.subscribe(f"x.{BOB}", "A")
        await other.close()

    run(body)
