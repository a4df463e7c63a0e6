"""Malformed input: the server core answers FORMERR or drops, never raises; DSO codecs raise
only DsoError; a live server keeps answering after garbage on UDP, TCP and TLS."""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.message
import dns.name
import dns.rcode
import dns.tsig
import dns.update
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnssd_wa import dso, push
from dnssd_wa.server.core import Config, ServerCore
from dnssd_wa.server.keys import KeyEntry
from dnssd_wa.server.net import DsoSession
from dnssd_wa.server.store import Store
from tests.server.serve_proc import ServeProc, rcode

ZONE = dns.name.from_text("bob.members.example.")
KEY = dns.tsig.Key("btmm-bob.members.example.", b"k" * 32, dns.tsig.HMAC_SHA256)
SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerCore]:
    store = Store(tmp_path_factory.mktemp("fuzz") / "fuzz.db", sync="normal")
    yield ServerCore(store, [ZONE], [KeyEntry(KEY, ZONE)], Config(lease_min=1, rate=0), time.time())
    store.close()


def valid_messages() -> list[bytes]:
    query = dns.message.make_query("host.bob.members.example.", "AAAA", use_edns=0)
    up = dns.update.UpdateMessage(ZONE, keyring=KEY)
    up.use_edns(0, options=[dns.edns.GenericOption(dns.edns.OptionType.make(2), struct.pack("!I", 60))])
    up.present("host.bob.members.example.", "AAAA")
    up.add("Fuzz._ssh._tcp.bob.members.example.", 60, "SRV", "0 0 22 host.bob.members.example.")
    up.delete("gone.bob.members.example.")
    return [query.to_wire(), up.to_wire()]


def check(core: ServerCore, wire: bytes, transport: str = "udp") -> dns.message.Message | None:
    out = core.handle(wire, transport, time.time(), "fuzz")
    if out is None:
        return None
    return dns.message.from_wire(out, keyring=False)


def test_every_truncation_is_formerr_or_dropped(core: ServerCore) -> None:
    for wire in valid_messages():
        for cut in range(len(wire)):
            reply = check(core, wire[:cut])
            if cut < 12:
                assert reply is None
            else:
                assert reply is not None and reply.rcode() == dns.rcode.FORMERR, cut
        assert check(core, wire) is not None


@SETTINGS
@given(st.binary(max_size=700))
def test_random_bytes_never_crash(core: ServerCore, data: bytes) -> None:
    for transport in ("udp", "tcp"):
        reply = check(core, data, transport)
        if reply is not None and len(data) >= 12:
            assert reply.id == int.from_bytes(data[:2], "big")


@SETTINGS
@given(st.sampled_from([0, 1]), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6))
def test_mutated_messages_never_crash(core: ServerCore, which: int, flips: list[tuple[int, int]]) -> None:
    wire = bytearray(valid_messages()[which])
    for pos, value in flips:
        wire[pos % len(wire)] = value
    check(core, bytes(wire))


@SETTINGS
@given(st.binary(max_size=300))
def test_dso_codecs_raise_only_dso_error(data: bytes) -> None:
    for parse in (dso.parse, lambda b: push.parse_push(dso.Tlv(dso.DsoType.PUSH, b)),
                  lambda b: push.Subscribe.from_tlv(dso.Tlv(dso.DsoType.SUBSCRIBE, b))):
        try:
            parse(data)
        except dso.DsoError:
            pass


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from([1, 0x40, 0x41, 0x42, 0x43, 7, 0xFFFF]), st.binary(max_size=40)),
                max_size=3), st.integers(0, 3), st.booleans())
def test_dso_session_never_crashes(core: ServerCore, tlvs: list[tuple[int, bytes]], msg_id: int,
                                   response: bool) -> None:
    sent: list[bytes] = []
    session = DsoSession(core, sent.append)
    msg = dso.DsoMessage(msg_id, response, 0, tuple(dso.Tlv(t, v) for t, v in tlvs))
    result = session.handle(msg.build())
    assert result in (True, False)
    for out in sent:
        dso.parse(out)
    session.close()


def test_live_server_survives_garbage(tmp_path: Path, account: Path) -> None:
    with ServeProc(tmp_path, account) as server:
        host, port = server.addr("udp")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            for payload in (b"", b"\x00", b"\xff" * 11, b"\x12\x34" + b"\x00" * 10 + b"\xff" * 50,
                            bytes(range(256)) * 2, b"\x80" * 512):
                udp.sendto(payload, (host, port))
        for payload in (b"\x00\x05hello", b"\xff\xff" + b"x" * 100, b"\x00\x02\x01"):
            with socket.create_connection((host, port), timeout=5) as tcp:
                tcp.sendall(payload)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", server.tls_port), timeout=5) as raw:
            raw.sendall(b"this is not TLS at all\r\n" * 10)
        with socket.create_connection(("127.0.0.1", server.tls_port), timeout=5) as raw, \
                ctx.wrap_socket(raw) as tls:
            tls.sendall(b"\x00\x10" + b"\x00\x01\x30\x00" + b"\x00" * 12)  # DSO with counts → abort
        assert rcode(server.query("bob.members.example.", "SOA")) == "NOERROR"
        assert rcode(server.query("bob.members.example.", "SOA", tcp=True)) == "NOERROR"
        assert server.proc is not None and server.proc.poll() is None
