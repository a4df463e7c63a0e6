"""The plain-data SA contract (what ike_lite hands out and static-keys files hold)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from esp_udp.errors import ConfigError
from esp_udp.keylog import esp_sa_line, esp_sa_lines
from esp_udp.sa import SAParams, Suite

GOOD: dict[str, Any] = {
    "inner": "fd00:1::2", "outer": "198.18.0.2:4500", "suite": "aes256gcm16",
    "spi_in": "c0ffee01", "spi_out": "c0ffee02", "key_in": "11" * 36, "key_out": "22" * 36,
}


def test_round_trip() -> None:
    params = SAParams.from_json(GOOD)
    assert params.inner == ipaddress.IPv6Address("fd00:1::2")
    assert params.outer == ("198.18.0.2", 4500)
    assert params.spi_in == 0xC0FFEE01 and params.key_in == b"\x11" * 36
    assert params.to_json() == GOOD
    assert "key_in" not in params.public()


def test_mirrored() -> None:
    params = SAParams.from_json(GOOD)
    other = params.mirrored(ipaddress.IPv6Address("fd00:1::1"), ("198.18.0.1", 4500))
    assert (other.spi_in, other.spi_out, other.key_in, other.key_out) == \
        (params.spi_out, params.spi_in, params.key_out, params.key_in)


@pytest.mark.parametrize(("suite", "length"), [("aes128gcm16", 20), ("aes256gcm16", 36),
                                              ("chacha20poly1305", 36)])
def test_key_lengths(suite: str, length: int) -> None:
    data = dict(GOOD, suite=suite, key_in="aa" * length, key_out="bb" * length)
    assert len(SAParams.from_json(data).key_out) == length == Suite(suite).keymat_len
    with pytest.raises(ConfigError, match="key_in has"):
        SAParams.from_json(dict(data, key_in="aa" * (length - 4)))


@pytest.mark.parametrize(("field", "value", "match"), [
    ("suite", "aes128cbc", "not supported"),
    ("spi_in", "xyz", "hex"),
    ("spi_in", "000000ff", "reserved"),
    ("spi_out", "123456789", "8 hex"),
    ("key_out", "zz", "not hex"),
    ("outer", "198.18.0.2:99999", "out of range"),
    ("outer", "host.example:4500", "IPv4"),
    ("inner", "not-an-address", "IPv6"),
])
def test_bad_fields(field: str, value: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SAParams.from_json(dict(GOOD, **{field: value}))


def test_missing_and_wrong_type() -> None:
    with pytest.raises(ConfigError, match="missing key_out"):
        SAParams.from_json({k: v for k, v in GOOD.items() if k != "key_out"})
    with pytest.raises(ConfigError):
        SAParams.from_json(["not", "a", "dict"])


def test_keylog_lines() -> None:
    params = SAParams.from_json(dict(GOOD, suite="chacha20poly1305"))
    lines = esp_sa_lines(params)
    assert lines[0] == ('# "IPv4","*","*","0xc0ffee01","ChaCha20-Poly1305 [RFC7634]",'
                        '"0x' + "11" * 36 + '","NULL",""')
    assert "0xc0ffee02" in lines[1]
    assert esp_sa_line(1000, Suite.AES128GCM16, bytes(20)) == (
        '"IPv4","*","*","0x000003e8","AES-GCM with 16 octet ICV [RFC4106]","0x' + "00" * 20
        + '","NULL",""')
