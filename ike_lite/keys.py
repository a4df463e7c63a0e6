"""Key derivation and authentication (RFC 7296 §2.13–2.18, §2.15, §2.23, §2.6).

* ``SKEYSEED = prf(Ni | Nr, g^ir)``; after an IKE SA rekey
  ``SKEYSEED = prf(SK_d(old), g^ir(new) | Ni | Nr)``.
* ``{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)``;
  with an AEAD there are no SK_a keys and each SK_e carries its 4-byte salt at the end.
* CHILD ``KEYMAT = prf+(SK_d, [g^ir(new) |] Ni | Nr)``: first the initiator→responder key,
  then responder→initiator.
* PSK ``AUTH = prf(prf(PSK, "Key Pad for IKEv2"), RealMessage | Nonce(peer) | prf(SK_p, ID'))``.
* NAT-D ``SHA-1(SPIi | SPIr | IP | port)``; stateless cookie ``v | HMAC(secret, Ni | IPi | SPIi)``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

from ike_lite.crypto import PRF_KEY_LEN, prf, prf_plus

KEY_PAD = b"Key Pad for IKEv2"


@dataclass(frozen=True)
class IkeKeys:
    """The IKE SA's keys (AEAD suites: no SK_a)."""

    sk_d: bytes
    sk_ei: bytes
    sk_er: bytes
    sk_pi: bytes
    sk_pr: bytes
    skeyseed: bytes


def skeyseed_initial(nonce_i: bytes, nonce_r: bytes, shared: bytes) -> bytes:
    return prf(nonce_i + nonce_r, shared)


def skeyseed_rekey(sk_d_old: bytes, shared: bytes, nonce_i: bytes, nonce_r: bytes) -> bytes:
    return prf(sk_d_old, shared + nonce_i + nonce_r)


def derive_ike_keys(
    skeyseed: bytes, nonce_i: bytes, nonce_r: bytes, spi_i: bytes, spi_r: bytes, encr_len: int
) -> IkeKeys:
    n = PRF_KEY_LEN
    stream = prf_plus(skeyseed, nonce_i + nonce_r + spi_i + spi_r, 3 * n + 2 * encr_len)
    sk_d = stream[:n]
    sk_ei = stream[n : n + encr_len]
    sk_er = stream[n + encr_len : n + 2 * encr_len]
    sk_pi = stream[n + 2 * encr_len : 2 * n + 2 * encr_len]
    sk_pr = stream[2 * n + 2 * encr_len :]
    return IkeKeys(sk_d, sk_ei, sk_er, sk_pi, sk_pr, skeyseed)


def child_keymat(
    sk_d: bytes, nonce_i: bytes, nonce_r: bytes, key_len: int, shared: bytes = b""
) -> tuple[bytes, bytes]:
    """(initiator→responder key, responder→initiator key), each ``key_len`` bytes."""
    stream = prf_plus(sk_d, shared + nonce_i + nonce_r, 2 * key_len)
    return stream[:key_len], stream[key_len:]


def psk_auth(psk: bytes, real_message: bytes, peer_nonce: bytes, sk_p: bytes, id_body: bytes) -> bytes:
    signed_octets = real_message + peer_nonce + prf(sk_p, id_body)
    return prf(prf(psk, KEY_PAD), signed_octets)


def natd_hash(spi_i: bytes, spi_r: bytes, address: str, port: int) -> bytes:
    packed = ipaddress.ip_address(address).packed
    return hashlib.sha1(spi_i + spi_r + packed + port.to_bytes(2, "big")).digest()  # noqa: S324 - RFC 7296


def cookie(secret: bytes, version: int, nonce_i: bytes, address: str, spi_i: bytes) -> bytes:
    mac = hmac.new(secret, nonce_i + ipaddress.ip_address(address).packed + spi_i, hashlib.sha256)
    return bytes([version & 0xFF]) + mac.digest()[:16]
