"""Unit tests of the sans-I/O dnssd_wa core: names, record set, UPDATE, TSIG, lease, plans, errors."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from typing import Any

import dns.edns
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.update
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnssd_wa import errors, names, records, update, watch
from dnssd_wa.browse import BrowsePlan, Problem, Question, Service, TunnelPlan
from dnssd_wa.driver import parse_hostport
from dnssd_wa.errors import BadName, DecodeError, Failure
from dnssd_wa.names import ServiceSpec

DOM = names.domain_name("bob.members.example")
KEY = update.TsigKey("btmm-bob.members.example", bytes(range(32)))
NOW = 1_764_000_000


# ---------------------------------------------------------------------------- names


@pytest.mark.parametrize("text", ["Bob’s iMac", "Bob's iMac", "Printer 2.0", "Ünïcödé ☃", "a"])
def test_instance_label_is_raw_utf8_never_punycode(text: str) -> None:
    name = names.instance_name(text, "_rfb._tcp", DOM)
    assert name.labels[0] == text.encode("utf-8")
    assert len(name.labels) == 1 + 2 + 3 + 1
    presentation = name.to_text()
    assert "xn--" not in presentation
    assert dns.name.from_text(presentation).labels[0] == text.encode()  # escapes round-trip
    assert names.instance_text(name) == text


def test_escaping_of_space_apostrophe_dot() -> None:
    assert (
        names.instance_name("Bob’s iMac", "_rfb._tcp", DOM)
        .to_text()
        .startswith("Bob\\226\\128\\153s\\032iMac.")
    )
    assert (
        names.instance_name("Printer 2.0", "_ipp._tcp", DOM).to_text().startswith("Printer\\0322\\.0._ipp.")
    )


def test_instance_label_limits() -> None:
    with pytest.raises(BadName, match="at most 63"):
        names.instance_label("’" * 22)  # 66 bytes
    assert len(names.instance_label("’" * 21)) == 63
    with pytest.raises(BadName):
        names.instance_label("")
    with pytest.raises(BadName):
        names.instance_label("tab\there")


def test_case_insensitive_comparison_keeps_stored_case() -> None:
    a = names.instance_name("Bob’s iMac", "_rfb._tcp", DOM)
    b = names.instance_name("bob’s imac", "_RFB._tcp", DOM)
    assert a == b and names.instance_text(a) != names.instance_text(b)
    assert names.split_instance(a, names.service_type_name("_rfb._tcp", DOM)) == "Bob’s iMac"
    assert names.split_instance(a, names.service_type_name("_ssh._tcp", DOM)) is None


def test_parse_service_spec() -> None:
    assert names.parse_service_spec("_rfb._tcp:5900") == ServiceSpec("_rfb._tcp", 5900, ())
    assert names.parse_service_spec("_ssh._tcp:22:u=bob,path=/a=b") == ServiceSpec(
        "_ssh._tcp", 22, (("u", "bob"), ("path", "/a=b"))
    )
    for bad in [
        "rfb._tcp:1",
        "_rfb._sctp:1",
        "_rfb._tcp",
        "_rfb._tcp:0",
        "_rfb._tcp:70000",
        "_rfb._tcp:x",
        "_rfb._tcp:1:=v",
        "_waytoolongservicename._tcp:1",
    ]:
        with pytest.raises(BadName):
            names.parse_service_spec(bad)


def test_txt_strings_and_dict() -> None:
    assert names.txt_strings(()) == [b""]
    assert names.txt_dict([b"a=1", b"A=2", b"flag", b"", b"b=x=y"]) == {"a": "1", "flag": "", "b": "x=y"}


def test_parse_hostport() -> None:
    assert parse_hostport("ns.example", 53) == ("ns.example", 53)
    assert parse_hostport("127.0.0.1:5300", 53) == ("127.0.0.1", 5300)
    assert parse_hostport("[::1]:853", 53) == ("::1", 853)
    assert parse_hostport("::1", 53) == ("::1", 53)
    with pytest.raises(BadName):
        parse_hostport("host:99999", 53)


# ---------------------------------------------------------------------------- record set


def spec(outer: bool = True, **kw: object) -> records.HostSpec:
    base: dict[str, object] = dict(
        domain="bob.members.example",
        host_label="bobs-imac",
        ula=ipaddress.IPv6Address("fd12:3456:789a:0:1:2:3:4"),
        instance="Bob’s iMac",
        services=(ServiceSpec("_rfb._tcp", 5900, (("u", "bob"),)), ServiceSpec("_ssh._tcp", 22)),
        outer=(ipaddress.IPv4Address("198.18.0.5"), 4501) if outer else None,
        autotunnel_label="AutoTunnel-02-1B-63-FF-FE-84-45-E6",
        model="iMac20,1",
        kerberos="LKDC:SHA1." + "A" * 40,
    )
    base.update(kw)
    return records.HostSpec(**base)  # type: ignore[arg-type]


def test_host_record_set_contents() -> None:
    rrs = records.host_records(spec())
    lines = records.record_lines(rrs)
    assert lines == [
        "bobs-imac.bob.members.example. 120 IN AAAA fd12:3456:789a:0:1:2:3:4",
        "Bob’s iMac._rfb._tcp.bob.members.example. 120 IN SRV 0 0 5900 bobs-imac.bob.members.example.",
        'Bob’s iMac._rfb._tcp.bob.members.example. 120 IN TXT "u=bob"',
        "Bob’s iMac._ssh._tcp.bob.members.example. 120 IN SRV 0 0 22 bobs-imac.bob.members.example.",
        'Bob’s iMac._ssh._tcp.bob.members.example. 120 IN TXT ""',
        "_autotunnel._udp.bobs-imac.bob.members.example. 120 IN SRV 0 0 4501 "
        "AutoTunnel-02-1B-63-FF-FE-84-45-E6.bob.members.example.",
        "AutoTunnel-02-1B-63-FF-FE-84-45-E6.bob.members.example. 120 IN A 198.18.0.5",
        'Bob’s iMac._device-info._tcp.bob.members.example. 120 IN TXT "model=iMac20,1"',
        f'_kerberos.bobs-imac.bob.members.example. 120 IN TXT "LKDC:SHA1.{"A" * 40}"',
        "_rfb._tcp.bob.members.example. 120 IN PTR Bob’s iMac._rfb._tcp.bob.members.example.",
        "_ssh._tcp.bob.members.example. 120 IN PTR Bob’s iMac._ssh._tcp.bob.members.example.",
        "_services._dns-sd._udp.bob.members.example. 4500 IN PTR _rfb._tcp.bob.members.example.",
        "_services._dns-sd._udp.bob.members.example. 4500 IN PTR _ssh._tcp.bob.members.example.",
        "b._dns-sd._udp.bob.members.example. 4500 IN PTR bob.members.example.",
        "lb._dns-sd._udp.bob.members.example. 4500 IN PTR bob.members.example.",
    ]
    assert [r.shared for r in rrs] == [False] * 9 + [True] * 6
    assert [r.removable for r in rrs if r.shared] == [True, True, False, False, False, False]


def test_record_set_without_outer_and_errors() -> None:
    rrs = records.host_records(spec(outer=False))
    assert not any(r.rdtype == dns.rdatatype.A for r in rrs)
    with pytest.raises(BadName, match="twice"):
        records.host_records(spec(services=(ServiceSpec("_rfb._tcp", 1), ServiceSpec("_rfb._tcp", 2))))
    with pytest.raises(BadName, match="not a ULA"):
        records.host_records(spec(ula=ipaddress.IPv6Address("2001:db8::1")))
    with pytest.raises(BadName, match="AutoTunnel"):
        records.host_records(spec(autotunnel_label=""))


# ---------------------------------------------------------------------------- UPDATE + TSIG


def _update_section(msg: dns.update.UpdateMessage) -> list[tuple[str, int, int, int]]:
    return [(r.name.to_text(), int(r.deleting or r.rdclass), int(r.rdtype), len(r)) for r in msg.update]


def test_register_update_deletes_then_adds_own_rrsets_only() -> None:
    rrs = records.host_records(spec())
    msg = update.register_update(DOM, rrs, update.Lease(7200))
    sec = _update_section(msg)
    deletes = [s for s in sec if s[1] == dns.rdataclass.ANY]
    adds = [s for s in sec if s[1] == dns.rdataclass.IN]
    own = [r for r in rrs if not r.shared]
    assert [(d[0], d[2]) for d in deletes] == [(r.name.to_text(), int(r.rdtype)) for r in own]
    assert all(d[2] != dns.rdatatype.ANY for d in deletes)  # never "delete all RRsets at a name"
    assert sec.index(deletes[-1]) < sec.index(adds[0])
    assert sum(a[3] for a in adds) == 15
    assert not any(d[2] == dns.rdatatype.PTR for d in deletes)  # shared PTRs: add only
    [opt] = [o for o in msg.options if o.otype == update.LEASE_OPTION]
    assert opt.to_wire() == b"\x00\x00\x1c\x20"


def test_remove_update_deletes_by_type_and_own_ptr_rdata() -> None:
    rrs = records.host_records(spec())
    msg = update.remove_update(DOM, rrs)
    sec = _update_section(msg)
    assert all(s[2] != dns.rdatatype.ANY for s in sec)
    ptr_deletes = [s for s in sec if s[2] == dns.rdatatype.PTR]
    assert {s[0] for s in ptr_deletes} == {"_rfb._tcp.bob.members.example.", "_ssh._tcp.bob.members.example."}
    assert all(s[1] == dns.rdataclass.NONE for s in ptr_deletes)  # delete this rdata only
    assert msg.opt is None


def test_sign_uses_given_time_and_verifies_with_dnspython() -> None:
    msg = update.register_update(DOM, records.host_records(spec()), None, msg_id=4242)
    signed = update.sign(msg, KEY, NOW)
    parsed = dns.message.from_wire(signed.wire, keyring=False)
    assert parsed.tsig is not None and parsed.tsig[0].time_signed == NOW and parsed.tsig[0].mac == signed.mac
    assert parsed.keyname == dns.name.from_text(KEY.name)
    # a correct key verifies (dnspython checks the MAC; time is checked against the real clock)
    now_signed = update.sign(msg, KEY, int(time.time()))
    dns.message.from_wire(now_signed.wire, keyring=KEY.dns_key())
    wrong = update.TsigKey(KEY.name, b"\x00" * 32).dns_key()
    with pytest.raises(dns.tsig.BadSignature):
        dns.message.from_wire(now_signed.wire, keyring=wrong)


def _reply_to(
    signed: update.SignedMessage,
    rcode: int = 0,
    tsig_error: int = 0,
    other: bytes = b"",
    lease: bytes | None = None,
    key: update.TsigKey | None = KEY,
) -> bytes:
    req = dns.message.from_wire(signed.wire, keyring=False)
    req.request_mac = signed.mac
    resp = dns.message.make_response(req)
    resp.set_rcode(dns.rcode.Rcode.make(rcode))
    if lease is not None:
        resp.use_edns(0, options=[dns.edns.GenericOption(dns.edns.OptionType.make(2), lease)])
    if key is not None:
        resp.use_tsig(key.dns_key(), tsig_error=tsig_error, other_data=other)
        resp.request_mac = signed.mac
    else:
        resp.tsig = None
    return resp.to_wire()


def test_parse_reply_verified_with_lease_echo() -> None:
    signed = update.sign(update.register_update(DOM, (), update.Lease(7200)), KEY, int(time.time()))
    reply = update.parse_reply(_reply_to(signed, lease=b"\x00\x00\x0e\x10"), signed)
    assert (reply.rcode, reply.tsig_error, reply.verified, reply.lease) == (0, 0, True, update.Lease(3600))
    reply = update.parse_reply(_reply_to(signed, lease=b"\x00\x00\x0e\x10\x00\x01\x51\x80"), signed)
    assert reply.lease == update.Lease(3600, 86400)
    reply = update.parse_reply(_reply_to(signed), signed)
    assert reply.lease is None


def test_parse_reply_tsig_errors() -> None:
    signed = update.sign(update.register_update(DOM, (), None), KEY, NOW)
    bad = update.parse_reply(_reply_to(signed, rcode=9, tsig_error=16), signed)
    assert (bad.rcode, bad.tsig_error, bad.verified) == (9, 16, False)
    skew = update.parse_reply(
        _reply_to(signed, rcode=9, tsig_error=18, other=(NOW + 3600).to_bytes(6, "big")), signed
    )
    assert (skew.tsig_error, skew.server_time) == (18, NOW + 3600)
    unsigned = update.parse_reply(_reply_to(signed, rcode=5, key=None), signed)
    assert (unsigned.rcode, unsigned.verified) == (5, False)


def test_parse_reply_rejects_wrong_id_and_short() -> None:
    signed = update.sign(update.register_update(DOM, (), None, msg_id=1), KEY, NOW)
    with pytest.raises(DecodeError):
        update.parse_reply(b"\x00\x01", signed)
    with pytest.raises(DecodeError, match="ID"):
        update.parse_reply(b"\x00\x02" + bytes(10), signed)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_parse_reply_only_decode_error(data: bytes) -> None:
    signed = update.sign(update.register_update(DOM, (), None, msg_id=7), KEY, NOW)
    wire = b"\x00\x07" + data
    try:
        update.parse_reply(wire, signed)
    except DecodeError:
        pass


def test_lease_option_forms() -> None:
    assert update.Lease(7200).build() == b"\x00\x00\x1c\x20"
    assert update.Lease(7200, 604800).build() == b"\x00\x00\x1c\x20\x00\x09\x3a\x80"
    assert update.Lease.parse(b"\x00\x00\x1c\x20") == update.Lease(7200)
    assert update.Lease.parse(b"\x00\x00\x1c\x20\x00\x09\x3a\x80") == update.Lease(7200, 604800)
    for n in (0, 3, 5, 7, 9, 12):
        with pytest.raises(DecodeError):
            update.Lease.parse(bytes(n))


@given(st.integers(0, 2**32 - 1), st.none() | st.integers(0, 2**32 - 1))
@settings(max_examples=100)
def test_lease_round_trip(lease: int, key_lease: int | None) -> None:
    value = update.Lease(lease, key_lease)
    assert update.Lease.parse(value.build()) == value


def test_refresh_schedule_with_fake_clock() -> None:
    r = update.LeaseRefresh()
    assert r.registered(1000.0, 7200, 0.0) == 1000.0 + 5760.0
    assert not r.due(6759.9) and r.due(6760.0)
    top = r.registered(1000.0, 7200, 0.999999)
    assert top is not None and 1000 + 5760 < top < 1000 + 7200 * 0.85
    assert r.registered(50.0, None, 0.5) is None and r.get_timer() is None and not r.due(1e12)
    with pytest.raises(ValueError):
        r.registered(0.0, 7200, 1.0)


# ---------------------------------------------------------------------------- error mapping


def _explain(rcode: int, tsig: int = 0, **kw: Any) -> errors.UpdateFailed:
    return errors.explain_update(
        rcode, tsig, zone="bob.members.example", server="ns:53 (udp)", key_name="k", **kw
    )


def test_error_mapping_one_clear_message_each() -> None:
    cases = [
        (_explain(9, 16), Failure.BADSIG, "secret differs"),
        (_explain(9, 17), Failure.BADKEY, "does not know that key"),
        (_explain(10), Failure.NOTZONE, "outside zone bob.members.example"),
        (_explain(9), Failure.NOTAUTH, "not authoritative"),
        (_explain(5), Failure.REFUSED, "by policy"),
        (_explain(7), Failure.YXRRSET, "nothing was applied"),
        (_explain(2), Failure.SERVFAIL, "update queue is full"),
        (
            _explain(2, largest_rrset=("_rfb._tcp.bob.members.example. PTR", 101)),
            Failure.SERVFAIL_RRSET_LIMIT,
            "would hold 101 records",
        ),
        (_explain(2, largest_rrset=("x PTR", 100)), Failure.SERVFAIL, "update queue"),
        (_explain(1), Failure.FORMERR, "FORMERR"),
    ]
    for failure, kind, text in cases:
        assert failure.kind is kind and text in failure.message, failure.message
        assert "\n" not in failure.message
    skew = _explain(9, 18, client_time=NOW, server_time=NOW + 3600)
    assert skew.kind is Failure.BADTIME
    assert "2025-11-24 17:00:00 UTC" in skew.message and "skew -3600 s" in skew.message
    assert Failure.BADSIG.user_fixable and not Failure.SERVFAIL.user_fixable
    assert not Failure.UNREACHABLE.user_fixable and Failure.TLS_MISMATCH.user_fixable
    assert "unreachable" in errors.unreachable("x:53", "refused", 3).message


# ---------------------------------------------------------------------------- plans


def _reply(
    q: Question, *rrsets: dns.rrset.RRset, rcode: int = 0, additional: tuple[dns.rrset.RRset, ...] = ()
) -> dns.message.Message:
    msg = dns.message.make_response(dns.message.make_query(q.name, q.rdtype))
    msg.set_rcode(dns.rcode.Rcode.make(rcode))
    msg.answer.extend(rrsets)
    msg.additional.extend(additional)
    return msg


def _rr(name: dns.name.Name, rdtype: str, *texts: str, ttl: int = 120) -> dns.rrset.RRset:
    return dns.rrset.from_text(name, ttl, "IN", rdtype, *texts)


def test_browse_plan_chain_and_pointing_nowhere() -> None:
    plan = BrowsePlan(DOM, ["_rfb._tcp"])
    [ptr_q] = plan.questions()
    assert ptr_q == Question(names.service_type_name("_rfb._tcp", DOM), dns.rdatatype.PTR)
    real = names.instance_name("Bob’s iMac", "_rfb._tcp", DOM)
    ghost = names.instance_name("Ghost", "_rfb._tcp", DOM)
    outside = names.instance_name("Elsewhere", "_ssh._tcp", DOM)
    plan.answer(
        ptr_q, _reply(ptr_q, _rr(ptr_q.name, "PTR", real.to_text(), ghost.to_text(), outside.to_text()))
    )
    qs = plan.questions()
    assert {(q.name, q.rdtype) for q in qs} == {(real, 33), (real, 16), (ghost, 33), (ghost, 16)}
    host = names.host_name("bobs-imac", DOM)
    for q in qs:
        if q.name == real and q.rdtype == dns.rdatatype.SRV:
            plan.answer(q, _reply(q, _rr(real, "SRV", f"0 0 5900 {host}", ttl=60)))
        elif q.name == real:
            plan.answer(q, _reply(q, _rr(real, "TXT", '"u=bob"')))
        else:
            plan.answer(q, _reply(q, rcode=dns.rcode.NXDOMAIN))
    [aaaa_q] = plan.questions()
    assert aaaa_q == Question(host, dns.rdatatype.AAAA)
    plan.answer(aaaa_q, _reply(aaaa_q, _rr(host, "AAAA", "fd00::1")))
    assert plan.questions() == []
    [svc] = plan.services()
    assert (svc.instance, svc.port, svc.txt, svc.addresses, svc.ttl, svc.host) == (
        "Bob’s iMac",
        5900,
        {"u": "bob"},
        ("fd00::1",),
        60,
        "bobs-imac.bob.members.example",
    )
    messages = " | ".join(p.message for p in plan.problems)
    assert "pointing nowhere" in messages and "not an instance of that service type" in messages


def test_browse_plan_uses_additional_section() -> None:
    plan = BrowsePlan(DOM, ["_ssh._tcp"])
    [q] = plan.questions()
    inst = names.instance_name("Box", "_ssh._tcp", DOM)
    host = names.host_name("box", DOM)
    plan.answer(
        q,
        _reply(
            q,
            _rr(q.name, "PTR", inst.to_text()),
            additional=(
                _rr(inst, "SRV", f"0 0 22 {host}"),
                _rr(inst, "TXT", '""'),
                _rr(host, "AAAA", "fd00::2"),
            ),
        ),
    )
    assert plan.questions() == []
    [svc] = plan.services()
    assert svc.addresses == ("fd00::2",) and svc.txt == {}


def test_tunnel_plan() -> None:
    host = names.host_name("bobs-imac", DOM)
    plan = TunnelPlan(host)
    qs = plan.questions()
    assert [q.rdtype for q in qs] == [dns.rdatatype.AAAA, dns.rdatatype.SRV]
    target = names.child([b"AutoTunnel-01-02-03-04-05-06-07-08"], DOM)
    plan.answer(qs[0], _reply(qs[0], _rr(host, "AAAA", "fd00::5")))
    plan.answer(qs[1], _reply(qs[1], _rr(qs[1].name, "SRV", f"0 0 4501 {target}")))
    [a_q] = plan.questions()
    plan.answer(a_q, _reply(a_q, _rr(target, "A", "198.18.0.5")))
    ep = plan.endpoint()
    assert (ep.inner, ep.outer_address, ep.outer_port, ep.ike_id) == (
        "fd00::5",
        "198.18.0.5",
        4501,
        "bobs-imac.bob.members.example",
    )
    empty = TunnelPlan(host)
    for q in empty.questions():
        empty.answer(q, _reply(q, rcode=dns.rcode.NXDOMAIN))
    assert empty.endpoint().outer_address is None and len(empty.problems) == 2
    assert "no outer endpoint" in empty.problems[1].message


# ---------------------------------------------------------------------------- watch


def _svc(instance: str, port: int = 1, ttl: int = 120) -> Service:
    return Service(instance, "_rfb._tcp", "d", "h", port, {}, (), ttl, DOM)


def test_watch_state_events() -> None:
    s = watch.WatchState()
    assert [(e, x.instance) for e, x in s.update([_svc("A"), _svc("B")])] == [("added", "A"), ("added", "B")]
    assert s.update([_svc("a"), _svc("B")]) == []  # case-insensitive identity
    ev = s.update([_svc("B", port=2)])
    assert [(e, x.instance, x.port) for e, x in ev] == [
        ("removed", "a", 1),
        ("removed", "B", 1),
        ("added", "B", 2),
    ]
    assert watch.next_interval([_svc("x", ttl=120), _svc("y", ttl=10)], 1.0, 60.0) == 5.0
    assert watch.next_interval([], 1.0, 60.0) == 60.0
    assert watch.next_interval([_svc("x", ttl=1)], 1.0, 60.0) == 1.0


def test_watch_poll_with_fake_browse_and_sleep() -> None:
    rounds = [[_svc("A", ttl=20)], [_svc("A", ttl=20), _svc("B", ttl=20)], [_svc("B", ttl=20)]]
    slept: list[float] = []
    events: list[tuple[str, str]] = []

    async def browse_once() -> tuple[list[Service], list[Problem]]:
        return rounds.pop(0), []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    done = asyncio.run(
        watch.watch_poll(
            browse_once,
            lambda e, s: events.append((e, s.instance)),
            sleep,
            stop=lambda: not rounds,
            min_interval=1.0,
            max_interval=60.0,
        )
    )
    assert done == 3
    assert events == [("added", "A"), ("added", "B"), ("removed", "A")]
    assert slept == [10.0, 10.0]
