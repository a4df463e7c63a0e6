"""Published vectors: RFC 7634 Appendix A (ESP with ChaCha20-Poly1305) and the McGrew–Viega
GCM test cases in RFC 4106 key ‖ salt form (as strongSwan's test_vectors/aes_gcm.c uses them)."""

from __future__ import annotations

import pytest

from esp_udp.esp import NH_IPV4, InboundSA, OutboundSA, make_aead
from esp_udp.sa import Suite

# RFC 7634 Appendix A: key 80..9f, salt a0a1a2a3, SPI 0x01020304, seq 5, IV 1011121314151617,
# inner packet an 84-byte IPv4 ICMP echo request 198.51.100.5 -> 192.0.2.5.
RFC7634_KEYMAT = bytes(range(0x80, 0xA0)) + bytes.fromhex("a0a1a2a3")
RFC7634_SPI = 0x01020304
RFC7634_SEQ = 5
RFC7634_IV = bytes.fromhex("1011121314151617")
RFC7634_INNER = bytes.fromhex(
    "45000054a6f200004001e778c6336405c000020508005b7a3a080000553bec10"
    "0007362708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20212223"
    "2425262728292a2b2c2d2e2f30313233343536 37".replace(" ", ""))
RFC7634_CIPHERTEXT_ICV = bytes.fromhex(
    "24039428b97f417e3c13753a4f05087b67c352e6a7fab1b982d466ef407ae5c6"
    "14ee8099d52844eb61aa95dfab4c02f72aa71e7c4c4f64c9befe2facc638e8f3"
    "cbec163fac469b502773f6fb94e664da9165b82829f641e076aaa8266b7fb0f7"
    "b11b369907e1ad43")
RFC7634_PACKET = (RFC7634_SPI.to_bytes(4, "big") + RFC7634_SEQ.to_bytes(4, "big") + RFC7634_IV
                  + RFC7634_CIPHERTEXT_ICV)


def test_rfc7634_appendix_a_seal() -> None:
    sa = OutboundSA(RFC7634_SPI, Suite.CHACHA20POLY1305, RFC7634_KEYMAT)
    sa.seq = RFC7634_SEQ - 1
    assert len(RFC7634_INNER) == 84
    packet = sa.seal(RFC7634_INNER, NH_IPV4, iv=RFC7634_IV)
    assert packet == RFC7634_PACKET


def test_rfc7634_appendix_a_open() -> None:
    sa = InboundSA(RFC7634_SPI, Suite.CHACHA20POLY1305, RFC7634_KEYMAT)
    opened = sa.open(RFC7634_PACKET)
    assert (opened.seq, opened.next_header, opened.payload) == (5, NH_IPV4, RFC7634_INNER)


GCM_PLAIN = bytes.fromhex(
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
    "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255")
GCM_IV = bytes.fromhex("facedbaddecaf888")
GCM_KEY128 = bytes.fromhex("feffe9928665731c6d6a8f9467308308")
GCM_SALT = bytes.fromhex("cafebabe")


@pytest.mark.parametrize(("suite", "keymat", "aad", "plain", "expected"), [
    # McGrew–Viega test case 3 (AES-128)
    (Suite.AES128GCM16, GCM_KEY128 + GCM_SALT, b"", GCM_PLAIN,
     "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
     "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985"
     "4d5c2af327cd64a62cf35abd2ba6fab4"),
    # test case 4 (AES-128 with AAD)
    (Suite.AES128GCM16, GCM_KEY128 + GCM_SALT,
     bytes.fromhex("feedfacedeadbeeffeedfacedeadbeefabaddad2"), GCM_PLAIN[:60],
     "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
     "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e0915bc94fbc"
     "3221a5db94fae95ae7121a47"),
    # test case 15 (AES-256)
    (Suite.AES256GCM16, GCM_KEY128 * 2 + GCM_SALT, b"", GCM_PLAIN,
     "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
     "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad"
     "b094dac5d93471bdec1a502270e3cc6c"),
    # test case 2: zero key, zero salt and IV, 16 zero bytes (btmm-facts §4.5)
    (Suite.AES128GCM16, bytes(20), b"", bytes(16),
     "0388dace60b6a392f328c2b971b2fe78ab6e47d42cec13bdf53a67b21257bddf"),
])
def test_gcm_vectors_key_salt_layout(suite: Suite, keymat: bytes, aad: bytes, plain: bytes,
                                     expected: str) -> None:
    aead, salt = make_aead(suite, keymat)
    iv = bytes(8) if keymat == bytes(20) else GCM_IV
    assert aead.encrypt(salt + iv, plain, aad or None).hex() == expected


def test_gcm_esp_packet_layout() -> None:
    """An ESP packet from the GCM test-case key opens, and its nonce/AAD are as RFC 4106 says."""
    keymat = GCM_KEY128 + GCM_SALT
    out = OutboundSA(0x1000, Suite.AES128GCM16, keymat)
    packet = out.seal(b"\x60" + bytes(39), iv=GCM_IV)
    aead, salt = make_aead(Suite.AES128GCM16, keymat)
    plain = aead.decrypt(salt + packet[8:16], packet[16:], packet[:8])
    assert packet[8:16] == GCM_IV and plain[-2:] == bytes((2, 41)) and plain[-4:-2] == b"\x01\x02"
