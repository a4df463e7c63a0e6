"""TSIG keys: BIND ``key`` clauses, the zone each key may update, and per-key rate limits.

A key file holds one or more BIND key clauses, as written by ``tsig-keygen``::

    key "btmm-bob.members.example" {
        algorithm hmac-sha256;
        secret "base64…";
    };

Every key is bound to exactly one served zone (see ``tools/serve.py`` for the rule).
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from dataclasses import dataclass, field

import dns.name
import dns.tsig

ALGORITHMS = {
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha1": dns.tsig.HMAC_SHA1,
}

_KEY_RE = re.compile(
    r'key\s+"?(?P<name>[^"\s{]+)"?\s*\{(?P<body>[^}]*)\}\s*;', re.IGNORECASE | re.DOTALL)
_ALG_RE = re.compile(r"algorithm\s+\"?(?P<alg>[A-Za-z0-9.-]+)\"?\s*;", re.IGNORECASE)
_SECRET_RE = re.compile(r'secret\s+"(?P<secret>[A-Za-z0-9+/=\s]+)"\s*;', re.IGNORECASE)


class KeyFileError(Exception):
    """A key file that is not a BIND key clause with a known algorithm and a base64 secret."""


@dataclass(frozen=True)
class KeyEntry:
    key: dns.tsig.Key
    zone: dns.name.Name

    @property
    def name(self) -> dns.name.Name:
        return self.key.name

    @functools.cached_property
    def name_text(self) -> str:
        return self.key.name.to_text()


def parse_key_file(text: str, source: str) -> list[dns.tsig.Key]:
    """All key clauses of a BIND-format key file."""
    text = re.sub(r"(#|//)[^\n]*", "", text)
    keys: list[dns.tsig.Key] = []
    for match in _KEY_RE.finditer(text):
        body = match.group("body")
        alg = _ALG_RE.search(body)
        secret = _SECRET_RE.search(body)
        if alg is None or secret is None:
            raise KeyFileError(f"{source}: key {match.group('name')} needs both 'algorithm' and 'secret'")
        algorithm = ALGORITHMS.get(alg.group("alg").lower())
        if algorithm is None:
            raise KeyFileError(f"{source}: algorithm {alg.group('alg')} is not supported; use hmac-sha256")
        try:
            raw = base64.b64decode("".join(secret.group("secret").split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise KeyFileError(f"{source}: the secret of key {match.group('name')} is not base64") from exc
        try:
            name = dns.name.from_text(match.group("name"))
        except dns.name.NameTooLong as exc:
            raise KeyFileError(f"{source}: key name too long") from exc
        keys.append(dns.tsig.Key(name, raw, algorithm))
    if not keys:
        raise KeyFileError(f"{source}: no 'key \"NAME\" {{ algorithm …; secret \"…\"; }};' clause found")
    return keys


@dataclass
class RateLimiter:
    """A token bucket per key: ``rate`` updates per second, bursts of ``burst``."""

    rate: float
    burst: float
    _buckets: dict[dns.name.Name, tuple[float, float]] = field(default_factory=dict)

    def allow(self, key: dns.name.Name, now: float) -> bool:
        if self.rate <= 0:
            return True
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True
