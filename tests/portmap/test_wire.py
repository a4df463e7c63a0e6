"""portmap.wire against the miniupnpd 2.3.1 recordings, round trips and malformed input."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portmap.errors import DecodeError, EncodeError
from portmap.wire import (
    MapData,
    NatPmpExternalAddressRequest,
    NatPmpExternalAddressResponse,
    NatPmpHeaderResponse,
    NatPmpMapRequest,
    NatPmpMapResponse,
    PcpOption,
    PcpRequest,
    PcpResponse,
    PcpVersionZeroReply,
    PeerData,
    Request,
    Response,
    decode_request,
    decode_response,
    unmap,
    v4_mapped,
)

# NAT-PMP/PCP exchanges recorded from miniupnpd 2.3.1 (a copy of the project's reference
# file natpmp-pcp-vectors.json, kept with the tests so a clean clone has it)
VECTORS_PATH = Path(__file__).with_name("natpmp-pcp-vectors.json")
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text())
BY_NAME = {v["name"]: v for v in VECTORS}
WITH_RESPONSE = [v for v in VECTORS if v["response_hex"]]
NONCE = bytes.fromhex("0102030405060708090a0b0c")
CLIENT = v4_mapped(IPv4Address("10.77.0.2"))


def test_vectors_loaded() -> None:
    assert len(VECTORS) >= 40 and len(WITH_RESPONSE) >= 30


@pytest.mark.parametrize("vector", WITH_RESPONSE, ids=[v["name"] for v in WITH_RESPONSE])
def test_recorded_response_decodes_and_reencodes(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["response_hex"])
    message = decode_response(raw)
    assert message.encode() == raw
    _check_decoded(message, vector["decoded"])


def _check_decoded(message: Response, want: dict[str, Any]) -> None:
    """Compare with the recorder's own decoding (it read version-0 replies as NAT-PMP)."""
    if isinstance(message, PcpVersionZeroReply):
        assert want["version"] == 0 and want["opcode"] == 0x80 and "never parsed" in want["warning"]
        view = message.natpmp_view()
        assert (view.result, view.epoch, str(view.external_address)) == (
            want["result"], want["epoch"], want["external_ip"])
        assert message.result_name == "MALFORMED_REQUEST"  # byte 3 read as a PCP result
        return
    assert message.result == want["result"]
    assert message.result_name == want["result_name"].replace("NOT_AUTHORIZED_REFUSED", "NOT_AUTHORIZED")
    if isinstance(message, PcpResponse):
        assert (message.version, message.opcode | 0x80, message.lifetime, message.epoch) == (
            want["version"], want["opcode"] | 0x80, want["lifetime"], want["epoch"])
        assert message.reserved_tail.hex() == want["reserved_hex"]
        data = message.data
        if isinstance(data, PeerData):
            assert (data.remote_peer_port, str(unmap(data.remote_peer_address))) == (
                want["peer_port"], want["peer_ip"])
            data = data.map
        if "nonce" in want:
            assert isinstance(data, MapData)
            assert data.nonce.hex() == want["nonce"]
            assert (data.protocol, data.internal_port, data.external_port) == (
                want["protocol"], want["internal_port"], want["external_port"])
            assert str(message.external_address) == want["external_ip"]
        else:
            assert data is None
        trailing = b"".join(o.encode() for o in message.options)
        assert trailing.hex() == want.get("trailing_hex", "")
        return
    assert want["version"] == 0 and message.epoch == want["epoch"]
    if isinstance(message, NatPmpExternalAddressResponse):
        assert str(message.external_address) == want["external_ip"]
    elif isinstance(message, NatPmpMapResponse):
        assert message.opcode | 0x80 == want["opcode"]
        assert (message.internal_port, message.external_port, message.lifetime) == (
            want["internal_port"], want["external_port"], want["lifetime"])
    else:
        assert isinstance(message, NatPmpHeaderResponse) and want["len"] == 8


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_recorded_request_decodes_or_is_rejected(vector: dict[str, Any]) -> None:
    """Well-formed requests round-trip; the malformed ones miniupnpd dropped or refused fail cleanly."""
    raw = bytes.fromhex(vector["request_hex"])
    if vector["name"].startswith("bad_") and vector["response_hex"] is None:
        with pytest.raises(DecodeError):
            decode_request(raw)
        return
    try:
        request = decode_request(raw)
    except DecodeError:
        assert vector["name"].startswith("bad_"), "a well-formed recorded request failed to decode"
        return
    assert request.encode() == raw


# Requests the client itself builds, byte for byte as recorded (RFC 6886 §3.2-3.4, RFC 6887 §11.1).
BUILT_REQUESTS: dict[str, Request] = {
    "natpmp_extaddr": NatPmpExternalAddressRequest(),
    "natpmp_map_udp_4500_to_4500_3600s": NatPmpMapRequest(1, 4500, 4500, 3600),
    "natpmp_map_tcp_4500_to_4500": NatPmpMapRequest(2, 4500, 4500, 3600),
    "natpmp_delete_udp_4501_lifetime0": NatPmpMapRequest(1, 4501, 0, 0),
    "pcp_announce": PcpRequest(0, 0, CLIENT),
    "pcp_map_udp_4510_to_4510_3600s": PcpRequest(1, 3600, CLIENT, MapData(NONCE, 17, 4510, 4510)),
    "pcp_map_udp_4511_to_suggested_24511": PcpRequest(1, 3600, CLIENT, MapData(NONCE, 17, 4511, 24511)),
    "pcp_delete_4511_lifetime0": PcpRequest(1, 0, CLIENT, MapData(NONCE, 17, 4511, 0)),
    "pcp_peer_udp_4514_to_peer": PcpRequest(2, 3600, CLIENT, PeerData(
        MapData(NONCE, 17, 4514, 4514), 5000, v4_mapped(IPv4Address("198.19.0.2")))),
    "pcp_map_prefer_failure_port_80_not_permitted": PcpRequest(
        1, 3600, CLIENT, MapData(NONCE, 17, 4525, 80), (PcpOption(2),)),
    "bad_pcp_map_third_party_option": PcpRequest(1, 3600, CLIENT, MapData(NONCE, 17, 4522, 4522), (
        PcpOption(1, v4_mapped(IPv4Address("10.77.0.3")).packed),)),
}


@pytest.mark.parametrize("name", sorted(BUILT_REQUESTS))
def test_built_requests_match_recording(name: str) -> None:
    assert BUILT_REQUESTS[name].encode().hex() == BY_NAME[name]["request_hex"]


def test_response_dataclasses_build_recorded_bytes() -> None:
    assert NatPmpExternalAddressResponse(0, 1, IPv4Address("198.19.0.1")).encode().hex() == \
        BY_NAME["natpmp_extaddr"]["response_hex"]
    assert NatPmpMapResponse(1, 0, 1, 4501, 14501, 3600).encode().hex() == \
        BY_NAME["natpmp_map_udp_4501_to_suggested_14501"]["response_hex"]
    mapped = MapData(NONCE, 17, 4510, 4510, v4_mapped(IPv4Address("198.19.0.1")))
    assert PcpResponse(1, 0, 3600, 5, mapped).encode().hex() == \
        BY_NAME["pcp_map_udp_4510_to_4510_3600s"]["response_hex"]


def test_version_zero_quirk_is_not_a_natpmp_reply() -> None:
    """miniupnpd answers a malformed PCP request with a 24+ byte version-0 message."""
    raw = bytes.fromhex(BY_NAME["bad_pcp_map_truncated_58bytes"]["response_hex"])
    message = decode_response(raw)
    assert isinstance(message, PcpVersionZeroReply)
    assert (message.result, message.epoch, len(message.rest)) == (3, 5, 48)


MALFORMED_RESPONSES = {
    "empty": b"",
    "one byte": b"\x00",
    "natpmp request not reply": bytes.fromhex("0000"),
    "natpmp header cut": bytes.fromhex("0080000000"),
    "natpmp address reply + 1": bytes.fromhex("0080000000000001c613000100"),
    "natpmp map reply cut": bytes.fromhex("00810000000000011194119400"),
    "pcp short": bytes.fromhex("0281000000000e10"),
    "pcp without R bit": bytes.fromhex("02010000" + "00" * 20),
    "pcp length not multiple of 4": bytes.fromhex("0281000000000e1000000005" + "00" * 13),
    "pcp too long": b"\x02\x81" + b"\x00" * 1102,
    "pcp map body cut": bytes.fromhex(BY_NAME["pcp_map_udp_4510_to_4510_3600s"]["response_hex"])[:56],
    "pcp map reserved not zero": bytes.fromhex(
        BY_NAME["pcp_map_udp_4510_to_4510_3600s"]["response_hex"].replace("11000000", "11000100", 1)),
    "pcp option overruns": bytes.fromhex(
        BY_NAME["pcp_map_udp_4510_to_4510_3600s"]["response_hex"] + "c8000008" + "00000000"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED_RESPONSES))
def test_malformed_responses_raise_decode_error(name: str) -> None:
    with pytest.raises(DecodeError):
        decode_response(MALFORMED_RESPONSES[name])


@pytest.mark.parametrize("vector", WITH_RESPONSE, ids=[v["name"] for v in WITH_RESPONSE])
def test_every_truncation_fails_cleanly(vector: dict[str, Any]) -> None:
    """A cut reply is either rejected or read as exactly the shorter message it now is."""
    raw = bytes.fromhex(vector["response_hex"])
    for n in range(len(raw)):
        try:
            message = decode_response(raw[:n])
        except DecodeError:
            continue
        assert message.encode() == raw[:n]


def test_encode_rejects_out_of_range_fields() -> None:
    with pytest.raises(EncodeError):
        NatPmpMapRequest(1, 70000, 0, 3600).encode()
    with pytest.raises(EncodeError):
        NatPmpMapRequest(3, 4500, 4500, 3600).encode()
    with pytest.raises(EncodeError):
        PcpRequest(1, 3600, CLIENT, MapData(b"short", 17, 4500, 4500)).encode()
    with pytest.raises(EncodeError):
        PcpRequest(1, -1, CLIENT).encode()


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120))
def test_random_bytes_raise_only_decode_error(data: bytes) -> None:
    for decode in (decode_response, decode_request):
        try:
            message = decode(data)
        except DecodeError:
            continue
        assert message.encode() == data


@settings(max_examples=150, deadline=None)
@given(nonce=st.binary(min_size=12, max_size=12), proto=st.sampled_from([6, 17]),
       iport=st.integers(0, 65535), eport=st.integers(0, 65535), lifetime=st.integers(0, 2**32 - 1),
       epoch=st.integers(0, 2**32 - 1), result=st.integers(0, 255), ext=st.integers(0, 2**32 - 1),
       options=st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=20)), max_size=3))
def test_pcp_map_round_trip(nonce: bytes, proto: int, iport: int, eport: int, lifetime: int, epoch: int,
                            result: int, ext: int, options: list[tuple[int, bytes]]) -> None:
    body = MapData(nonce, proto, iport, eport, v4_mapped(IPv4Address(ext)))
    opts = tuple(PcpOption(code, data) for code, data in options)
    response = PcpResponse(1, result, lifetime, epoch, body, opts)
    assert decode_response(response.encode()) == response
    request = PcpRequest(1, lifetime, IPv6Address(ext), body, opts)
    assert decode_request(request.encode()) == request


@settings(max_examples=150, deadline=None)
@given(op=st.sampled_from([1, 2]), iport=st.integers(0, 65535), eport=st.integers(0, 65535),
       lifetime=st.integers(0, 2**32 - 1), epoch=st.integers(0, 2**32 - 1), result=st.integers(0, 65535))
def test_natpmp_round_trip(op: int, iport: int, eport: int, lifetime: int, epoch: int, result: int) -> None:
    request = NatPmpMapRequest(op, iport, eport, lifetime)
    assert decode_request(request.encode()) == request
    reply = NatPmpMapResponse(op, result, epoch, iport, eport, lifetime)
    assert decode_response(reply.encode()) == reply
    address = NatPmpExternalAddressResponse(result, epoch, IPv4Address(lifetime))
    assert decode_response(address.encode()) == address
