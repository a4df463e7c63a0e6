"""RFC 3948 classification of datagrams on the shared UDP port."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esp_udp.encap import (
    KEEPALIVE,
    NON_ESP_MARKER,
    KeepaliveTimer,
    Kind,
    build_ike,
    build_keepalive,
    classify,
    esp_spi,
    ike_payload,
)
from esp_udp.errors import DecodeError, EspError


def test_keepalive() -> None:
    assert build_keepalive() == KEEPALIVE == b"\xff"
    assert classify(b"\xff") is Kind.KEEPALIVE


def test_ike_marker() -> None:
    message = bytes(range(28))
    datagram = build_ike(message)
    assert datagram[:4] == NON_ESP_MARKER
    assert classify(datagram) is Kind.IKE
    assert ike_payload(datagram) == message


def test_esp() -> None:
    datagram = bytes.fromhex("c0ffee01") + bytes(40)
    assert classify(datagram) is Kind.ESP
    assert esp_spi(datagram) == 0xC0FFEE01
    with pytest.raises(DecodeError):
        ike_payload(datagram)


@pytest.mark.parametrize("datagram", [b"", b"\x00", b"\xfe", b"\xff\xff", b"\x00\x00\x00\x00",
                                      b"\x01\x02\x03", b"\x01\x02\x03\x04\x05"])
def test_malformed(datagram: bytes) -> None:
    with pytest.raises(DecodeError):
        classify(datagram)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_only_own_errors(datagram: bytes) -> None:
    try:
        kind = classify(datagram)
    except EspError:
        return
    assert kind in (Kind.KEEPALIVE, Kind.IKE, Kind.ESP)


def test_keepalive_timer() -> None:
    timer = KeepaliveTimer(20.0, last_sent=100.0)
    assert not timer.due(119.9)
    assert timer.due(120.0)
    timer.note_sent(120.0)
    assert timer.next_deadline() == 140.0
