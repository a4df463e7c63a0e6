"""The TCP/TLS protocol (DnsStream) with a fake transport: framing across segment
boundaries, pipelining, idle timeout, back-pressure; and the UPDATE log line written
after the answer when the core defers it."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.name
import dns.rcode
import dns.tsig
import pytest

from dnssd_wa.server.core import Config, ServerCore
from dnssd_wa.server.keys import KeyEntry
from dnssd_wa.server.net import DnsStream, Server
from dnssd_wa.server.store import Store
from tests.server.hosts import host_update

ZONE = "bob.members.example."
KEY = dns.tsig.Key("btmm-bob.members.example.", b"t" * 32, dns.tsig.HMAC_SHA256)


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = b""
        self.closed = False
        self.paused = False
        self.buffered = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += bytes(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5353) if name == "peername" else default


@pytest.fixture
def core(tmp_path: Path) -> Iterator[ServerCore]:
    store = Store(tmp_path / "stream.db", sync="normal")
    zone = dns.name.from_text(ZONE)
    yield ServerCore(store, [zone], [KeyEntry(KEY, zone)], Config(rate=0), time.time())
    store.close()


def replies(data: bytes) -> list[dns.message.Message]:
    out = []
    while data:
        (size,) = struct.unpack("!H", data[:2])
        out.append(dns.message.from_wire(data[2:2 + size], keyring=False))
        data = data[2 + size:]
    return out


def framed(wire: bytes) -> bytes:
    return struct.pack("!H", len(wire)) + wire


def run_stream(core: ServerCore, body: Callable[[DnsStream, FakeTransport], None]) -> None:
    async def main() -> None:
        stream = DnsStream(Server(core), "tcp")
        transport = FakeTransport()
        stream.connection_made(transport)
        body(stream, transport)
        stream.connection_lost(None)

    asyncio.run(main())


def test_framing_split_and_pipelined(core: ServerCore) -> None:
    query = framed(dns.message.make_query(ZONE, "SOA").to_wire())
    updates = b"".join(framed(host_update(ZONE, i, KEY).to_wire()) for i in range(3))
    stream_bytes = query + updates + query

    def body(stream: DnsStream, transport: FakeTransport) -> None:
        for i in range(len(stream_bytes)):  # one byte per segment
            stream.data_received(stream_bytes[i:i + 1])
        one = replies(transport.out)
        transport.out = b""
        stream.data_received(stream_bytes)  # everything in one segment
        two = replies(transport.out)
        assert [m.id for m in one] == [m.id for m in two]
        assert len(one) == 5
        assert [m.rcode() for m in one[1:4]] == [dns.rcode.NOERROR] * 3  # the second round refreshes
        assert stream.buffer == b""

    run_stream(core, body)


def test_idle_timeout_and_back_pressure(core: ServerCore) -> None:
    def body(stream: DnsStream, transport: FakeTransport) -> None:
        stream.last = time.monotonic()
        stream._check_idle()
        assert not transport.closed and stream.timer is not None
        stream.pause_writing()
        assert transport.paused
        stream.resume_writing()
        assert not transport.paused
        transport.buffered = 64 << 20  # a peer that stopped reading: dropped on the next answer
        stream.data_received(framed(dns.message.make_query(ZONE, "SOA").to_wire()))
        assert transport.closed and transport.out == b""
        transport.closed = False
        stream.last = time.monotonic() - 31
        stream._check_idle()
        assert transport.closed

    run_stream(core, body)


def test_update_log_line_after_the_answer(core: ServerCore) -> None:
    events: list[dict[str, Any]] = []
    later: list[Callable[[], None]] = []
    core.log = events.append
    core.log_later = later.append
    out = core.handle(host_update(ZONE, 1, KEY).to_wire(), "tcp", time.time(), "peer#1")
    assert out is not None and events == [] and len(later) == 1
    later[0]()
    assert events and events[0]["rcode"] == "NOERROR" and events[0]["client"] == "peer#1"
    assert events[0]["what"].startswith("add h1.bob.members.example. AAAA")
