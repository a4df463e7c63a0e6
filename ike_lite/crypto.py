"""Transforms: PRF (RFC 4868), prf+ (RFC 7296 §2.13), AEAD for SK payloads (RFC 5282,
RFC 7634) and the key-exchange groups 31 (RFC 8031), 19 (RFC 5903) and 14 (RFC 3526).

Private keys are built from random bytes the caller passes in; nothing here draws
randomness or reads a clock.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ike_lite.const import DhGroup, EncrId, NotifyType
from ike_lite.errors import DecodeError, IntegrityError, ProtocolError

PRF_KEY_LEN = 32  # PRF_HMAC_SHA2_256: preferred key size = output size (RFC 4868 §2.2)


def prf(key: bytes, data: bytes) -> bytes:
    """PRF_HMAC_SHA2_256."""
    return hmac.new(key, data, hashlib.sha256).digest()


def prf_plus(key: bytes, seed: bytes, length: int) -> bytes:
    """prf+ (RFC 7296 §2.13): T1 = prf(K, S|0x01), Tn = prf(K, Tn-1|S|n)."""
    if length > 255 * 32:
        raise ValueError("prf+ can produce at most 255 blocks")
    out, block, n = b"", b"", 1
    while len(out) < length:
        block = prf(key, block + seed + bytes([n]))
        out += block
        n += 1
    return out[:length]


# ---------------------------------------------------------------------------- AEAD
@dataclass(frozen=True)
class Aead:
    """An AEAD transform as IKE and ESP use it: key ‖ 4-byte salt, 8-byte IV, 16-byte ICV."""

    encr: EncrId
    key_bits: int
    name: str  # strongSwan/contract name: aes256gcm16, aes128gcm16, chacha20poly1305

    salt_len = 4
    iv_len = 8
    icv_len = 16

    @property
    def key_len(self) -> int:
        """Length of keying material: key plus salt (RFC 5282 §7.1, RFC 7634 §2)."""
        return self.key_bits // 8 + self.salt_len

    def seal(self, keymat: bytes, iv: bytes, aad: bytes, plaintext: bytes) -> bytes:
        key, salt = keymat[: -self.salt_len], keymat[-self.salt_len :]
        return self._cipher(key).encrypt(salt + iv, plaintext, aad)

    def open(self, keymat: bytes, iv: bytes, aad: bytes, ciphertext: bytes) -> bytes:
        key, salt = keymat[: -self.salt_len], keymat[-self.salt_len :]
        try:
            return self._cipher(key).decrypt(salt + iv, ciphertext, aad)
        except InvalidTag as exc:
            raise IntegrityError("SK payload failed AEAD verification") from exc

    def _cipher(self, key: bytes) -> AESGCM | ChaCha20Poly1305:
        return ChaCha20Poly1305(key) if self.encr == EncrId.CHACHA20_POLY1305 else AESGCM(key)


AES256GCM16 = Aead(EncrId.AES_GCM_16, 256, "aes256gcm16")
AES128GCM16 = Aead(EncrId.AES_GCM_16, 128, "aes128gcm16")
CHACHA20POLY1305 = Aead(EncrId.CHACHA20_POLY1305, 256, "chacha20poly1305")
AEADS = {a.name: a for a in (AES256GCM16, AES128GCM16, CHACHA20POLY1305)}


def aead_for(encr: int, key_bits: int | None) -> Aead | None:
    if encr == EncrId.CHACHA20_POLY1305 and key_bits in (None, 256):
        return CHACHA20POLY1305
    if encr == EncrId.AES_GCM_16 and key_bits == 256:
        return AES256GCM16
    if encr == EncrId.AES_GCM_16 and key_bits == 128:
        return AES128GCM16
    return None


def seal_sk(aead: Aead, keymat: bytes, iv: bytes, aad: bytes, inner: bytes) -> bytes:
    """SK content (RFC 5282 §3): IV ‖ AEAD(inner ‖ pad-length 0) ‖ ICV."""
    return iv + aead.seal(keymat, iv, aad, inner + b"\x00")


def open_sk(aead: Aead, keymat: bytes, aad: bytes, content: bytes) -> bytes:
    """Verify and decrypt SK content; returns the inner payload chain without padding."""
    if len(content) < aead.iv_len + aead.icv_len + 1:
        raise DecodeError("SK payload shorter than IV + ICV + pad length")
    iv = content[: aead.iv_len]
    plain = aead.open(keymat, iv, aad, content[aead.iv_len :])
    pad = plain[-1]
    if pad + 1 > len(plain):
        raise DecodeError("SK padding longer than the plaintext")
    return plain[: len(plain) - 1 - pad]


# ---------------------------------------------------------------------------- key exchange
MODP2048_P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
    "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
    "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA4836"
    "1C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804"
    "F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6"
    "955817183995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

SUPPORTED_GROUPS = (DhGroup.CURVE25519, DhGroup.ECP_256, DhGroup.MODP_2048)
PUBLIC_LEN = {DhGroup.CURVE25519: 32, DhGroup.ECP_256: 64, DhGroup.MODP_2048: 256}
PRIVATE_RANDOM_LEN = {DhGroup.CURVE25519: 32, DhGroup.ECP_256: 40, DhGroup.MODP_2048: 32}


class KeyExchange:
    """One side of a Diffie-Hellman exchange in ``group``, private key from ``random``."""

    def __init__(self, group: DhGroup, random: bytes) -> None:
        if group not in SUPPORTED_GROUPS:
            raise ValueError(f"unsupported group {group}")
        if len(random) < PRIVATE_RANDOM_LEN[group]:
            raise ValueError("not enough random bytes for the private key")
        self.group = group
        if group == DhGroup.CURVE25519:
            self._x = x25519.X25519PrivateKey.from_private_bytes(random[:32])
            self.public = self._x.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
        elif group == DhGroup.ECP_256:
            d = int.from_bytes(random[:40], "big") % (P256_N - 1) + 1
            self._ec = ec.derive_private_key(d, ec.SECP256R1())
            nums = self._ec.public_key().public_numbers()
            self.public = nums.x.to_bytes(32, "big") + nums.y.to_bytes(32, "big")
        else:
            # 256-bit exponent: RFC 3526 §8 estimates group 14 at ~110 bits of strength.
            self._a = int.from_bytes(random[:32], "big") | (1 << 255)
            self.public = pow(2, self._a, MODP2048_P).to_bytes(256, "big")

    def shared(self, peer_public: bytes) -> bytes:
        """g^ir, padded as RFC 7296 §2.14 wants; ProtocolError for a bad peer value."""
        if len(peer_public) != PUBLIC_LEN[self.group]:
            raise ProtocolError(
                f"KE data of {len(peer_public)} bytes for group {self.group.name}", NotifyType.INVALID_SYNTAX
            )
        try:
            if self.group == DhGroup.CURVE25519:
                secret = self._x.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
                if secret == bytes(32):
                    raise ValueError("all-zero X25519 output")
                return secret
            if self.group == DhGroup.ECP_256:
                peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + peer_public)
                return self._ec.exchange(ec.ECDH(), peer)
        except ValueError as exc:
            raise ProtocolError(
                f"bad {self.group.name} public value: {exc}", NotifyType.INVALID_SYNTAX
            ) from exc
        y = int.from_bytes(peer_public, "big")
        if not 1 < y < MODP2048_P - 1:
            raise ProtocolError("MODP-2048 public value out of range", NotifyType.INVALID_SYNTAX)
        return pow(y, self._a, MODP2048_P).to_bytes(256, "big")
