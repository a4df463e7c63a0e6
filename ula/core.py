"""Pure ULA derivations; see the package docstring."""

from __future__ import annotations

import hashlib
import ipaddress
import re
import struct

#: Seconds between the NTP era-0 epoch (1900-01-01) and the Unix epoch (1970-01-01).
NTP_EPOCH_OFFSET = 2_208_988_800


class UlaError(ValueError):
    """A value given to a ULA function is malformed (bad MAC, bad prefix, bad label)."""


def ntp_timestamp(unix_time: float) -> bytes:
    """The 64-bit NTP timestamp (RFC 5905 §6: 32-bit seconds ‖ 32-bit fraction) of a Unix time."""
    if unix_time < -NTP_EPOCH_OFFSET:
        raise UlaError("time before the NTP epoch (1900)")
    seconds = int(unix_time) + NTP_EPOCH_OFFSET
    fraction = int((unix_time - int(unix_time)) * (1 << 32)) & 0xFFFFFFFF
    return struct.pack("!II", seconds & 0xFFFFFFFF, fraction)


def global_id(ntp_time: bytes, eui64: bytes) -> bytes:
    """RFC 4193 §3.2.2: low 40 bits of SHA-1(NTP timestamp ‖ EUI-64), as 5 bytes."""
    if len(ntp_time) != 8:
        raise UlaError(f"NTP timestamp must be 8 bytes, got {len(ntp_time)}")
    if len(eui64) != 8:
        raise UlaError(f"EUI-64 must be 8 bytes, got {len(eui64)}")
    digest = hashlib.sha1(ntp_time + eui64, usedforsecurity=False).digest()
    return digest[-5:]


def prefix_from_global_id(gid: bytes) -> ipaddress.IPv6Network:
    """The /48 ``fd00::/8 + global ID`` (L bit set: locally assigned)."""
    if len(gid) != 5:
        raise UlaError(f"global ID must be 5 bytes, got {len(gid)}")
    return ipaddress.IPv6Network((bytes([0xFD]) + gid + bytes(10), 48))


def account_prefix(unix_time: float, eui64: bytes) -> ipaddress.IPv6Network:
    """An account's ULA /48, from the time of creation and a machine EUI-64."""
    return prefix_from_global_id(global_id(ntp_timestamp(unix_time), eui64))


_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}([:-]?)[0-9a-fA-F]{2}(\1[0-9a-fA-F]{2}){4}$")


def parse_mac(mac: str | bytes) -> bytes:
    """A 48-bit MAC from ``00:1b:63:84:45:e6``, ``00-1B-...``, ``001b638445e6`` or 6 bytes."""
    if isinstance(mac, bytes):
        if len(mac) != 6:
            raise UlaError(f"MAC must be 6 bytes, got {len(mac)}")
        return mac
    if not _MAC_RE.match(mac):
        raise UlaError(f"not a MAC address: {mac!r} (expected six hex octets like 00:1b:63:84:45:e6)")
    return bytes.fromhex(re.sub(r"[:-]", "", mac))


def modified_eui64(mac: str | bytes) -> bytes:
    """RFC 4291 Appendix A: insert FF-FE in the middle and invert the universal/local bit."""
    raw = parse_mac(mac)
    return bytes([raw[0] ^ 0x02]) + raw[1:3] + b"\xff\xfe" + raw[3:6]


def iid_from_public_key(public_key: bytes) -> bytes:
    """A 64-bit interface ID from a host's identity public key.

    SHA-256 over a domain-separation label and the key, first 8 bytes, with the
    universal/local bit cleared (modified EUI-64 semantics: "locally administered")
    and the group bit cleared. Stable for a key; different keys collide with
    probability 2^-62.
    """
    if not public_key:
        raise UlaError("public key is empty")
    digest = hashlib.sha256(b"btmm interface id\x00" + public_key).digest()
    return bytes([digest[0] & 0xFC]) + digest[1:8]


def host_address(
    prefix: ipaddress.IPv6Network | str, iid: bytes, subnet: int = 0
) -> ipaddress.IPv6Address:
    """/48 prefix ‖ 16-bit subnet ID ‖ 64-bit interface ID."""
    net = ipaddress.IPv6Network(prefix) if isinstance(prefix, str) else prefix
    if net.prefixlen != 48:
        raise UlaError(f"account prefix must be a /48, got /{net.prefixlen}")
    if len(iid) != 8:
        raise UlaError(f"interface ID must be 8 bytes, got {len(iid)}")
    if not 0 <= subnet <= 0xFFFF:
        raise UlaError(f"subnet ID must fit 16 bits, got {subnet}")
    return ipaddress.IPv6Address(net.network_address.packed[:6] + struct.pack("!H", subnet) + iid)


def autotunnel_label(iid: bytes) -> str:
    """``AutoTunnel-XX-XX-XX-XX-XX-XX-XX-XX`` from an interface ID (BTMM's A-record label)."""
    if len(iid) != 8:
        raise UlaError(f"interface ID must be 8 bytes, got {len(iid)}")
    return "AutoTunnel-" + "-".join(f"{b:02X}" for b in iid)


_LABEL_RE = re.compile(r"^AutoTunnel-([0-9A-Fa-f]{2}(?:-[0-9A-Fa-f]{2}){7})$", re.IGNORECASE)


def iid_from_autotunnel_label(label: str) -> bytes:
    """Inverse of :func:`autotunnel_label` (case-insensitive, as DNS labels are)."""
    m = _LABEL_RE.match(label)
    if not m:
        raise UlaError(f"not an AutoTunnel label: {label!r}")
    return bytes.fromhex(m.group(1).replace("-", ""))


def kerberos_realm(public_key: bytes) -> str:
    """``LKDC:SHA1.<40 uppercase hex>`` over the host's identity public key."""
    if not public_key:
        raise UlaError("public key is empty")
    return "LKDC:SHA1." + hashlib.sha1(public_key, usedforsecurity=False).hexdigest().upper()
