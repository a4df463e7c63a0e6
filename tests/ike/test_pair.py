"""An in-memory initiator/responder pair through every exchange (fake clock, seeded RNG)."""

from __future__ import annotations

from typing import Any

import pytest

from ike_lite import Datagram, UsageError
from ike_lite import events as ev
from ike_lite.const import DhGroup, ExchangeType, Flag, NotifyType
from ike_lite.wire import Header, Notify, encode_payloads, parse_message

from .pair import B_INNER, Pair


def child_up(pair: Pair, side: str) -> list[ev.ChildSaUp]:
    return [e for e in pair.events[side] if isinstance(e, ev.ChildSaUp)]


def assert_keys_match(pair: Pair) -> None:
    """The newest CHILD SA on each side is the mirror image of the other's."""
    a, b = child_up(pair, "a")[-1].child, child_up(pair, "b")[-1].child
    assert (a.spi_in, a.spi_out, a.key_in, a.key_out) == (b.spi_out, b.spi_in, b.key_out, b.key_in)
    assert a.suite == b.suite and len(a.key_in) == 36


def established(**kw: Any) -> Pair:
    pair = Pair(**kw)
    pair.initiate()
    pair.pump()
    assert len(child_up(pair, "a")) == 1 and len(child_up(pair, "b")) == 1
    return pair


def test_setup_btmm_mode_and_contract() -> None:
    pair = established()
    assert_keys_match(pair)
    up = pair.of("a", ev.IkeSaUp)[0]
    assert isinstance(up, ev.IkeSaUp) and up.suite == "aes256gcm16-prfsha256-x25519"
    assert up.peer_id == "b.bob.members.example"
    data = child_up(pair, "a")[0].child.as_dict()
    assert data["inner"] == B_INNER and data["outer"] == "198.18.0.2:4500"
    assert set(data) == {"inner", "outer", "suite", "spi_in", "spi_out", "key_in", "key_out"}
    assert len(bytes.fromhex(data["key_in"])) == 36 and len(data["spi_in"]) == 8
    # Every datagram on 4500 carried the non-ESP marker.
    assert all(d.natt and d.data[:4] == b"\0\0\0\0" for _, d in pair.wire)


def test_setup_standard_500_then_float_to_4500() -> None:
    pair = Pair()
    pair.initiate(natt=False)
    pair.pump()
    kinds = [(name, d.natt) for name, d in pair.wire]
    assert kinds[:2] == [("a", False), ("b", False)]  # IKE_SA_INIT on 500, no marker
    assert all(natt for _, natt in kinds[2:])  # IKE_AUTH floated to 4500
    assert_keys_match(pair)
    assert child_up(pair, "b")[0].child.outer == ("198.18.0.1", 4500)


@pytest.mark.parametrize(
    ("encr", "group"), [("chacha20poly1305", DhGroup.ECP_256), ("aes256gcm16", DhGroup.MODP_2048)]
)
def test_other_suites(encr: str, group: DhGroup) -> None:
    pair = established(a_kw={"ike_encr": (encr,), "esp_encr": (encr,), "groups": (group,)})
    assert_keys_match(pair)
    assert child_up(pair, "a")[0].child.suite == encr


def test_invalid_ke_retry() -> None:
    # Initiator guesses 14 first; responder only allows 31 and answers INVALID_KE_PAYLOAD.
    pair = established(
        a_kw={"groups": (DhGroup.MODP_2048, DhGroup.CURVE25519)}, b_kw={"groups": (DhGroup.CURVE25519,)}
    )
    inits = [parse_message(d.data[4:]) for n, d in pair.wire if n == "a"][:2]
    assert all(m.header.exchange == 34 for m in inits)
    assert_keys_match(pair)
    up = pair.of("a", ev.IkeSaUp)[0]
    assert isinstance(up, ev.IkeSaUp) and up.suite.endswith("x25519")


def test_cookie_exchange() -> None:
    pair = established(b_kw={"cookie_threshold": 0})
    assert pair.b.stats["cookies_sent"] == 1
    first_reply = parse_message(pair.wire[1][1].data[4:])
    assert [type(p).__name__ for p in first_reply.payloads] == ["Notify"]
    assert_keys_match(pair)


def test_cookie_flood_without_cookies_creates_no_state() -> None:
    pair = Pair(b_kw={"cookie_threshold": 5})
    flood = Pair(seed=77)  # a second initiator whose packets we replay from many addresses
    for _ in range(50):
        flood.a.initiate(("198.18.0.2", 4500), None, B_INNER, flood.now)
    for i, d in enumerate(flood.a.datagrams_to_send(flood.now)):
        pair.b.receive_datagram(d.data, (f"198.18.1.{i % 250}", 4500 + i), pair.now)
    assert len(pair.b.sessions()) == 5  # threshold reached, then only cookies
    assert pair.b.stats["cookies_sent"] == 45
    pair.initiate()
    pair.pump()
    assert len(child_up(pair, "a")) == 1  # the legitimate initiator still gets in


def test_retransmission_with_dropped_packets() -> None:
    pair = Pair()
    dropped = {"n": 0}

    def drop(side: str, d: Datagram) -> bool:  # lose the first INIT request and first AUTH response
        if dropped["n"] < 1 and side == "a":
            dropped["n"] += 1
            return True
        if dropped["n"] == 1 and side == "b" and parse_message(d.data[4:]).header.exchange == 35:
            dropped["n"] += 1
            return True
        return False

    pair.drop = drop
    pair.initiate()
    pair.pump()
    assert not child_up(pair, "a")
    pair.advance(10)
    assert dropped["n"] == 2
    assert len(child_up(pair, "a")) == 1 and len(child_up(pair, "b")) == 1  # answered from cache
    assert_keys_match(pair)
    retrans = [e for e in pair.events["b"] if isinstance(e, ev.MessageLogged) and e.retransmission]
    assert retrans, "responder should have resent its cached IKE_AUTH response"


def test_timeout_when_peer_never_answers() -> None:
    pair = Pair()
    pair.drop = lambda side, d: True
    pair.initiate()
    pair.advance(120)
    downs = pair.of("a", ev.IkeSaDown)
    assert len(downs) == 1 and isinstance(downs[0], ev.IkeSaDown) and downs[0].reason == ev.TIMEOUT
    assert "no answer from 198.18.0.2:4500" in downs[0].message
    assert pair.a.sessions() == []


@pytest.mark.parametrize("side", ["a", "b"])
@pytest.mark.parametrize("pfs", [False, True])
def test_child_rekey_either_side(side: str, pfs: bool) -> None:
    pair = established()
    ep = pair.a if side == "a" else pair.b
    ep.rekey_child(ep.sessions()[0], pair.now, pfs=pfs)
    pair.pump()
    for s in "ab":
        ups = child_up(pair, s)
        assert len(ups) == 2 and ups[1].rekey_of == ups[0].child.spi_in
        downs = pair.of(s, ev.ChildSaDown)
        assert len(downs) == 1 and isinstance(downs[0], ev.ChildSaDown)
        assert downs[0].reason == ev.REKEYED and downs[0].spi_in == ups[0].child.spi_in
        # make-before-break: the new SA was announced before the old one went away; the rekey
        # responder sends on it only once the initiator's Delete shows the peer has it
        idx_up = pair.events[s].index(ups[1])
        assert pair.events[s].index(downs[0]) > idx_up
        outbound = pair.of(s, ev.ChildSaOutbound)
        if s == side:
            assert ups[1].outbound and not outbound
        else:
            assert not ups[1].outbound and len(outbound) == 1
            assert idx_up < pair.events[s].index(outbound[0]) < pair.events[s].index(downs[0])
    assert_keys_match(pair)
    assert child_up(pair, "a")[1].child.key_in != child_up(pair, "a")[0].child.key_in
    if pfs:
        kinds = [p for _, d in pair.wire for p in parse_message(d.data[4:]).payloads]
        assert kinds  # PFS exchange carried KE payloads (inside SK; checked via logs below)
        logged = [
            e
            for e in pair.events[side]
            if isinstance(e, ev.MessageLogged) and e.exchange == "CREATE_CHILD_SA" and e.direction == "out"
        ]
        assert "KE" in logged[0].payloads


@pytest.mark.parametrize("side", ["a", "b"])
def test_ike_rekey_either_side_then_child_rekey(side: str) -> None:
    pair = established()
    ep = pair.a if side == "a" else pair.b
    old_spis = (pair.of("a", ev.IkeSaUp)[0].spi_i, pair.of("a", ev.IkeSaUp)[0].spi_r)  # type: ignore[attr-defined]
    ep.rekey_ike(ep.sessions()[0], pair.now)
    pair.pump()
    for s in "ab":
        rekeyed = pair.of(s, ev.IkeSaRekeyed)
        assert len(rekeyed) == 1 and isinstance(rekeyed[0], ev.IkeSaRekeyed)
        assert (rekeyed[0].spi_i, rekeyed[0].spi_r) != old_spis
        assert not pair.of(s, ev.IkeSaDown) and not pair.of(s, ev.ChildSaDown)
    assert len(pair.a.sessions()) == 1 and len(pair.b.sessions()) == 1
    # The new IKE SA works: rekey the CHILD SA over it, from the other side.
    other = pair.b if side == "a" else pair.a
    other.rekey_child(other.sessions()[0], pair.now)
    pair.pump()
    assert len(child_up(pair, "a")) == 2
    assert_keys_match(pair)
    # and DPD still answered
    pair.a.close(pair.a.sessions()[0], pair.now)
    pair.pump()
    assert pair.a.sessions() == [] and pair.b.sessions() == []


@pytest.mark.parametrize("side", ["a", "b"])
def test_delete_child_either_side(side: str) -> None:
    pair = established()
    ep = pair.a if side == "a" else pair.b
    ep.delete_child(ep.sessions()[0], pair.now)
    pair.pump()
    for s in "ab":
        downs = pair.of(s, ev.ChildSaDown)
        assert len(downs) == 1 and isinstance(downs[0], ev.ChildSaDown)
        assert downs[0].reason == (ev.CLOSED if s == side else ev.DELETED_BY_PEER)


@pytest.mark.parametrize("side", ["a", "b"])
def test_delete_ike_either_side(side: str) -> None:
    pair = established()
    ep = pair.a if side == "a" else pair.b
    ep.close(ep.sessions()[0], pair.now)
    pair.pump()
    for s in "ab":
        downs = pair.of(s, ev.IkeSaDown)
        assert len(downs) == 1 and isinstance(downs[0], ev.IkeSaDown)
        assert downs[0].reason == (ev.CLOSED if s == side else ev.DELETED_BY_PEER)
        assert downs[0].established
        assert len(pair.of(s, ev.ChildSaDown)) == 1
    assert pair.a.sessions() == [] and pair.b.sessions() == []
    with pytest.raises(UsageError):
        pair.a.close(1, pair.now)


def test_dpd_keeps_alive_and_detects_dead_peer() -> None:
    pair = established(a_kw={"dpd_interval": 10.0, "retransmit_tries": 3})
    pair.advance(35)
    assert not pair.of("a", ev.IkeSaDown)
    probes = [
        e
        for e in pair.events["a"]
        if isinstance(e, ev.MessageLogged)
        and e.exchange == "INFORMATIONAL"
        and e.direction == "out"
        and not e.payloads
    ]
    assert len(probes) >= 3
    pair.drop = lambda side, d: True  # the peer vanishes
    pair.advance(60)
    downs = pair.of("a", ev.IkeSaDown)
    assert len(downs) == 1 and isinstance(downs[0], ev.IkeSaDown) and downs[0].reason == ev.DEAD_PEER
    assert len(pair.of("a", ev.ChildSaDown)) == 1


def test_wrong_psk_fails_on_both_sides() -> None:
    pair = Pair(b_kw={"psk": b"another account's psk"})
    pair.initiate()
    pair.pump()
    a_down, b_down = pair.of("a", ev.IkeSaDown), pair.of("b", ev.IkeSaDown)
    assert isinstance(a_down[0], ev.IkeSaDown) and a_down[0].reason == ev.AUTHENTICATION_FAILED
    assert "refused our PSK" in a_down[0].message and "different account files" in a_down[0].message
    assert isinstance(b_down[0], ev.IkeSaDown) and b_down[0].reason == ev.AUTHENTICATION_FAILED
    assert not child_up(pair, "a") and not child_up(pair, "b")
    assert pair.a.sessions() == [] and pair.b.sessions() == []


def test_no_common_ike_proposal() -> None:
    pair = Pair(a_kw={"ike_encr": ("chacha20poly1305",)}, b_kw={"ike_encr": ("aes256gcm16",)})
    pair.initiate()
    pair.pump()
    a_down, b_down = pair.of("a", ev.IkeSaDown), pair.of("b", ev.IkeSaDown)
    assert isinstance(a_down[0], ev.IkeSaDown) and a_down[0].reason == ev.NO_PROPOSAL_CHOSEN
    assert isinstance(b_down[0], ev.IkeSaDown) and b_down[0].reason == ev.NO_PROPOSAL_CHOSEN


def test_no_common_esp_proposal() -> None:
    pair = Pair(a_kw={"esp_encr": ("chacha20poly1305",)}, b_kw={"esp_encr": ("aes256gcm16",)})
    pair.initiate()
    pair.pump()
    a_down = pair.of("a", ev.IkeSaDown)
    assert isinstance(a_down[0], ev.IkeSaDown) and a_down[0].reason == ev.NO_PROPOSAL_CHOSEN
    failed = pair.of("b", ev.ChildSaFailed)
    assert isinstance(failed[0], ev.ChildSaFailed) and failed[0].reason == ev.NO_PROPOSAL_CHOSEN
    assert pair.a.sessions() == [] and pair.b.sessions() == []  # our Delete closed it on b too


def test_ts_unacceptable() -> None:
    pair = Pair(b_kw={"local_inner": "fd00:9::9"})  # b is not the ULA a wants to reach
    pair.initiate()
    pair.pump()
    a_down = pair.of("a", ev.IkeSaDown)
    assert isinstance(a_down[0], ev.IkeSaDown) and a_down[0].reason == ev.TS_UNACCEPTABLE


def test_identity_mismatch() -> None:
    pair = Pair(b_kw={"local_id": "someone.else.example"})
    pair.initiate()
    pair.pump()
    a_down = pair.of("a", ev.IkeSaDown)
    assert isinstance(a_down[0], ev.IkeSaDown) and a_down[0].reason == ev.AUTHENTICATION_FAILED
    assert "expected b.bob.members.example" in a_down[0].message


def test_responder_serves_many_initiators() -> None:
    pair = Pair()
    clients = [Pair(seed=100 + i, a_kw={"local_id": f"c{i}.bob.members.example"}) for i in range(5)]
    for i, c in enumerate(clients):
        addr = (f"198.18.2.{i + 1}", 4500)
        c.a.initiate(("198.18.0.2", 4500), None, B_INNER, pair.now)
        for _ in range(3):
            for d in c.a.datagrams_to_send(pair.now):
                pair.b.receive_datagram(d.data, addr, pair.now)
            for d in pair.b.datagrams_to_send(pair.now):
                target = next(cc for j, cc in enumerate(clients) if d.addr == (f"198.18.2.{j + 1}", 4500))
                target.a.receive_datagram(d.data, ("198.18.0.2", 4500), pair.now)
    downs = []
    while (e := pair.b.next_event()) is not None:
        downs.append(e)
    assert sum(isinstance(e, ev.ChildSaUp) for e in downs) == 5
    assert len(pair.b.sessions()) == 5


def test_keepalives_when_behind_nat() -> None:
    pair = established(a_kw={"keepalive_interval": 20.0})
    pair.advance(45)
    keepalives = [d for n, d in pair.wire if n == "a" and d.data == b"\xff"]
    assert len(keepalives) == 2


@pytest.mark.parametrize("kind", ["child", "ike"])
def test_simultaneous_rekeys_resolve(kind: str) -> None:
    """Both ends rekey at once: each answers TEMPORARY_FAILURE, retries after a random delay."""
    pair = established()
    for ep in (pair.a, pair.b):
        if kind == "child":
            ep.rekey_child(ep.sessions()[0], pair.now)
        else:
            ep.rekey_ike(ep.sessions()[0], pair.now)
    pair.pump()
    pair.advance(10)
    if kind == "child":
        assert len(child_up(pair, "a")) >= 2 and len(child_up(pair, "b")) >= 2
        assert_keys_match(pair)
        live_a = len(child_up(pair, "a")) - len(pair.of("a", ev.ChildSaDown))
        assert live_a == 1  # the superseded CHILD SAs were deleted
    else:
        assert pair.of("a", ev.IkeSaRekeyed) and pair.of("b", ev.IkeSaRekeyed)
    assert len(pair.a.sessions()) == 1 and len(pair.b.sessions()) == 1
    pair.a.rekey_child(pair.a.sessions()[0], pair.now)
    pair.pump()
    assert_keys_match(pair)


def test_init_with_unknown_critical_payload_is_answered() -> None:
    """RFC 7296 §2.5: an unknown payload with the critical bit gets UNSUPPORTED_CRITICAL_PAYLOAD."""
    pair = Pair()
    unknown = b"\x29\x80\x00\x08abcd"  # type 99 (set in the header), critical, next = Notify (41)
    tail = encode_payloads([Notify(NotifyType.INITIAL_CONTACT)])
    header = Header(b"I" * 8, bytes(8), 99, ExchangeType.IKE_SA_INIT, Flag.INITIATOR, 0)
    raw = header.encode(28 + len(unknown) + len(tail)) + unknown + tail
    pair.b.receive_datagram(b"\0\0\0\0" + raw, ("198.18.0.1", 4500), pair.now)
    (reply,) = pair.b.datagrams_to_send(pair.now)
    msg = parse_message(reply.data[4:])
    assert msg.header.is_response and msg.header.spi_i == b"I" * 8
    assert (
        msg.notifies()[0].type == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD
        and msg.notifies()[0].data == b"\x63"
    )
    assert pair.b.sessions() == []


def test_initial_contact_replaces_the_older_sa() -> None:
    """The initiator restarts (new keys, same identity): the responder drops the stale IKE SA."""
    pair = established()
    restarted = Pair(seed=42)  # a fresh "a" with the same identity and address
    pair.a = restarted.a
    pair.initiate()
    pair.pump()
    downs = [e for e in pair.of("b", ev.IkeSaDown) if isinstance(e, ev.IkeSaDown)]
    assert [(d.handle, d.reason) for d in downs] == [(1, ev.REPLACED)]
    assert len(pair.b.sessions()) == 1 and pair.b.sessions() != [1]
    assert len(child_up(pair, "b")) == 2


def test_rekey_responder_switches_outbound_after_grace_without_delete() -> None:
    pair = established()
    pair.drop = lambda side, d: side == "a" and parse_message(d.data[4:]).header.exchange == 37
    pair.a.rekey_child(1, pair.now)
    pair.pump()
    assert not pair.of("b", ev.ChildSaOutbound)
    pair.advance(6)  # a's Delete is lost; b switches anyway after the grace time
    assert len(pair.of("b", ev.ChildSaOutbound)) == 1


def test_every_datagram_duplicated_through_cookie_and_invalid_ke() -> None:
    """Late duplicates of COOKIE / INVALID_KE replies and of requests must not derail setup."""
    pair = Pair(
        a_kw={"groups": (DhGroup.MODP_2048, DhGroup.CURVE25519)},
        b_kw={"groups": (DhGroup.CURVE25519,), "cookie_threshold": 0},
    )
    pair.duplicate = True
    pair.initiate()
    pair.pump()
    assert len(child_up(pair, "a")) == 1 and len(child_up(pair, "b")) == 1
    assert_keys_match(pair)
    pair.a.rekey_child(1, pair.now)
    pair.pump()
    assert len(child_up(pair, "a")) == 2
    assert_keys_match(pair)
