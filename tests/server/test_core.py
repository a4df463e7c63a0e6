"""In-process ServerCore: RFC 2136 update semantics, leases and pushes without sockets."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.update
import pytest

from dnssd_wa import push
from dnssd_wa.server.core import Config, ServerCore
from dnssd_wa.server.keys import KeyEntry, KeyFileError, parse_key_file
from dnssd_wa.server.store import Store

ZONE = dns.name.from_text("bob.members.example.")
KEY = dns.tsig.Key("btmm-bob.members.example.", b"s" * 32, dns.tsig.HMAC_SHA256)
LEASE = dns.edns.OptionType.make(2)


@pytest.fixture
def core(tmp_path: Path) -> Iterator[ServerCore]:
    store = Store(tmp_path / "core.db")
    yield ServerCore(store, [ZONE], [KeyEntry(KEY, ZONE)], Config(lease_min=10, lease_max=100, rate=0),
                     time.time())
    store.close()


def send(core: ServerCore, msg: dns.message.Message, now: float | None = None) -> dns.message.Message:
    out = core.handle(msg.to_wire(), "tcp", time.time() if now is None else now)
    assert out is not None
    return dns.message.from_wire(out, keyring=False)


def update(lease: bytes | None = None) -> dns.update.UpdateMessage:
    up = dns.update.UpdateMessage(ZONE, keyring=KEY)
    if lease is not None:
        up.use_edns(0, options=[dns.edns.GenericOption(LEASE, lease)])
    return up


def answers(core: ServerCore, name: str, rdtype: str) -> list[str]:
    reply = send(core, dns.message.make_query(name, rdtype))
    return sorted(rd.to_text() for rrset in reply.answer for rd in rrset)


def serial(core: ServerCore) -> int:
    return core.zones[ZONE].serial


def test_update_is_processed_in_order(core: ServerCore) -> None:
    up = update()
    up.add("a.bob.members.example.", 60, "TXT", '"one"')
    up.add("a.bob.members.example.", 60, "TXT", '"two"')
    up.delete("a.bob.members.example.", "TXT", '"one"')
    up.delete("a.bob.members.example.")
    up.add("a.bob.members.example.", 60, "TXT", '"three"')
    assert send(core, up).rcode() == dns.rcode.NOERROR
    assert answers(core, "a.bob.members.example.", "TXT") == ['"three"']


def test_serial_ttl_and_refresh(core: ServerCore) -> None:
    start = serial(core)
    up = update(struct.pack("!I", 50))
    up.add("r.bob.members.example.", 60, "A", "192.0.2.1")
    assert send(core, up).rcode() == dns.rcode.NOERROR
    assert serial(core) == start + 1
    refresh = update(struct.pack("!I", 50))
    refresh.add("r.bob.members.example.", 60, "A", "192.0.2.1")
    reply = send(core, refresh)
    assert reply.rcode() == dns.rcode.NOERROR and serial(core) == start + 1  # lease only
    retime = update()
    retime.add("r.bob.members.example.", 30, "A", "192.0.2.1")
    send(core, retime)
    assert serial(core) == start + 2  # a TTL change is a change
    assert core.next_expiry() is not None and core.expire(time.time() + 1000) == 0  # now permanent


def test_lease_forms_clamp_and_bad_length(core: ServerCore) -> None:
    for asked, granted in ((struct.pack("!I", 1), struct.pack("!I", 10)),
                           (struct.pack("!II", 500, 5), struct.pack("!II", 100, 100))):
        up = update(asked)
        up.add("l.bob.members.example.", 60, "A", "192.0.2.2")
        reply = send(core, up)
        assert [o.to_wire() for o in reply.options if o.otype == 2] == [granted]
    bad = update(b"\x00\x01")
    bad.add("l2.bob.members.example.", 60, "A", "192.0.2.3")
    assert send(core, bad).rcode() == dns.rcode.FORMERR
    assert answers(core, "l2.bob.members.example.", "A") == []


def test_expiry_removes_and_pushes(core: ServerCore) -> None:
    pushed: list[push.PushRecord] = []
    rcode, _sub, current = core.subscribe(dns.name.from_text("e.bob.members.example."), dns.rdatatype.ANY,
                                          pushed.extend)
    assert rcode == dns.rcode.NOERROR and current == []
    now = time.time()
    up = update(struct.pack("!I", 10))
    up.add("e.bob.members.example.", 60, "AAAA", "fd00::e")
    send(core, up, now)
    assert [p.kind for p in pushed] == ["add"]
    assert core.expire(now + 9) == 0
    assert core.expire(now + 10.5) == 1
    assert [p.kind for p in pushed] == ["add", "remove"] and pushed[1].rdata is not None
    assert answers(core, "e.bob.members.example.", "AAAA") == []


def test_case_preserved_and_case_insensitive_identity(core: ServerCore) -> None:
    up = update()
    instance = "Bob\\226\\128\\153s\\032iMac._ssh._tcp.bob.members.example."
    up.add(instance, 60, "SRV", "0 0 22 IMac.bob.members.example.")
    up.add("_ssh._tcp.bob.members.example.", 60, "PTR", instance)
    send(core, up)
    again = update()  # same records, other case: an identical RR (RFC 2136 §1.1.1), no duplicate
    shouted = "BOB\\226\\128\\153S\\032IMAC._SSH._TCP.bob.members.example."
    again.add("_ssh._tcp.bob.members.example.", 60, "PTR", shouted)
    send(core, again)
    assert answers(core, "_ssh._tcp.bob.members.example.", "PTR") == [instance]
    assert answers(core, "bob\\226\\128\\153s\\032imac._ssh._tcp.bob.members.example.", "SRV") == [
        "0 0 22 IMac.bob.members.example."]


def test_key_file_parsing() -> None:
    text = ('# comment\nkey "a.example." {\n algorithm hmac-sha256;\n secret "c2VjcmV0c2VjcmV0";\n};\n'
            'key b { algorithm HMAC-SHA512; secret "c2VjcmV0"; };')
    keys = parse_key_file(text, "test")
    assert [k.name.to_text() for k in keys] == ["a.example.", "b."]
    assert keys[1].algorithm == dns.tsig.HMAC_SHA512
    for text in ('key "x" { algorithm hmac-md5; secret "AAAA"; };', 'key "x" { secret "AAAA"; };',
                 'key "x" { algorithm hmac-sha256; secret "!!!"; };', "nothing"):
        with pytest.raises(KeyFileError):
            parse_key_file(text, "test")
