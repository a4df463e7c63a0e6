"""ESP SAs: round trips, every truncation and bit flip rejected with a reason, strict order."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esp_udp.errors import (
    AuthenticationError,
    DecodeError,
    DropReason,
    EspError,
    ReplayError,
    SequenceExhaustedError,
    UnknownSpiError,
)
from esp_udp.esp import (
    MIN_PACKET,
    NH_IPV6,
    InboundSA,
    OutboundSA,
    make_aead,
    peek_header,
    sealed_len,
)
from esp_udp.sa import Suite

SUITES = list(Suite)
SPI = 0xC0FFEE01


def pair(suite: Suite, window: int = 1024) -> tuple[OutboundSA, InboundSA]:
    keymat = os.urandom(suite.keymat_len)
    return OutboundSA(SPI, suite, keymat), InboundSA(SPI, suite, keymat, window=window)


@pytest.mark.parametrize("suite", SUITES)
def test_round_trip_sizes_0_to_mtu(suite: Suite) -> None:
    out, inb = pair(suite)
    pbuf = memoryview(bytearray(1400))
    obuf = memoryview(bytearray(1500))
    dbuf = memoryview(bytearray(1500))
    for size in [*range(0, 70), *range(70, 1281, 37), 1279, 1280]:
        payload = os.urandom(size)
        packet = out.seal(payload)
        assert len(packet) == sealed_len(size) and (len(packet) - 8) % 4 == 0
        opened = inb.open(packet)
        assert (opened.payload, opened.next_header, opened.seq) == (payload, NH_IPV6, out.seq)
        pbuf[:size] = payload
        length = out.seal_into(obuf, pbuf, size)
        assert length == sealed_len(size)
        seq, nh, plen = inb.open_into(obuf[:length], dbuf)
        assert (bytes(dbuf[:plen]), nh, seq) == (payload, NH_IPV6, out.seq)


def test_sequence_numbers_start_at_one_and_ivs_differ() -> None:
    out, _ = pair(Suite.AES256GCM16)
    packets = [out.seal(b"x") for _ in range(3)]
    assert [peek_header(p)[1] for p in packets] == [1, 2, 3]
    assert len({p[8:16] for p in packets}) == 3


@pytest.mark.parametrize("suite", SUITES)
def test_every_truncation_rejected(suite: Suite) -> None:
    out, inb = pair(suite)
    packet = out.seal(os.urandom(61))
    for cut in range(len(packet)):
        with pytest.raises(EspError) as info:
            inb.open(packet[:cut])
        expected = DropReason.TRUNCATED if cut < MIN_PACKET else DropReason.AUTH_FAILED
        assert info.value.reason is expected, cut
    assert inb.open(packet).seq == 1  # nothing above moved the window


@pytest.mark.parametrize("suite", SUITES)
def test_every_bit_flip_rejected_and_window_untouched(suite: Suite) -> None:
    out, inb = pair(suite)
    out.seq = 40
    packet = out.seal(os.urandom(45))
    reasons: dict[DropReason, int] = {}
    for bit in range(len(packet) * 8):
        flipped = bytearray(packet)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(EspError) as info:
            inb.open(bytes(flipped))
        reasons[info.value.reason] = reasons.get(info.value.reason, 0) + 1
        assert inb.replay.top == 0  # forged packets never move the window
    assert reasons[DropReason.UNKNOWN_SPI] == 32  # SPI bits
    assert set(reasons) == {DropReason.UNKNOWN_SPI, DropReason.AUTH_FAILED}
    assert inb.open(packet).seq == 41


def test_replay_checked_before_decryption() -> None:
    out, inb = pair(Suite.AES128GCM16, window=64)
    first = out.seal(b"a")
    inb.open(first)
    with pytest.raises(ReplayError) as dup:
        inb.open(first)
    assert dup.value.reason is DropReason.REPLAY
    # A forged packet whose sequence number is a duplicate is a *replay*, not an auth failure:
    forged = bytearray(first)
    forged[-1] ^= 1
    with pytest.raises(ReplayError):
        inb.open(bytes(forged))
    out.seq = 200
    inb.open(out.seal(b"b"))
    out.seq = 100
    with pytest.raises(ReplayError) as old:
        inb.open(out.seal(b"c"))
    assert old.value.reason is DropReason.TOO_OLD


def test_out_of_order_within_window() -> None:
    out, inb = pair(Suite.CHACHA20POLY1305, window=64)
    packets = [out.seal(bytes([i])) for i in range(10)]
    for i in (3, 1, 9, 0, 2, 8, 4, 7, 5, 6):
        assert inb.open(packets[i]).payload == bytes([i])


def _sealed_with_trailer(suite: Suite, keymat: bytes, seq: int, plaintext: bytes) -> bytes:
    aead, salt = make_aead(suite, keymat)
    header = SPI.to_bytes(4, "big") + seq.to_bytes(4, "big")
    iv = seq.to_bytes(8, "big")
    return header + iv + aead.encrypt(salt + iv, plaintext, header)


@pytest.mark.parametrize(("trailer", "reason"), [
    (b"\x01\x02\x03\x09\x29", DropReason.BAD_PADDING),  # pad length beyond the packet
    (b"\x00\x01\x02\x29", DropReason.BAD_PADDING),  # pad bytes not 1, 2
    (b"\x01\x02\x02\x11", DropReason.BAD_NEXT_HEADER),  # UDP is not a tunnel-mode payload
    (b"\x01\x02\x02\x3b", DropReason.DUMMY),  # next header 59
    (b"\xff\x29", DropReason.BAD_PADDING),  # pad length 255 on a short packet
])
def test_trailer_checks_after_authentication(trailer: bytes, reason: DropReason) -> None:
    suite = Suite.AES256GCM16
    keymat = os.urandom(suite.keymat_len)
    inb = InboundSA(SPI, suite, keymat)
    packet = _sealed_with_trailer(suite, keymat, 7, b"\x60" + bytes(1) + trailer)
    with pytest.raises(DecodeError) as info:
        inb.open(packet)
    assert info.value.reason is reason
    assert inb.replay.top == 7  # authentic, so the window moved (strongSwan's order)


def test_wrong_spi_and_wrong_key() -> None:
    out, _ = pair(Suite.AES256GCM16)
    other = InboundSA(SPI + 1, Suite.AES256GCM16, os.urandom(36))
    with pytest.raises(UnknownSpiError):
        other.open(out.seal(b"x"))
    wrong_key = InboundSA(SPI, Suite.AES256GCM16, os.urandom(36))
    with pytest.raises(AuthenticationError):
        wrong_key.open(out.seal(b"x"))


def test_sequence_never_wraps() -> None:
    keymat = os.urandom(36)
    out = OutboundSA(SPI, Suite.AES256GCM16, keymat, soft_limit=5, hard_limit=7)
    for _ in range(4):
        out.seal(b"x")
    assert not out.rekey_needed
    out.seal(b"x")
    assert out.rekey_needed
    out.seal(b"x")
    out.seal(b"x")
    with pytest.raises(SequenceExhaustedError) as info:
        out.seal(b"x")
    assert info.value.reason is DropReason.SEQ_EXHAUSTED
    with pytest.raises(SequenceExhaustedError):
        out.seal_into(memoryview(bytearray(100)), memoryview(bytearray(100)), 10)
    assert out.seq == 7
    default = OutboundSA(SPI, Suite.AES256GCM16, keymat)
    assert default.hard_limit == 2**32 - 1 and default.soft_limit < default.hard_limit
    default.seq = 2**32 - 1
    with pytest.raises(SequenceExhaustedError):
        default.seal(b"x")


def test_buffers_too_small() -> None:
    out, inb = pair(Suite.AES128GCM16)
    with pytest.raises(DecodeError) as info:
        out.seal_into(memoryview(bytearray(50)), memoryview(bytearray(100)), 60)
    assert info.value.reason is DropReason.TOO_BIG and out.seq == 0
    packet = out.seal(bytes(100))
    with pytest.raises(DecodeError):
        inb.open_into(memoryview(packet), memoryview(bytearray(10)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_esp_errors(data: bytes) -> None:
    _, inb = pair(Suite.CHACHA20POLY1305)
    packet = SPI.to_bytes(4, "big") + data
    with pytest.raises(EspError):
        inb.open(packet)
    with pytest.raises(EspError):
        inb.open(data)


@pytest.mark.parametrize("next_header", [4, 41, 59, 0, 255])
def test_seal_into_equals_seal_for_every_length_residue(next_header: int) -> None:
    # seal_into writes a precomputed trailer (padding ‖ pad length ‖ next header) and
    # packs AAD and nonce into per-SA scratch; it must produce the very bytes seal() does.
    suite = Suite.AES128GCM16
    keymat = os.urandom(suite.keymat_len)
    plain, fast = OutboundSA(SPI, suite, keymat), OutboundSA(SPI, suite, keymat)
    pbuf = memoryview(bytearray(200))
    obuf = memoryview(bytearray(300))
    for size in range(0, 60):
        payload = os.urandom(size)
        pbuf[:size] = payload
        length = fast.seal_into(obuf, pbuf, size, next_header)
        assert bytes(obuf[:length]) == plain.seal(payload, next_header)
        assert fast.seq == plain.seq == size + 1


@pytest.mark.parametrize("next_header", [-1, 256])
def test_seal_into_rejects_impossible_next_header(next_header: int) -> None:
    out, _ = pair(Suite.AES128GCM16)
    with pytest.raises(EspError):
        out.seal_into(memoryview(bytearray(200)), memoryview(bytearray(200)), 10, next_header)
    assert out.seq == 0


@pytest.mark.parametrize("payload_len", [0, 1, 5, 6, 40, 300])
def test_every_pad_length_checked_in_open(payload_len: int) -> None:
    # open_into checks pad lengths up to 6 on one 64-bit word and longer ones (or short
    # plaintexts) byte-wise: both paths must accept exactly the padding 1, 2, .., n.
    suite = Suite.AES128GCM16
    keymat = os.urandom(suite.keymat_len)
    inb = InboundSA(SPI, suite, keymat)
    payload = os.urandom(payload_len)
    seq = 0
    for pad in range(0, 256):
        padding = bytes(range(1, pad + 1))
        seq += 1
        packet = _sealed_with_trailer(suite, keymat, seq, payload + padding + bytes((pad, NH_IPV6)))
        opened = inb.open(packet)
        assert (opened.payload, opened.seq) == (payload, seq)
        for index in range(min(pad, 8)):  # corrupt each of the last pad bytes in turn
            bad = bytearray(padding)
            bad[-1 - index] ^= 0x80
            seq += 1
            packet = _sealed_with_trailer(suite, keymat, seq, payload + bad + bytes((pad, NH_IPV6)))
            with pytest.raises(DecodeError) as info:
                inb.open(packet)
            assert info.value.reason is DropReason.BAD_PADDING
    # a pad length longer than what precedes it is bad on both paths
    for pad in (min(payload_len + 1, 255), 255):
        seq += 1
        packet = _sealed_with_trailer(suite, keymat, seq, payload + bytes((pad, NH_IPV6)))
        with pytest.raises(DecodeError) as info:
            inb.open(packet)
        assert info.value.reason is DropReason.BAD_PADDING


def test_open_into_output_too_small_is_too_big_and_window_untouched() -> None:
    out, inb = pair(Suite.AES256GCM16)
    packet = memoryview(out.seal(bytes(100)))
    with pytest.raises(DecodeError) as info:
        inb.open_into(packet, memoryview(bytearray(103)))  # needs 100 + 2 + 2
    assert info.value.reason is DropReason.TOO_BIG and inb.replay.top == 0
    seq, _, length = inb.open_into(packet, memoryview(bytearray(104)))
    assert (seq, length) == (1, 100)
