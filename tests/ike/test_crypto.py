"""Published vectors through ike_lite's transforms (RFC 7748, RFC 4231/4868, RFC 8439, GCM spec)."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from ike_lite.const import DhGroup
from ike_lite.crypto import (
    AES128GCM16,
    AES256GCM16,
    CHACHA20POLY1305,
    MODP2048_P,
    KeyExchange,
    open_sk,
    prf,
    prf_plus,
    seal_sk,
)
from ike_lite.errors import IntegrityError, ProtocolError
from ike_lite.keys import child_keymat, derive_ike_keys, natd_hash, psk_auth

H = bytes.fromhex


def test_x25519_rfc7748_section_6_1() -> None:
    alice = KeyExchange(
        DhGroup.CURVE25519, H("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    )
    bob = KeyExchange(
        DhGroup.CURVE25519, H("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    )
    assert alice.public == H("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert bob.public == H("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = H("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert alice.shared(bob.public) == shared == bob.shared(alice.public)


def test_x25519_rejects_low_order_point() -> None:
    alice = KeyExchange(DhGroup.CURVE25519, bytes(range(32)))
    with pytest.raises(ProtocolError):
        alice.shared(bytes(32))  # the zero point gives an all-zero secret (RFC 8031 §2.3)


@pytest.mark.parametrize(
    ("key", "data", "mac"),
    [
        # RFC 4231 §4.2 (= RFC 4868 §2.7.1 PRF_HMAC_SHA2_256 case 1)
        (b"\x0b" * 20, b"Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
        # RFC 4231 §4.3 case 2
        (
            b"Jefe",
            b"what do ya want for nothing?",
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        ),
        # RFC 4231 §4.4 case 3
        (b"\xaa" * 20, b"\xdd" * 50, "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
        # RFC 4231 §4.7 case 6: key longer than the block size
        (
            b"\xaa" * 131,
            b"Test Using Larger Than Block-Size Key - Hash Key First",
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        ),
    ],
)
def test_prf_hmac_sha256_vectors(key: bytes, data: bytes, mac: str) -> None:
    assert prf(key, data).hex() == mac


@pytest.mark.parametrize("length", [1, 31, 32, 33, 64, 100, 212, 1000])
def test_prf_plus_equals_hkdf_expand(length: int) -> None:
    # prf+ (RFC 7296 §2.13) is HKDF-Expand (RFC 5869 §2.3) with PRK=K, info=S: an independent oracle.
    key, seed = H("0b" * 32), b"Ni" * 16 + b"Nr" * 16 + bytes(range(16))
    oracle = HKDFExpand(hashes.SHA256(), length, seed).derive(key)
    assert prf_plus(key, seed, length) == oracle


def test_prf_plus_first_blocks_by_hand() -> None:
    key, seed = b"k" * 32, b"seed"
    t1 = hmac.new(key, seed + b"\x01", hashlib.sha256).digest()
    t2 = hmac.new(key, t1 + seed + b"\x02", hashlib.sha256).digest()
    assert prf_plus(key, seed, 64) == t1 + t2


def test_ike_key_layout_aead() -> None:
    keys = derive_ike_keys(b"s" * 32, b"i" * 32, b"r" * 32, b"I" * 8, b"R" * 8, 36)
    stream = prf_plus(b"s" * 32, b"i" * 32 + b"r" * 32 + b"I" * 8 + b"R" * 8, 32 * 3 + 72)
    assert keys.sk_d == stream[:32] and keys.sk_ei == stream[32:68] and keys.sk_er == stream[68:104]
    assert keys.sk_pi == stream[104:136] and keys.sk_pr == stream[136:168]


def test_child_keymat_order_and_pfs() -> None:
    ir, ri = child_keymat(b"d" * 32, b"i" * 32, b"r" * 32, 36)
    assert ir + ri == prf_plus(b"d" * 32, b"i" * 32 + b"r" * 32, 72)
    ir2, _ = child_keymat(b"d" * 32, b"i" * 32, b"r" * 32, 36, shared=b"g" * 32)
    assert ir2 == prf_plus(b"d" * 32, b"g" * 32 + b"i" * 32 + b"r" * 32, 36)


def test_psk_auth_formula() -> None:
    inner = hmac.new(b"psk", b"Key Pad for IKEv2", hashlib.sha256).digest()
    macid = hmac.new(b"p" * 32, b"idbody", hashlib.sha256).digest()
    expected = hmac.new(inner, b"msg" + b"nonce" + macid, hashlib.sha256).digest()
    assert psk_auth(b"psk", b"msg", b"nonce", b"p" * 32, b"idbody") == expected


def test_natd_hash() -> None:
    expected = hashlib.sha1(b"I" * 8 + b"R" * 8 + bytes([198, 18, 0, 1]) + (4500).to_bytes(2, "big")).digest()
    assert natd_hash(b"I" * 8, b"R" * 8, "198.18.0.1", 4500) == expected


def test_aes_gcm_mcgrew_viega_case_2() -> None:
    # GCM spec test case 2: zero 128-bit key, zero IV, 16 zero bytes (salt ‖ IV = 12 zero bytes).
    out = AES128GCM16.seal(bytes(16) + bytes(4), bytes(8), b"", bytes(16))
    assert out.hex() == "0388dace60b6a392f328c2b971b2fe78" + "ab6e47d42cec13bdf53a67b21257bddf"


def test_chacha20_poly1305_rfc8439_2_8_2() -> None:
    key = bytes(range(0x80, 0xA0))
    plaintext = (
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for "
        b"the future, sunscreen would be it."
    )
    out = CHACHA20POLY1305.seal(
        key + H("07000000"), H("4041424344454647"), H("50515253c0c1c2c3c4c5c6c7"), plaintext
    )
    assert out[:16].hex() == "d31a8d34648e60db7b86afbc53ef7ec2"
    assert out[-16:].hex() == "1ae10b594f09e26a7e902ecbd0600691"


@pytest.mark.parametrize("aead", [AES256GCM16, CHACHA20POLY1305])
def test_sk_seal_open_and_tamper(aead: object) -> None:
    from ike_lite.crypto import Aead

    assert isinstance(aead, Aead)
    key = bytes(range(aead.key_len))
    content = seal_sk(aead, key, b"\x00" * 7 + b"\x01", b"header", b"payloads")
    assert open_sk(aead, key, b"header", content) == b"payloads"
    with pytest.raises(IntegrityError):
        open_sk(aead, key, b"headeR", content)
    bad = content[:-1] + bytes([content[-1] ^ 1])
    with pytest.raises(IntegrityError):
        open_sk(aead, key, b"header", bad)


def test_modp2048_prime_is_rfc3526_formula() -> None:
    # RFC 3526 §3: p = 2^2048 - 2^1984 - 1 + 2^64 * { [2^1918 pi] + 124476 }, pi by Machin's formula.
    def atan_inv(x: int, scale: int) -> int:
        total = term = scale // x
        n, sign = 1, -1
        while term:
            term //= x * x
            total += sign * (term // (2 * n + 1))
            sign, n = -sign, n + 1
        return total

    s = 1 << (1918 + 64)
    pi_scaled = (16 * atan_inv(5, s) - 4 * atan_inv(239, s)) >> 64
    assert MODP2048_P == 2**2048 - 2**1984 - 1 + 2**64 * (pi_scaled + 124476)


@pytest.mark.parametrize("group", [DhGroup.CURVE25519, DhGroup.ECP_256, DhGroup.MODP_2048])
def test_groups_agree(group: DhGroup) -> None:
    a, b = KeyExchange(group, b"\x01" * 40), KeyExchange(group, b"\x02" * 40)
    assert a.shared(b.public) == b.shared(a.public)
    with pytest.raises(ProtocolError):
        a.shared(b.public[:-1])


def test_ecp256_rejects_point_off_curve() -> None:
    a = KeyExchange(DhGroup.ECP_256, b"\x01" * 40)
    with pytest.raises(ProtocolError):
        a.shared(b"\x01" * 64)
