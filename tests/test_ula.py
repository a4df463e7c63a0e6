"""ula: RFC 4193 §3.2.2 global ID, RFC 4291 Appendix A modified EUI-64, host addresses."""

from __future__ import annotations

import hashlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ula


def test_ntp_timestamp_layout() -> None:
    # 2023-11-14T22:13:20.5Z: seconds since 1900 = 1700000000 + 2208988800, fraction 0.5
    assert ula.ntp_timestamp(1_700_000_000.5).hex() == "e8fe6f8080000000"
    assert ula.ntp_timestamp(0).hex() == "83aa7e8000000000"


def test_modified_eui64_rfc4291_appendix_a() -> None:
    # RFC 4291 App. A: IEEE 48-bit MAC 34-56-78-9A-BC-DE -> 36-56-78-FF-FE-9A-BC-DE
    assert ula.modified_eui64("34:56:78:9a:bc:de").hex() == "365678fffe9abcde"
    assert ula.modified_eui64("34-56-78-9A-BC-DE") == ula.modified_eui64(bytes.fromhex("3456789abcde"))
    # The universal/local bit is inverted, not set: a locally administered MAC clears it.
    assert ula.modified_eui64("02:00:00:00:00:01").hex() == "000000fffe000001"


@pytest.mark.parametrize("bad", ["", "00:11:22:33:44", "zz:11:22:33:44:55", "00:11-22:33:44:55"])
def test_bad_mac(bad: str) -> None:
    with pytest.raises(ula.UlaError):
        ula.modified_eui64(bad)


def test_global_id_rfc4193_layout_pinned() -> None:
    ntp = ula.ntp_timestamp(1_700_000_000.5)
    eui = ula.modified_eui64("34:56:78:9a:bc:de")
    # SHA-1(e8fe6f8080000000 ‖ 365678fffe9abcde) computed with `openssl dgst -sha1`:
    # 5c3c...1cc63; RFC 4193: the global ID is the least significant 40 bits.
    gid = ula.global_id(ntp, eui)
    assert gid == hashlib.sha1(ntp + eui).digest()[15:20]
    assert gid.hex() == EXPECTED_GID
    net = ula.prefix_from_global_id(gid)
    assert net.prefixlen == 48
    assert net.network_address.packed[0] == 0xFD
    assert net.network_address.packed[1:6] == gid
    assert net == ula.account_prefix(1_700_000_000.5, eui)


def test_host_address_and_labels() -> None:
    net = ipaddress.IPv6Network("fd12:3456:789a::/48")
    iid = bytes.fromhex("365678fffe9abcde")
    addr = ula.host_address(net, iid)
    assert addr == ipaddress.IPv6Address("fd12:3456:789a:0:3656:78ff:fe9a:bcde")
    sub7 = ipaddress.IPv6Address("fd12:3456:789a:7:3656:78ff:fe9a:bcde")
    assert ula.host_address(net, iid, subnet=7) == sub7
    label = ula.autotunnel_label(iid)
    assert label == "AutoTunnel-36-56-78-FF-FE-9A-BC-DE"
    assert ula.iid_from_autotunnel_label(label.lower()) == iid
    with pytest.raises(ula.UlaError):
        ula.host_address("fd00::/64", iid)
    with pytest.raises(ula.UlaError):
        ula.iid_from_autotunnel_label("AutoTunnel-36-56")


def test_iid_from_public_key_stable_and_local() -> None:
    key = bytes(range(32))
    iid = ula.iid_from_public_key(key)
    assert iid == ula.iid_from_public_key(key)
    assert len(iid) == 8
    assert iid[0] & 0x03 == 0  # u/l bit "local" in modified EUI-64 terms, not group
    assert iid != ula.iid_from_public_key(bytes(range(1, 33)))
    assert ula.kerberos_realm(key) == "LKDC:SHA1." + hashlib.sha1(key).hexdigest().upper()


@given(st.binary(min_size=6, max_size=6))
def test_eui64_roundtrip_structure(mac: bytes) -> None:
    eui = ula.modified_eui64(mac)
    assert eui[3:5] == b"\xff\xfe"
    assert eui[0] ^ 0x02 == mac[0]
    assert eui[1:3] + eui[5:] == mac[1:3] + mac[3:]
    assert ula.iid_from_autotunnel_label(ula.autotunnel_label(eui)) == eui


EXPECTED_GID = "d062f1cc63"  # last 5 bytes of 5c3c2fc456f651f9cee246044ac99fd062f1cc63
