"""Unique Local IPv6 addresses for btmm (RFC 4193, RFC 4291 Appendix A).

How this works: an account owns one ULA /48, ``fd`` followed by a 40-bit global ID.
RFC 4193 §3.2.2 derives that ID as the low 40 bits of SHA-1 over the 64-bit NTP
timestamp of "now" concatenated with an EUI-64 of the generating machine. Every host
of the account lives in subnet 0 of that /48; its 64-bit interface ID is either the
modified EUI-64 of a MAC (what Apple's BTMM did) or a hash of the host's identity
public key (what btmm does by default, so the address follows the key, not the NIC).

Everything here is a pure function: time, MAC and keys come in as parameters.
"""

from ula.core import (
    NTP_EPOCH_OFFSET,
    UlaError,
    account_prefix,
    autotunnel_label,
    global_id,
    host_address,
    iid_from_autotunnel_label,
    iid_from_public_key,
    kerberos_realm,
    modified_eui64,
    ntp_timestamp,
    parse_mac,
    prefix_from_global_id,
)

__all__ = [
    "NTP_EPOCH_OFFSET",
    "UlaError",
    "account_prefix",
    "autotunnel_label",
    "global_id",
    "host_address",
    "iid_from_autotunnel_label",
    "iid_from_public_key",
    "kerberos_realm",
    "modified_eui64",
    "ntp_timestamp",
    "parse_mac",
    "prefix_from_global_id",
]
