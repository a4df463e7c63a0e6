"""The driver's fast paths: query wire templates and the callback-driven UDP batch.

A small fake server on loopback (replies built by dnspython) drops, truncates, garbles
or ignores questions so retransmission, TCP fallback and failures are exercised.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import Counter
from collections.abc import Callable

import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import dns.rrset

from dnssd_wa import driver, errors, names
from dnssd_wa.browse import Question

ZONE = names.domain_name("bob.members.example")
TYPES = (dns.rdatatype.PTR, dns.rdatatype.SRV, dns.rdatatype.TXT, dns.rdatatype.AAAA, dns.rdatatype.A)


def test_query_wire_is_dnspython_make_query_bytes() -> None:
    qnames = [ZONE, names.instance_name("Bob’s iMac. 1", "_rfb._tcp", ZONE), dns.name.root,
              names.host_name("h", ZONE)]
    for qname in qnames:
        for rdtype in TYPES:
            msg = driver._make_query(qname, rdtype)
            msg.id = 0xBEEF
            assert driver.query_wire(qname, rdtype, 0xBEEF) == msg.to_wire()


def _answer(wire: bytes) -> dns.message.Message:
    query = dns.message.from_wire(wire)
    reply = dns.message.make_response(query)
    q = query.question[0]
    if q.rdtype == dns.rdatatype.TXT:
        reply.answer.append(dns.rrset.from_text(q.name, 60, "IN", "TXT", f'"n={q.name.labels[0].decode()}"'))
    return reply


class FakeServer(asyncio.DatagramProtocol):
    """Answers on UDP per ``policy(query_wire, times_seen) -> reply bytes | None``; TCP answers all."""

    def __init__(self, policy: Callable[[bytes, int], bytes | None]) -> None:
        self.policy = policy
        self.seen: Counter[bytes] = Counter()  # question bytes (after the ID) -> datagrams received
        self.transport: asyncio.DatagramTransport | None = None
        self.tcp_questions = 0

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.seen[data[2:]] += 1
        reply = self.policy(data, self.seen[data[2:]])
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    async def tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                (n,) = struct.unpack("!H", await reader.readexactly(2))
                self.tcp_questions += 1
                out = _answer(await reader.readexactly(n)).to_wire()
                writer.write(struct.pack("!H", len(out)) + out)
        writer.close()


def run_batch(policy: Callable[[bytes, int], bytes | None], questions: list[Question], *,
              timeout: float = 2.0, window: int = 8) -> tuple[list[driver.Answer], FakeServer, int]:
    async def main() -> tuple[list[driver.Answer], FakeServer, int]:
        loop = asyncio.get_running_loop()
        server = FakeServer(policy)
        udp, _ = await loop.create_datagram_endpoint(lambda: server, local_addr=("127.0.0.1", 0))
        server.transport = udp
        port = udp.get_extra_info("sockname")[1]
        tcp = await asyncio.start_server(server.tcp, "127.0.0.1", port)
        try:
            async with driver.DnsClient(driver.ServerConfig("127.0.0.1", port, timeout=timeout)) as client:
                results = await client.query_many(questions, window)
                return results, server, client.queries
        finally:
            udp.close()
            tcp.close()
            await tcp.wait_closed()

    return asyncio.run(main())


def questions(n: int) -> list[Question]:
    return [Question(names.host_name(f"h{i}", ZONE), dns.rdatatype.TXT) for i in range(n)]


def number(q: Question | dns.message.Message) -> int:
    name = q.name if isinstance(q, Question) else q.question[0].name
    return int(name.labels[0][1:])


def test_batch_retransmits_truncates_to_tcp_and_keeps_order() -> None:
    def policy(wire: bytes, seen: int) -> bytes | None:
        i = number(dns.message.from_wire(wire))
        if seen == 1 and i % 2 == 0:  # every other name: first datagram lost
            return None
        reply = _answer(wire)
        if i % 3 == 0:  # every third: truncated over UDP
            reply.flags |= dns.flags.TC
            reply.answer.clear()
        return reply.to_wire()

    qs = questions(40)
    results, server, sent = run_batch(policy, qs, timeout=0.6)
    assert sent == 40
    for q, res in zip(qs, results, strict=True):
        assert isinstance(res, dns.message.Message), res
        assert res.question[0].name == q.name
        assert [r.to_text() for r in res.answer[0]] == [f'"n={q.name.labels[0].decode()}"']
    assert sorted(server.seen.values()) == sorted(2 if number(q) % 2 == 0 else 1 for q in qs)
    assert server.tcp_questions == sum(1 for q in qs if number(q) % 3 == 0)


def test_batch_timeout_after_three_sends_each() -> None:
    qs = questions(5)
    results, server, _ = run_batch(lambda wire, seen: None, qs, timeout=0.3, window=2)
    assert all(isinstance(r, errors.TransportFailed) and "did not answer" in r.message for r in results), \
        results
    assert sorted(server.seen.values()) == [3] * 5


def test_batch_bad_replies_fail_only_their_question() -> None:
    def policy(wire: bytes, seen: int) -> bytes | None:
        q = dns.message.from_wire(wire).question[0]
        if q.name.labels[0] == b"h1":
            return wire[:2] + b"\x81\x80" + b"\x00\x01" * 4 + b"garbage"  # right ID, not DNS
        if q.name.labels[0] == b"h2":  # answers a different question
            other = dns.message.make_query(names.host_name("zz", ZONE), dns.rdatatype.TXT)
            other.id = dns.message.from_wire(wire).id
            return dns.message.make_response(other).to_wire()
        return _answer(wire).to_wire()

    results = run_batch(policy, questions(4))[0]
    assert isinstance(results[0], dns.message.Message) and isinstance(results[3], dns.message.Message)
    assert isinstance(results[1], errors.DecodeError) and "malformed" in results[1].message
    assert isinstance(results[2], errors.DecodeError) and "does not answer" in results[2].message


def test_batch_closed_port_is_unreachable() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens: the kernel answers ICMP port unreachable

    async def main() -> list[driver.Answer]:
        async with driver.DnsClient(driver.ServerConfig("127.0.0.1", port, timeout=2.0)) as client:
            return await client.query_many(questions(6), 2)

    results = asyncio.run(main())
    assert all(isinstance(r, errors.TransportFailed) and "unreachable" in r.message for r in results), results
