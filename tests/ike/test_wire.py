"""Codec round trips, truncation sweeps, critical-bit handling, tolerant registries."""

from __future__ import annotations

import pytest

from ike_lite.buffer import Reader
from ike_lite.const import (
    DhGroup,
    ExchangeType,
    Flag,
    IdType,
    NotifyType,
    PayloadType,
    ProtocolId,
    TransformType,
)
from ike_lite.errors import DecodeError, IkeError, ProtocolError
from ike_lite.proposals import esp_proposal, ike_proposal
from ike_lite.wire import (
    KE,
    SA,
    Auth,
    Delete,
    Header,
    Identification,
    Nonce,
    Notify,
    Payload,
    TrafficSelector,
    TrafficSelectors,
    VendorId,
    encode_message,
    encode_payloads,
    parse_message,
    parse_payloads,
)

from .pair import Pair

SAMPLES: list[Payload] = [
    SA((ike_proposal(["aes256gcm16", "chacha20poly1305"], [DhGroup.CURVE25519, DhGroup.MODP_2048]),)),
    SA(
        (
            esp_proposal(["aes256gcm16"], b"\x01\x02\x03\x04", DhGroup.ECP_256),
            esp_proposal(["chacha20poly1305"], b"\x05\x06\x07\x08"),
        )
    ),
    KE(DhGroup.CURVE25519, bytes(range(32))),
    Nonce(bytes(range(32))),
    Identification(True, IdType.FQDN, b"imac.bob.members.example"),
    Identification(False, IdType.FQDN, b"laptop.bob.members.example"),
    Auth(2, bytes(32)),
    TrafficSelectors(True, (TrafficSelector.host("fd00::1"), TrafficSelector.host("198.18.0.1"))),
    TrafficSelectors(False, (TrafficSelector.host("fd00::2"),)),
    Notify(NotifyType.NAT_DETECTION_SOURCE_IP, bytes(20)),
    Notify(NotifyType.REKEY_SA, b"", ProtocolId.ESP, b"\xca\xfe\xba\xbe"),
    Notify(NotifyType(40000), b"unknown status"),
    Delete(ProtocolId.ESP, (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00")),
    Delete(ProtocolId.IKE),
    VendorId(b"btmm"),
]


@pytest.mark.parametrize("payload", SAMPLES, ids=lambda p: type(p).__name__)
def test_payload_round_trip(payload: Payload) -> None:
    data = encode_payloads([payload])
    assert parse_payloads(payload.PTYPE, data) == [payload]


def test_message_round_trip_all_payloads() -> None:
    header = Header(b"I" * 8, b"R" * 8, 0, ExchangeType.IKE_AUTH, Flag.INITIATOR, 7)
    raw = encode_message(header, SAMPLES)
    msg = parse_message(raw)
    assert list(msg.payloads) == SAMPLES
    assert msg.header.message_id == 7 and msg.header.from_initiator and not msg.header.is_response
    assert msg.header.exchange == ExchangeType.IKE_AUTH


def _recorded_messages() -> list[bytes]:
    """IKE_SA_INIT request/response and IKE_AUTH request/response from an in-memory pair."""
    pair = Pair()
    pair.initiate()
    pair.pump()
    return [d.data[4:] for _, d in pair.wire]


def test_truncation_sweep_fails_cleanly() -> None:
    messages = _recorded_messages()
    assert len(messages) >= 4
    for raw in messages:
        parse_message(raw)
        for cut in range(len(raw)):
            with pytest.raises(IkeError):
                parse_message(raw[:cut])


def test_truncated_payload_inside_consistent_header() -> None:
    raw = encode_message(
        Header(b"I" * 8, bytes(8), 0, ExchangeType.IKE_SA_INIT, Flag.INITIATOR, 0),
        [Nonce(bytes(32)), KE(DhGroup.CURVE25519, bytes(32))],
    )
    for cut in range(28, len(raw)):
        fixed = raw[:24] + cut.to_bytes(4, "big") + raw[28:cut]
        with pytest.raises(DecodeError):
            parse_message(fixed)


def _with_unknown(critical: bool) -> bytes:
    body = b"hello"
    unknown = bytes([PayloadType.NONCE, 0x80 if critical else 0]) + (4 + len(body)).to_bytes(2, "big") + body
    nonce = encode_payloads([Nonce(bytes(16))])
    chain = unknown + nonce
    header = Header(b"I" * 8, bytes(8), 99, ExchangeType.IKE_SA_INIT, Flag.INITIATOR, 0)
    return header.encode(28 + len(chain)) + chain


def test_unknown_noncritical_payload_is_skipped() -> None:
    msg = parse_message(_with_unknown(critical=False))
    assert list(msg.payloads) == [Nonce(bytes(16))]


def test_unknown_critical_payload_is_refused() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_message(_with_unknown(critical=True))
    assert info.value.notify == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD
    assert info.value.data == bytes([99])


def test_registries_tolerate_unknown_values() -> None:
    assert ExchangeType(99).name == "UNKNOWN_99" and int(ExchangeType(99)) == 99
    assert NotifyType(50000).name == "UNKNOWN_50000"
    assert TransformType(77) == 77
    assert not NotifyType.INITIAL_CONTACT.is_error and NotifyType.AUTHENTICATION_FAILED.is_error


def test_header_length_mismatch_and_version() -> None:
    raw = _recorded_messages()[0]
    with pytest.raises(DecodeError):
        parse_message(raw + b"\x00")
    bad_version = raw[:17] + b"\x30" + raw[18:]
    with pytest.raises(ProtocolError):
        parse_message(bad_version)


def test_reader_bounds() -> None:
    r = Reader(b"\x01\x02\x03")
    assert r.u16() == 0x0102
    with pytest.raises(DecodeError):
        r.u16()
    with pytest.raises(DecodeError):
        r.sub(5)


def test_nonce_length_limits() -> None:
    with pytest.raises(DecodeError):
        parse_payloads(PayloadType.NONCE, encode_payloads([Nonce(bytes(15))]))
