"""SA parameters as plain data — the contract between ike_lite, key files and esp_udp.

One :class:`SAParams` describes the pair of child SAs with one peer, seen from this host::

    {"inner": "fd..", "outer": "198.18.0.2:4500", "suite": "aes256gcm16",
     "spi_in": "c0ffee01", "spi_out": "c0ffee02",
     "key_in": "<hex: key ‖ 4-byte salt>", "key_out": "<hex>"}

``spi_in``/``key_in`` protect what this host *receives* (the peer seals with them);
``spi_out``/``key_out`` what it sends. Keys carry the 4-byte salt at the end (RFC 4106 §8.1,
RFC 7634 §2 — the KEYMAT layout of RFC 7296 §2.17). ike_lite produces exactly this dict;
esp_udp never imports ike_lite.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from esp_udp.errors import ConfigError

SALT_LEN = 4


class Suite(StrEnum):
    """ESP AEAD transforms (IKEv2 ENCR IDs: 20 = AES-GCM-16, 28 = ChaCha20-Poly1305)."""

    AES128GCM16 = "aes128gcm16"
    AES256GCM16 = "aes256gcm16"
    CHACHA20POLY1305 = "chacha20poly1305"

    @property
    def key_len(self) -> int:
        """Cipher key length in bytes, without the salt."""
        return 16 if self is Suite.AES128GCM16 else 32

    @property
    def keymat_len(self) -> int:
        """Key material per direction: key ‖ 4-byte salt."""
        return self.key_len + SALT_LEN

    @property
    def transform_id(self) -> int:
        return 28 if self is Suite.CHACHA20POLY1305 else 20


def parse_suite(value: object) -> Suite:
    try:
        return Suite(str(value))
    except ValueError:
        raise ConfigError(
            f"suite {value!r} is not supported; use one of {', '.join(s.value for s in Suite)}"
        ) from None


def parse_spi(value: object, field: str) -> int:
    """SPI from hex text ("c0ffee01", "0xc0ffee01") or an int; 256..2^32-1 (RFC 4303 §2.1)."""
    if isinstance(value, bool):
        raise ConfigError(f"{field} must be 8 hex digits, not {value!r}")
    if isinstance(value, int):
        spi = value
    elif isinstance(value, str):
        text = value.lower().removeprefix("0x")
        if not text or len(text) > 8 or any(c not in "0123456789abcdef" for c in text):
            raise ConfigError(f"{field} must be up to 8 hex digits (e.g. \"c0ffee01\"), not {value!r}")
        spi = int(text, 16)
    else:
        raise ConfigError(f"{field} must be a hex string, not {type(value).__name__}")
    if not 256 <= spi <= 0xFFFFFFFF:
        raise ConfigError(f"{field} {spi:#x} is reserved; SPIs 0-255 are not allowed (RFC 4303 §2.1)")
    return spi


def parse_key(value: object, field: str, suite: Suite) -> bytes:
    if isinstance(value, bytes):
        key = value
    elif isinstance(value, str):
        try:
            key = bytes.fromhex(value.removeprefix("0x"))
        except ValueError:
            raise ConfigError(f"{field} is not hex") from None
    else:
        raise ConfigError(f"{field} must be a hex string")
    if len(key) != suite.keymat_len:
        raise ConfigError(
            f"{field} has {len(key)} bytes; {suite.value} needs {suite.keymat_len} "
            f"({suite.key_len}-byte key followed by the 4-byte salt)"
        )
    return key


def parse_outer(value: object, field: str = "outer", default_port: int = 4500) -> tuple[str, int]:
    """``"198.18.0.2:4500"`` or ``"198.18.0.2"`` → (address, port); IPv4 outer only."""
    if not isinstance(value, str):
        raise ConfigError(f"{field} must be \"IPv4:port\", e.g. \"198.18.0.2:4500\"")
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host, port_text = value, str(default_port)
    try:
        address = ipaddress.IPv4Address(host)
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{field} {value!r} is not \"IPv4:port\" (e.g. \"198.18.0.2:4500\")") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{field} port {port} is out of range 1-65535")
    return str(address), port


def parse_inner(value: object, field: str = "inner") -> ipaddress.IPv6Address:
    if not isinstance(value, str):
        raise ConfigError(f"{field} must be an IPv6 address string")
    try:
        address = ipaddress.IPv6Address(value.split("/")[0])
    except ValueError:
        raise ConfigError(f"{field} {value!r} is not an IPv6 address") from None
    return address


def parse_inner4(value: object, field: str = "inner4") -> ipaddress.IPv4Address:
    if not isinstance(value, str):
        raise ConfigError(f"{field} must be an IPv4 address string")
    try:
        return ipaddress.IPv4Address(value.split("/")[0])
    except ValueError:
        raise ConfigError(f"{field} {value!r} is not an IPv4 address") from None


@dataclass(frozen=True)
class SAParams:
    """The SA pair with one peer: what ike_lite negotiates or a static-keys file holds.

    ``inner4`` (optional, ``"inner4": "10.x.y.z"`` in the plain dict): the peer's inner IPv4
    address; the tunnel then also carries IPv4 to and from that one address.
    """

    inner: ipaddress.IPv6Address
    outer: tuple[str, int]
    suite: Suite
    spi_in: int
    spi_out: int
    key_in: bytes
    key_out: bytes
    inner4: ipaddress.IPv4Address | None = None

    def __post_init__(self) -> None:
        for field, key in (("key_in", self.key_in), ("key_out", self.key_out)):
            if len(key) != self.suite.keymat_len:
                raise ConfigError(f"{field} has {len(key)} bytes; {self.suite.value} needs "
                                  f"{self.suite.keymat_len}")
        for field, spi in (("spi_in", self.spi_in), ("spi_out", self.spi_out)):
            if not 256 <= spi <= 0xFFFFFFFF:
                raise ConfigError(f"{field} {spi:#x} out of range 256..2^32-1")

    @classmethod
    def from_json(cls, data: object) -> SAParams:
        """From the plain dict (hex strings); ConfigError names the bad field."""
        if not isinstance(data, dict):
            raise ConfigError("a peer must be a JSON object with inner, outer, suite, spi_in, "
                              "spi_out, key_in, key_out")
        missing = [k for k in ("inner", "outer", "spi_in", "spi_out", "key_in", "key_out")
                   if k not in data]
        if missing:
            raise ConfigError(f"peer is missing {', '.join(missing)}")
        suite = parse_suite(data.get("suite", Suite.AES256GCM16.value))
        return cls(
            inner=parse_inner(data["inner"]),
            outer=parse_outer(data["outer"]),
            suite=suite,
            spi_in=parse_spi(data["spi_in"], "spi_in"),
            spi_out=parse_spi(data["spi_out"], "spi_out"),
            key_in=parse_key(data["key_in"], "key_in", suite),
            key_out=parse_key(data["key_out"], "key_out", suite),
            inner4=parse_inner4(data["inner4"]) if data.get("inner4") is not None else None,
        )

    def to_json(self) -> dict[str, Any]:
        """The plain dict form (the inverse of :meth:`from_json`). Contains secrets."""
        data: dict[str, Any] = {
            "inner": str(self.inner),
            "outer": f"{self.outer[0]}:{self.outer[1]}",
            "suite": self.suite.value,
            "spi_in": f"{self.spi_in:08x}",
            "spi_out": f"{self.spi_out:08x}",
            "key_in": self.key_in.hex(),
            "key_out": self.key_out.hex(),
        }
        if self.inner4 is not None:
            data["inner4"] = str(self.inner4)
        return data

    def mirrored(self, inner: ipaddress.IPv6Address, outer: tuple[str, int],
                 inner4: ipaddress.IPv4Address | None = None) -> SAParams:
        """The same SA pair seen from the peer (``inner``/``outer``/``inner4`` are this host's)."""
        return SAParams(inner=inner, outer=outer, suite=self.suite, spi_in=self.spi_out,
                        spi_out=self.spi_in, key_in=self.key_out, key_out=self.key_in, inner4=inner4)

    def public(self) -> dict[str, Any]:
        """Everything but the keys (for records and logs)."""
        data = self.to_json()
        del data["key_in"], data["key_out"]
        return data
