"""ESP security associations: RFC 4303 tunnel mode with AEAD transforms only.

How this works
--------------
Wire format of one ESP packet (RFC 4303 §2, RFC 4106 §3, RFC 7634 §3)::

    SPI (4) | Sequence Number (4) | IV (8) | ciphertext of
        { inner IP packet | Padding 1,2,3.. (0-255) | Pad Length (1) | Next Header (1) }
    | ICV (16)

* AEAD nonce = salt (last 4 bytes of the key material) ‖ IV; the IV is the 64-bit
  sequence counter, unique per SA as RFC 4106 §3.1 and RFC 7634 §2 require.
* AAD = SPI ‖ 32-bit sequence number (RFC 4106 §5, RFC 7634 §2.1; no ESN).
* Padding aligns the ciphertext to 4 bytes with the default bytes 1, 2, 3 (RFC 4303 §2.4).
* Next header 41 = IPv6, 4 = IPv4; 59 marks a dummy packet (discarded).

An :class:`OutboundSA` numbers packets from 1 and never wraps: past ``soft_limit`` it
reports :attr:`OutboundSA.rekey_needed`; at ``hard_limit`` sealing raises
:class:`SequenceExhaustedError`. An :class:`InboundSA` processes in strongSwan's strict
order: (SPI lookup, done by the caller's table) → replay pre-check → decrypt+verify →
window update → padding check. Both sides have an allocation-light ``*_into`` form the
datapath uses with preallocated buffers, and a plain bytes-in/bytes-out form.

Sans-I/O: no sockets, clocks or randomness here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from esp_udp.errors import (
    AuthenticationError,
    ConfigError,
    DecodeError,
    DropReason,
    SequenceExhaustedError,
    UnknownSpiError,
)
from esp_udp.replay import DEFAULT_WINDOW, ReplayWindow
from esp_udp.sa import SALT_LEN, Suite

ESP_HEADER = struct.Struct("!II")
_HEADER_IV = struct.Struct("!IIQ")  # SPI, sequence number, IV (= 64-bit counter)
_AAD_NONCE = struct.Struct("!IIIQ")  # SPI, sequence number (the AAD) ‖ salt, IV (the nonce)
HEADER_LEN = 8
IV_LEN = 8
ICV_LEN = 16
TRAILER_MIN = 2  # pad length + next header
MIN_PACKET = HEADER_LEN + IV_LEN + TRAILER_MIN + ICV_LEN
_SEAL_EXTRA = HEADER_LEN + IV_LEN + ICV_LEN
OVERHEAD_MAX = HEADER_LEN + IV_LEN + 3 + TRAILER_MIN + ICV_LEN  # with 4-byte alignment

NH_IPV4 = 4
NH_IPV6 = 41
NH_NONE = 59

HARD_SEQ_LIMIT = 0xFFFFFFFF
SOFT_SEQ_LIMIT = HARD_SEQ_LIMIT - (1 << 24)

_PAD = bytes(range(1, 256))
_ALIGN = 4

# Precomputed trailers for the hot path: _TRAILERS[next_header][length & 3] is the whole
# padding ‖ pad length ‖ next header for an inner packet of ``length`` bytes (4-byte
# alignment: lengths ≡ 0, 1, 2, 3 mod 4 take 2, 1, 0, 3 pad bytes).
_TRAILERS: dict[int, tuple[bytes, bytes, bytes, bytes]] = {
    nh: (bytes((1, 2, 2, nh)), bytes((1, 1, nh)), bytes((0, nh)), bytes((1, 2, 3, 3, nh)))
    for nh in range(256)
}

Aead = AESGCM | ChaCha20Poly1305


def make_aead(suite: Suite, keymat: bytes) -> tuple[Aead, bytes]:
    """The AEAD object and the 4-byte salt from key material ``key ‖ salt``."""
    if len(keymat) != suite.keymat_len:
        raise ConfigError(f"{suite.value} needs {suite.keymat_len} bytes of key material, "
                          f"got {len(keymat)}")
    key, salt = keymat[:-SALT_LEN], keymat[-SALT_LEN:]
    aead: Aead = ChaCha20Poly1305(key) if suite is Suite.CHACHA20POLY1305 else AESGCM(key)
    return aead, salt


def peek_header(packet: bytes | bytearray | memoryview) -> tuple[int, int]:
    """(SPI, sequence number) of an ESP packet, DecodeError if it cannot be one."""
    if len(packet) < MIN_PACKET:
        raise DecodeError(f"ESP packet of {len(packet)} bytes is shorter than {MIN_PACKET}",
                          DropReason.TRUNCATED)
    spi, seq = ESP_HEADER.unpack_from(packet, 0)
    return int(spi), int(seq)


def padding_for(length: int) -> int:
    """Pad bytes so that payload + pad + 2 is a multiple of 4."""
    return -(length + TRAILER_MIN) % _ALIGN


def sealed_len(payload_len: int) -> int:
    """Length of the ESP packet carrying ``payload_len`` bytes."""
    return HEADER_LEN + IV_LEN + payload_len + padding_for(payload_len) + TRAILER_MIN + ICV_LEN


class OutboundSA:
    """The sending half of an SA: numbers, pads and seals inner packets."""

    __slots__ = ("_aad", "_aead", "_encrypt_into", "_nonce", "_salt", "_salt_int", "_scratch", "hard_limit",
                 "seq", "soft_limit", "spi", "suite")

    def __init__(self, spi: int, suite: Suite, keymat: bytes, *, soft_limit: int = SOFT_SEQ_LIMIT,
                 hard_limit: int = HARD_SEQ_LIMIT) -> None:
        if not 0 < soft_limit <= hard_limit <= HARD_SEQ_LIMIT:
            raise ConfigError("need 0 < soft_limit <= hard_limit <= 2^32-1")
        self.spi = spi
        self.suite = suite
        self._aead, self._salt = make_aead(suite, keymat)
        self._salt_int = int.from_bytes(self._salt, "big")
        self._encrypt_into = self._aead.encrypt_into
        # AAD (SPI ‖ seq) and nonce (salt ‖ IV) of the packet being sealed, rewritten in place
        # by one pack_into per packet; the two views are made once.
        self._scratch = bytearray(_AAD_NONCE.size)
        view = memoryview(self._scratch)
        self._aad = view[:HEADER_LEN]
        self._nonce = view[HEADER_LEN:]
        self.seq = 0  # the last sequence number used
        self.soft_limit = soft_limit
        self.hard_limit = hard_limit

    @property
    def rekey_needed(self) -> bool:
        """True once the sequence number passed the soft limit: negotiate a new SA now."""
        return self.seq >= self.soft_limit

    def _next_seq(self) -> int:
        if self.seq >= self.hard_limit:
            raise SequenceExhaustedError(f"SPI {self.spi:08x} used all {self.hard_limit} sequence "
                                         "numbers; the SA must be rekeyed")
        self.seq += 1
        return self.seq

    def seal(self, payload: bytes | bytearray | memoryview, next_header: int = NH_IPV6, *,
             iv: bytes | None = None) -> bytes:
        """One ESP packet carrying ``payload`` (a whole inner IP packet).

        ``iv`` overrides the counter IV (only for published test vectors: an IV must
        never repeat under one key).
        """
        seq = self._next_seq()
        pad = padding_for(len(payload))
        header = ESP_HEADER.pack(self.spi, seq)
        iv_bytes = seq.to_bytes(IV_LEN, "big") if iv is None else iv
        if len(iv_bytes) != IV_LEN:
            raise ConfigError(f"IV must be {IV_LEN} bytes")
        plaintext = b"".join((payload, _PAD[:pad], bytes((pad, next_header))))
        return b"".join((header, iv_bytes, self._aead.encrypt(self._salt + iv_bytes, plaintext, header)))

    def seal_into(self, out: memoryview, buf: memoryview, length: int,
                  next_header: int = NH_IPV6) -> int:
        """Seal ``buf[:length]`` into ``out``; returns the packet length.

        ``buf`` (a writable memoryview) must have 5 spare bytes after ``length`` (the
        trailer is written there) and ``out`` room for :func:`sealed_len`. Hot path of the
        datapath: no allocation besides two memoryview slices — the trailer comes from a
        table, AAD and nonce are packed into per-SA scratch with one ``pack_into``.
        """
        seq = self.seq + 1
        if seq > self.hard_limit:
            self._next_seq()  # raises SequenceExhaustedError
        try:
            trailer = _TRAILERS[next_header][length & 3]
        except KeyError:
            raise ConfigError(f"next header {next_header} is not a protocol number") from None
        end = length + len(trailer)
        try:
            buf[length:end] = trailer
            _HEADER_IV.pack_into(out, 0, self.spi, seq, seq)
            _AAD_NONCE.pack_into(self._scratch, 0, self.spi, seq, self._salt_int, seq)
            self._encrypt_into(self._nonce, buf[:end], self._aad, out[HEADER_LEN + IV_LEN:end + _SEAL_EXTRA])
        except (ValueError, IndexError, struct.error):  # buffers too small for this packet
            raise DecodeError(f"inner packet of {length} bytes does not fit the buffers",
                              DropReason.TOO_BIG) from None
        self.seq = seq
        return end + _SEAL_EXTRA


@dataclass(frozen=True)
class Opened:
    """A verified inner packet."""

    seq: int
    next_header: int
    payload: bytes


class InboundSA:
    """The receiving half of an SA: replay window, verification, trailer checks."""

    __slots__ = ("_aad", "_aead", "_decrypt_into", "_nonce", "_salt", "_salt_int", "_scratch", "replay",
                 "spi", "suite")

    def __init__(self, spi: int, suite: Suite, keymat: bytes, *, window: int = DEFAULT_WINDOW) -> None:
        self.spi = spi
        self.suite = suite
        self._aead, self._salt = make_aead(suite, keymat)
        self._salt_int = int.from_bytes(self._salt, "big")
        self._decrypt_into = self._aead.decrypt_into
        # AAD (SPI ‖ seq) and nonce (salt ‖ IV) of the packet being opened: one pack_into per
        # packet into this scratch, read through two views made once (as in OutboundSA).
        self._scratch = bytearray(_AAD_NONCE.size)
        view = memoryview(self._scratch)
        self._aad = view[:HEADER_LEN]
        self._nonce = view[HEADER_LEN:]
        self.replay = ReplayWindow(window)

    def open(self, packet: bytes | bytearray | memoryview) -> Opened:
        """Verify and strip one ESP packet (raises only EspError subclasses)."""
        view = memoryview(packet)
        out = bytearray(max(len(view) - HEADER_LEN - IV_LEN - ICV_LEN, 0))
        seq, next_header, length = self.open_into(view, memoryview(out))
        return Opened(seq, next_header, bytes(out[:length]))

    def open_into(self, packet: memoryview, out: memoryview) -> tuple[int, int, int]:
        """Verify ``packet`` and decrypt it into ``out``: (seq, next header, inner length).

        Strict order: length, SPI, replay pre-check, decrypt+verify, window update,
        padding and next-header checks. Raises only EspError subclasses.
        """
        n = len(packet)
        if n < MIN_PACKET:
            raise DecodeError(f"ESP packet of {n} bytes is shorter than {MIN_PACKET}",
                              DropReason.TRUNCATED)
        spi, seq, iv = _HEADER_IV.unpack_from(packet, 0)
        if spi != self.spi:
            raise UnknownSpiError(f"packet SPI {spi:08x} is not this SA's {self.spi:08x}")
        replay = self.replay
        top = replay.top
        if seq <= top:
            replay.check(seq)
        ptlen = n - _SEAL_EXTRA
        _AAD_NONCE.pack_into(self._scratch, 0, spi, seq, self._salt_int, iv)
        try:
            self._decrypt_into(self._nonce, packet[HEADER_LEN + IV_LEN:], self._aad, out[:ptlen])
        except InvalidTag:
            raise AuthenticationError(f"ICV check failed for SPI {spi:08x} seq {seq}") from None
        except ValueError:  # cryptography: "buffer must be N bytes" (out is too short)
            raise DecodeError(f"ESP packet of {n} bytes does not fit the buffer",
                              DropReason.TOO_BIG) from None
        # Authentic: only now may the window move (``top`` is unchanged since the pre-check,
        # only this thread touches the window).
        if seq > top:  # the common case, inlined: one store into the ring (esp_udp.replay)
            replay.ring[seq % replay.size] = seq
            replay.top = seq
        else:
            replay.update(seq)
        pad = out[ptlen - 2]
        next_header = out[ptlen - 1]
        if pad == 0:
            bad = False
        elif pad == 1:
            bad = ptlen < 3 or out[ptlen - 3] != 1
        elif pad == 2:
            bad = ptlen < 4 or out[ptlen - 4] != 1 or out[ptlen - 3] != 2
        else:
            bad = _bad_padding(out, ptlen, pad)
        if bad:
            raise DecodeError(f"bad padding (pad length {pad}) in SPI {spi:08x} seq {seq}",
                              DropReason.BAD_PADDING)
        if next_header != NH_IPV6 and next_header != NH_IPV4:
            if next_header == NH_NONE:
                raise DecodeError("dummy packet (next header 59)", DropReason.DUMMY)
            raise DecodeError(f"next header {next_header} is not IPv6 or IPv4",
                              DropReason.BAD_NEXT_HEADER)
        return seq, next_header, ptlen - TRAILER_MIN - pad


def _bad_padding(out: memoryview, ptlen: int, pad: int) -> bool:
    """True unless the ``pad`` bytes before the trailer are 1, 2, .., pad (general case)."""
    length = ptlen - TRAILER_MIN - pad
    return bool(pad) and (length < 0 or out[length:ptlen - TRAILER_MIN] != _PAD[:pad])
