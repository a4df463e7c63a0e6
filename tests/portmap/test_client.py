"""PortMapper on a fake clock: schedules, renewals, epochs, fallback and failures (no sockets)."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portmap.client import (
    Change,
    DatagramIgnored,
    EpochReset,
    Event,
    Failure,
    MappingDeleted,
    MappingFailed,
    MappingUpdated,
    Mode,
    PortMapper,
    Protocol,
    ProtocolFallback,
    State,
)
from portmap.epoch import EpochSample, natpmp_epoch_ok, pcp_epoch_ok
from portmap.errors import ClientError, EncodeError
from portmap.wire import (
    MapData,
    NatPmpExternalAddressRequest,
    NatPmpExternalAddressResponse,
    NatPmpHeaderResponse,
    NatPmpMapRequest,
    NatPmpMapResponse,
    PcpRequest,
    PcpResponse,
    decode_request,
    v4_mapped,
)

GW = IPv4Address("10.77.0.1")
FROM_GW = ("10.77.0.1", 5351)
NONCE = bytes(range(1, 13))
PUBLIC = IPv4Address("198.18.1.2")
# RFC 6886 §3.1: first send, then 250 ms doubling; 9 sends, the last wait is 64 s.
RFC_SENDS = [0.0, 0.25, 0.75, 1.75, 3.75, 7.75, 15.75, 31.75, 63.75]
RFC_GIVE_UP = 127.75


def make(mode: Mode = Mode.PCP, **kw: Any) -> PortMapper:
    return PortMapper(gateway=GW, client_address=IPv4Address("10.77.0.2"), internal_port=4500,
                      nonce=NONCE, mode=mode, **kw)


def sent(m: PortMapper, now: float) -> list[bytes]:
    out = []
    for data, addr in m.datagrams_to_send(now):
        assert addr == FROM_GW
        out.append(data)
    return out


def drain(m: PortMapper) -> list[Event]:
    events = []
    while (event := m.next_event()) is not None:
        events.append(event)
    return events


def run_until(m: PortMapper, end: float) -> list[tuple[float, bytes]]:
    """Advance the fake clock from timer to timer; the (time, datagram) sends up to ``end``."""
    log: list[tuple[float, bytes]] = []
    while (t := m.get_timer()) is not None and t <= end:
        m.handle_timer(t)
        log.extend((t, d) for d in sent(m, t))
    return log


def pcp_reply(request: bytes, *, result: int = 0, lifetime: int | None = None, epoch: int = 1000,
              external: IPv4Address = PUBLIC, eport: int | None = None, nonce: bytes | None = None) -> bytes:
    req = decode_request(request)
    assert isinstance(req, PcpRequest) and isinstance(req.data, MapData)
    body = MapData(nonce or req.data.nonce, req.data.protocol, req.data.internal_port,
                   req.data.external_port if eport is None else eport, v4_mapped(external))
    return PcpResponse(1, result, req.lifetime if lifetime is None else lifetime, epoch, body).encode()


def natpmp_map_reply(request: bytes, *, result: int = 0, epoch: int = 1000, eport: int | None = None,
                     lifetime: int | None = None) -> bytes:
    req = decode_request(request)
    assert isinstance(req, NatPmpMapRequest)
    return NatPmpMapResponse(req.opcode, result, epoch, req.internal_port,
                             req.suggested_external_port if eport is None else eport,
                             req.lifetime if lifetime is None else lifetime).encode()


def address_reply(epoch: int = 1000, address: IPv4Address = PUBLIC, result: int = 0) -> bytes:
    return NatPmpExternalAddressResponse(result, epoch, address).encode()


def map_pcp(m: PortMapper, now: float = 0.0, lifetime: int = 3600, epoch: int = 1000) -> MappingUpdated:
    m.start(now)
    [request] = sent(m, now)
    m.receive_datagram(pcp_reply(request, lifetime=lifetime, epoch=epoch), FROM_GW, now)
    [event] = drain(m)
    assert isinstance(event, MappingUpdated)
    return event


def map_natpmp(m: PortMapper, now: float = 0.0, epoch: int = 1000,
               eport: int | None = None) -> MappingUpdated:
    m.start(now)
    assert sent(m, now) == [NatPmpExternalAddressRequest().encode()]
    m.receive_datagram(address_reply(epoch), FROM_GW, now)
    [request] = sent(m, now)
    m.receive_datagram(natpmp_map_reply(request, epoch=epoch, eport=eport), FROM_GW, now)
    [event] = drain(m)
    assert isinstance(event, MappingUpdated)
    return event


# ---------------------------------------------------------------------- schedules


@pytest.mark.parametrize("mode", [Mode.NATPMP, Mode.PCP])
def test_retransmission_schedule_is_rfc6886(mode: Mode) -> None:
    m = make(mode)
    m.start(0.0)
    log = run_until(m, 1000.0)
    assert [t for t, _ in log] == RFC_SENDS
    assert len({d for _, d in log}) == 1  # the same request every time
    [failed] = drain(m)
    assert isinstance(failed, MappingFailed) and failed.failure is Failure.NO_RESPONSE and failed.fatal
    assert m.state is State.FAILED and m.get_timer() is None


def test_give_up_time_is_exact() -> None:
    m = make(Mode.NATPMP)
    m.start(0.0)
    run_until(m, RFC_GIVE_UP - 0.001)
    assert drain(m) == [] and m.get_timer() == RFC_GIVE_UP
    m.handle_timer(RFC_GIVE_UP)
    assert isinstance(drain(m)[0], MappingFailed)


def test_auto_without_any_reply_tries_pcp_then_natpmp() -> None:
    m = make(Mode.AUTO, max_attempts=4)
    m.start(10.0)
    log = run_until(m, 100.0)
    assert [t for t, _ in log] == [10.0, 10.25, 10.75, 11.75, 13.75, 14.0, 14.5, 15.5]
    assert {d[0] for _, d in log[:4]} == {2} and {d for _, d in log[4:]} == {b"\x00\x00"}
    events = drain(m)
    assert isinstance(events[0], ProtocolFallback) and isinstance(events[1], MappingFailed)
    assert events[1].protocol is Protocol.NATPMP and m.get_timer() is None


def test_pcp_renews_at_half_lifetime_with_the_same_nonce() -> None:
    m = make(Mode.PCP, lifetime=3600)
    first = map_pcp(m, now=100.0)
    assert first.change is Change.MAPPED and first.mapping.external_address == PUBLIC
    assert first.mapping.external_port == 4500 and first.mapping.lifetime == 3600
    assert m.get_timer() == 100.0 + 1800
    assert sent(m, 1899.0) == []
    m.handle_timer(1900.0)
    [renewal] = sent(m, 1900.0)
    req = decode_request(renewal)
    assert isinstance(req, PcpRequest) and isinstance(req.data, MapData)
    assert req.data.nonce == NONCE and req.lifetime == 3600
    assert req.data.external_port == 4500 and req.data.external_address == v4_mapped(PUBLIC)
    m.receive_datagram(pcp_reply(renewal, lifetime=120, epoch=2800), FROM_GW, 1900.5)
    [event] = drain(m)
    assert isinstance(event, MappingUpdated) and event.change is Change.RENEWED
    assert m.get_timer() == 1900.5 + 60  # half of the granted (clamped) lifetime


def test_renewal_retransmits_on_the_full_schedule() -> None:
    m = make(Mode.PCP, max_attempts=2, lifetime=100)
    map_pcp(m, now=0.0, lifetime=100)
    log = run_until(m, 50.0 + 63.75)
    assert [t for t, _ in log] == [50.0 + s for s in RFC_SENDS]


def test_natpmp_asks_address_then_map_and_reports_other_port() -> None:
    m = make(Mode.NATPMP, suggested_external_port=4500, lifetime=7200)
    event = map_natpmp(m, now=5.0, eport=14500)
    assert event.mapping.protocol is Protocol.NATPMP
    assert (event.mapping.external_address, event.mapping.external_port) == (PUBLIC, 14500)
    assert m.get_timer() == 5.0 + 3600
    m.handle_timer(3605.0)
    assert sent(m, 3605.0) == [b"\x00\x00"]
    m.receive_datagram(address_reply(4600), FROM_GW, 3605.0)
    [renewal] = sent(m, 3605.0)
    assert renewal == NatPmpMapRequest(1, 4500, 14500, 7200).encode()  # suggests what it holds


def test_delete_sends_lifetime_zero_and_confirms() -> None:
    m = make(Mode.PCP)
    map_pcp(m)
    m.delete(10.0)
    [request] = sent(m, 10.0)
    req = decode_request(request)
    assert isinstance(req, PcpRequest) and isinstance(req.data, MapData)
    assert (req.lifetime, req.data.nonce, req.data.external_port) == (0, NONCE, 0)
    m.receive_datagram(pcp_reply(request, result=8, lifetime=30, epoch=1010), FROM_GW, 10.0)
    [event] = drain(m)  # miniupnpd: NO_RESOURCES = already gone
    assert isinstance(event, MappingDeleted) and event.confirmed
    assert m.state is State.DELETED and m.get_timer() is None


def test_natpmp_delete_matches_rfc_3_4() -> None:
    m = make(Mode.NATPMP)
    map_natpmp(m)
    m.delete(1.0)
    [request] = sent(m, 1.0)
    assert request == NatPmpMapRequest(1, 4500, 0, 0).encode()
    m.receive_datagram(natpmp_map_reply(request, epoch=1001), FROM_GW, 1.0)
    [event] = drain(m)
    assert isinstance(event, MappingDeleted) and event.confirmed


def test_delete_without_reply_gives_up_after_three_tries() -> None:
    m = make(Mode.PCP)
    map_pcp(m)
    m.delete(20.0)
    log = run_until(m, 100.0)
    assert [t for t, _ in log] == [20.0, 20.25, 20.75]
    [event] = drain(m)
    assert isinstance(event, MappingDeleted) and not event.confirmed and m.get_timer() is None


def test_delete_before_anything_was_sent_is_silent() -> None:
    m = make()
    m.delete(0.0)
    assert m.state is State.DELETED and drain(m) == [] and sent(m, 0.0) == []


# ---------------------------------------------------------------------- epochs


def test_pcp_announce_with_epoch_reset_remaps_at_once() -> None:
    m = make(Mode.PCP)
    map_pcp(m, now=0.0, epoch=5000)
    announce = PcpResponse(0, 0, 0, 2).encode()
    m.receive_datagram(announce, FROM_GW, 30.0)
    [reset] = drain(m)
    assert isinstance(reset, EpochReset) and (reset.previous, reset.current) == (5000, 2)
    [request] = sent(m, 30.0)
    m.receive_datagram(pcp_reply(request, epoch=2), FROM_GW, 30.0)
    [event] = drain(m)
    assert isinstance(event, MappingUpdated) and event.change is Change.REMAPPED


def test_consistent_announcement_changes_nothing() -> None:
    m = make(Mode.PCP)
    map_pcp(m, now=0.0, epoch=5000)
    m.receive_datagram(PcpResponse(0, 0, 0, 5030).encode(), FROM_GW, 30.0)
    assert drain(m) == [] and sent(m, 30.0) == []


def test_natpmp_epoch_going_back_at_renewal_is_a_restart() -> None:
    m = make(Mode.NATPMP, lifetime=100)
    map_natpmp(m, now=0.0, epoch=9000)
    m.handle_timer(50.0)
    sent(m, 50.0)
    m.receive_datagram(address_reply(epoch=3), FROM_GW, 50.0)
    [reset] = drain(m)
    assert isinstance(reset, EpochReset) and reset.protocol is Protocol.NATPMP
    [request] = sent(m, 50.0)
    m.receive_datagram(natpmp_map_reply(request, epoch=3), FROM_GW, 50.0)
    [event] = drain(m)
    assert isinstance(event, MappingUpdated) and event.change is Change.REMAPPED


def test_natpmp_announcement_of_a_new_address() -> None:
    m = make(Mode.NATPMP)
    map_natpmp(m, now=0.0, epoch=1000)
    new = IPv4Address("198.18.9.9")
    m.receive_datagram(address_reply(epoch=1100, address=new), FROM_GW, 100.0)
    [event] = drain(m)
    assert isinstance(event, MappingUpdated) and event.change is Change.CHANGED
    assert event.mapping.external_address == new and m.mapping == event.mapping


def test_epoch_rules() -> None:
    seen = EpochSample(epoch=1000, at=50.0)
    assert natpmp_epoch_ok(seen, 1100, 150.0)
    assert not natpmp_epoch_ok(seen, 999, 51.0)  # went back
    assert not natpmp_epoch_ok(seen, 1010, 150.0)  # advanced 10 s in 100 s: restarted
    assert not natpmp_epoch_ok(seen, 1085, 150.0)  # needs >= 7/8 * 100 - 2 = 85.5
    assert natpmp_epoch_ok(seen, 1086, 150.0)
    assert pcp_epoch_ok(seen, 1100, 150.0)
    assert not pcp_epoch_ok(seen, 1010, 150.0)
    assert not pcp_epoch_ok(seen, 5000, 150.0)  # ran far ahead (RFC 6887 §8.5)


# ---------------------------------------------------------------------- fallback and failures


@pytest.mark.parametrize("reply", [
    NatPmpHeaderResponse(1, 1, 77).encode(),  # a NAT-PMP-only gateway (RFC 6886 §3.5)
    bytes.fromhex("008000030000000000000004000000000000000000000000"),  # miniupnpd's version-0 reply
    PcpResponse(1, 1, 0, 5, version=1).encode(),  # UNSUPP_VERSION from a PCP draft server
])
def test_auto_falls_back_to_natpmp(reply: bytes) -> None:
    m = make(Mode.AUTO)
    m.start(0.0)
    [request] = sent(m, 0.0)
    assert request[0] == 2
    m.receive_datagram(reply, FROM_GW, 0.001)
    [fallback] = drain(m)
    assert isinstance(fallback, ProtocolFallback) and m.protocol is Protocol.NATPMP
    assert sent(m, 0.001) == [b"\x00\x00"]
    m.receive_datagram(address_reply(), FROM_GW, 0.002)
    [request] = sent(m, 0.002)
    m.receive_datagram(natpmp_map_reply(request), FROM_GW, 0.003)
    [event] = drain(m)
    assert isinstance(event, MappingUpdated) and event.mapping.protocol is Protocol.NATPMP


def test_pcp_only_mode_reports_unsupported_instead_of_falling_back() -> None:
    m = make(Mode.PCP)
    m.start(0.0)
    sent(m, 0.0)
    m.receive_datagram(NatPmpHeaderResponse(1, 1, 77).encode(), FROM_GW, 0.0)
    [event] = drain(m)
    assert isinstance(event, MappingFailed) and event.failure is Failure.UNSUPPORTED and event.fatal


def test_natpmp_network_failure_from_a_reserved_outside_address() -> None:
    m = make(Mode.NATPMP)
    m.start(0.0)
    sent(m, 0.0)
    m.receive_datagram(address_reply(result=3, address=IPv4Address(0)), FROM_GW, 0.0)
    [event] = drain(m)
    assert isinstance(event, MappingFailed) and event.failure is Failure.NETWORK_FAILURE
    assert event.result_name == "NETWORK_FAILURE" and event.fatal and not event.renewing


@pytest.mark.parametrize(("result", "failure"), [
    (8, Failure.NO_RESOURCES), (2, Failure.NOT_AUTHORIZED), (7, Failure.NETWORK_FAILURE),
    (12, Failure.REFUSED), (5, Failure.UNSUPPORTED)])
def test_pcp_result_codes(result: int, failure: Failure) -> None:
    m = make(Mode.PCP)
    m.start(0.0)
    [request] = sent(m, 0.0)
    m.receive_datagram(pcp_reply(request, result=result, lifetime=30), FROM_GW, 0.0)
    [event] = drain(m)
    assert isinstance(event, MappingFailed) and event.failure is failure and event.result == result


def test_natpmp_not_authorized() -> None:
    m = make(Mode.NATPMP)
    m.start(0.0)
    sent(m, 0.0)
    m.receive_datagram(address_reply(), FROM_GW, 0.0)
    [request] = sent(m, 0.0)
    m.receive_datagram(natpmp_map_reply(request, result=2), FROM_GW, 0.0)
    [event] = drain(m)
    assert isinstance(event, MappingFailed) and event.failure is Failure.NOT_AUTHORIZED


def test_transient_error_while_renewing_retries_later() -> None:
    m = make(Mode.PCP, lifetime=200)
    map_pcp(m, now=0.0, lifetime=200)
    m.handle_timer(100.0)
    [request] = sent(m, 100.0)
    m.receive_datagram(pcp_reply(request, result=8, lifetime=30, epoch=1100), FROM_GW, 100.0)
    [event] = drain(m)
    assert isinstance(event, MappingFailed) and not event.fatal and event.renewing
    assert m.state is State.MAPPED and m.get_timer() == 130.0


def test_foreign_and_mismatched_datagrams_are_ignored() -> None:
    m = make(Mode.PCP)
    m.start(0.0)
    [request] = sent(m, 0.0)
    good = pcp_reply(request)
    m.receive_datagram(good, ("10.77.0.9", 5351), 0.0)  # not the gateway
    m.receive_datagram(good, ("10.77.0.1", 5350), 0.0)  # not from port 5351
    m.receive_datagram(b"\x02\x81", FROM_GW, 0.0)  # garbage
    m.receive_datagram(pcp_reply(request, nonce=b"\xb0" * 12), FROM_GW, 0.0)  # another mapping
    m.receive_datagram(natpmp_map_reply(NatPmpMapRequest(1, 4500, 4500, 60).encode()), FROM_GW, 0.0)
    events = drain(m)
    assert len(events) == 5 and all(isinstance(e, DatagramIgnored) for e in events)
    assert m.state is State.MAPPING and m.mapping is None
    m.receive_datagram(good, FROM_GW, 0.01)
    assert isinstance(drain(m)[0], MappingUpdated)


def test_bad_parameters_and_calls() -> None:
    with pytest.raises(EncodeError):
        PortMapper(gateway=GW, client_address=GW, internal_port=4500, nonce=b"x")
    with pytest.raises(EncodeError):
        make(lifetime=0)
    m = make()
    m.start(0.0)
    with pytest.raises(ClientError):
        m.start(1.0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=6))
def test_random_datagrams_never_raise(datagrams: list[bytes]) -> None:
    for mode in (Mode.AUTO, Mode.NATPMP):
        m = make(mode)
        m.start(0.0)
        sent(m, 0.0)
        for i, data in enumerate(datagrams):
            m.receive_datagram(data, FROM_GW, i * 0.1)
            drain(m)
        assert m.state in set(State)
