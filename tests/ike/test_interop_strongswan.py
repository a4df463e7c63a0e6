"""Interop with strongSwan 5.9.8 (charon + kernel-libipsec) in network namespaces.

Two topologies, each with one charon reused by several checks (in file order):

* direct: btmm ``b`` (198.18.0.1) ↔ strongSwan ``s`` (198.18.0.2);
* NAT: btmm ``h`` (10.77.0.2) behind router ``r`` (nft masquerade remapping source ports to
  40000-50000, and a port forward 198.18.0.1:14500 → 10.77.0.2:4500 like a NAT-PMP mapping)
  ↔ strongSwan ``s`` (198.18.0.2).

Our side runs ``python -m tools.tunnel_ike --datapath``: ike_lite keys esp_udp's Datapath
(TUN + ESP-in-UDP), so ping6 and a TCP transfer cross the tunnel through our own ESP.
strongSwan's log (``ike = 4, chd = 4``) confirms suites, rekeys and deletes.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tools.netns import Lab
from tools.peers.strongswan import Charon, child_sas, ike_sas, logged_secrets

from .interop import (
    BTMM_ID,
    PSK,
    SWAN_ID,
    SWAN_INNER,
    BackgroundPing,
    Capture,
    Runner,
    ping,
    start_charon,
    start_tcp_server,
    swan_conn,
    tcp_transfer,
)

pytestmark = [pytest.mark.netns, pytest.mark.peer]

ESP_PFS = "aes256gcm16-x25519,aes256gcm16"  # PFS on rekeys accepted, not required


@dataclass
class Topo:
    lab: Lab
    tmp: Path
    ours: str  # namespace of btmm
    swan: str  # namespace of strongSwan
    charon: Charon
    runner: Runner
    swan_addr: str
    btmm_public: str  # where strongSwan reaches us (our address, or the NAT's forward)
    btmm_port: int

    def restart_runner(self, *extra: str, psk: bytes = PSK) -> Runner:
        self.lab.stop(self.runner.proc)
        _wait_swan_clean(self)  # strongSwan must not reuse an IKE SA of the old process
        self.runner = Runner(
            self.lab, self.ours, self.tmp, "--datapath", "--ike-port", "500", *extra, psk=psk
        )
        return self.runner


def _swan_state(charon: Charon) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    raw = charon.list_sas()
    return ike_sas(raw), [c for c in child_sas(raw) if c.get("state") == "INSTALLED"]


def _wait_swan_clean(topo: Topo) -> None:
    """Terminate whatever strongSwan still has, so the next check starts from nothing."""
    for sa in ike_sas(topo.charon.list_sas()):
        topo.charon.swanctl(
            "--terminate", "--ike-id", sa["uniqueid"], "--force", "--timeout", "2", check=False
        )


# ---------------------------------------------------------------------------------------------- direct
@pytest.fixture(scope="module")
def direct() -> Iterator[Topo]:
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="btmm-ike-") as tmpdir:
        tmp = Path(tmpdir)
        b, s = lab.ns("b"), lab.ns("s")
        lab.veth(b, "vb", s, "vs")
        lab.addr(b, "vb", "198.18.0.1/24")
        lab.addr(s, "vs", "198.18.0.2/24")
        lab.addr(s, "lo", f"{SWAN_INNER}/128")
        charon = start_charon(
            lab,
            s,
            tmp,
            [
                swan_conn("resp", "%any", esp_proposals=ESP_PFS),
                swan_conn("toB", "198.18.0.1", remote_port=500, child="toB-child", esp_proposals=ESP_PFS),
            ],
        )
        start_tcp_server(lab, s, SWAN_INNER)
        runner = Runner(lab, b, tmp, "--datapath", "--ike-port", "500", "--keylog", str(tmp / "ike.keys"))
        yield Topo(lab, tmp, b, s, charon, runner, "198.18.0.2", "198.18.0.1", 500)


def _traffic(topo: Topo) -> None:
    assert ping(topo.lab, topo.ours, SWAN_INNER) == 3
    assert tcp_transfer(topo.lab, topo.ours, SWAN_INNER, 2_000_000) == 2_000_000


def _rekeys_with_traffic(topo: Topo, their_side: bool) -> None:
    r, charon = topo.runner, topo.charon
    bg = BackgroundPing(topo.lab, topo.ours, SWAN_INNER, count=60, interval=0.05)
    if their_side:
        ike, children = _swan_state(charon)
        charon.swanctl("--rekey", "--child-id", children[0]["uniqueid"])
        assert r.wait("ChildSaDown", reason="rekeyed")
        charon.swanctl("--rekey", "--ike-id", ike[0]["uniqueid"])
        r.wait("IkeSaRekeyed")
        _, children = _swan_state(charon)
        charon.swanctl("--rekey", "--child-id", children[0]["uniqueid"])  # over the new IKE SA
        r.wait("ChildSaDown", reason="rekeyed")
    else:
        r.send(cmd="rekey-child", args={"pfs": True})
        r.wait("ChildSaDown", reason="rekeyed")
        r.send(cmd="rekey-ike")
        r.wait("IkeSaRekeyed")
        r.send(cmd="rekey-child", args={"pfs": False})
        r.wait("ChildSaDown", reason="rekeyed")
    sent, got = bg.result()
    assert sent == 60 and got >= 58, f"traffic stalled during rekeys: {got}/{sent}"
    ike, children = _swan_state(charon)
    assert len(ike) == 1 and len(children) == 1  # old SAs were deleted on both ends
    _traffic(topo)


def test_direct_btmm_initiator_to_strongswan(direct: Topo) -> None:
    direct.runner.clear()
    r, charon = direct.runner, direct.charon
    mark = charon.log_size()
    capture = Capture(direct.lab, direct.swan, "vs", direct.tmp / "ike.pcap")
    r.send(cmd="initiate", addr="198.18.0.2:4500", peer_id=SWAN_ID, inner=SWAN_INNER)
    up = r.wait("ChildSaUp", timeout=15)
    capture.stop()
    ike, children = _swan_state(charon)
    assert children and children[0]["spi-in"] == up["spi_out"] and children[0]["spi-out"] == up["spi_in"]
    log = charon.log_text()[mark:]
    assert "selected proposal: IKE:AES_GCM_16_256/PRF_HMAC_SHA2_256/CURVE_25519" in log
    assert "selected proposal: ESP:AES_GCM_16_256/NO_EXT_SEQ" in log
    assert f"authentication of '{BTMM_ID}' with pre-shared key successful" in log
    assert ike[0]["remote-port"] == "4500"  # BTMM mode: straight to 4500 with the marker
    # Our IKE keys (keylog, Wireshark ikev2_decryption_table) are the ones charon derived.
    fields = [f.strip('"') for f in (direct.tmp / "ike.keys").read_text().splitlines()[-1].split(",")]
    assert fields[0] == ike[0]["initiator-spi"] and fields[1] == ike[0]["responder-spi"]
    assert bytes.fromhex(fields[2]) in logged_secrets(log, "Sk_ei secret")
    assert bytes.fromhex(fields[3]) in logged_secrets(log, "Sk_er secret")
    assert fields[4] == "AES-GCM-256 with 16 octet ICV [RFC5282]"
    # and Wireshark decrypts our IKE_AUTH with that line.
    keyline = (direct.tmp / "ike.keys").read_text().splitlines()[-1]
    dissected = capture.tshark("-o", f"uat:ikev2_decryption_table:{keyline}", "-V")
    assert f"ID_FQDN: {BTMM_ID}" in dissected and f"ID_FQDN: {SWAN_ID}" in dissected
    _traffic(direct)


def test_direct_rekeys_from_our_side_with_traffic(direct: Topo) -> None:
    direct.runner.clear()
    mark = direct.charon.log_size()
    _rekeys_with_traffic(direct, their_side=False)
    log = direct.charon.log_text()[mark:]
    assert "parsed CREATE_CHILD_SA request" in log and "CURVE_25519" in log  # PFS rekey
    assert "rekeyed between" in log  # IKE SA rekey


def test_direct_rekeys_from_strongswan_side_with_traffic(direct: Topo) -> None:
    direct.runner.clear()
    _rekeys_with_traffic(direct, their_side=True)


def test_direct_delete_from_our_side(direct: Topo) -> None:
    direct.runner.clear()
    mark = direct.charon.log_size()
    direct.runner.send(cmd="close")
    down = direct.runner.wait("IkeSaDown")
    assert down["reason"] == "closed"
    direct.charon.wait_log(r"received DELETE for IKE_SA", after=mark)
    assert _swan_state(direct.charon) == ([], [])


def test_direct_strongswan_initiator_to_btmm_responder(direct: Topo) -> None:
    """strongSwan starts on port 500 (no marker) and floats to 4500; we answer on both."""
    direct.runner.clear()
    mark = direct.charon.log_size()
    out = direct.charon.initiate("toB-child")
    assert "initiate completed successfully" in out
    up = direct.runner.wait("ChildSaUp")
    assert up["inner"] == SWAN_INNER
    log = direct.charon.log_text()[mark:]
    assert re.search(r"sending packet: from 198\.18\.0\.2\[500\] to 198\.18\.0\.1\[500\]", log)
    assert re.search(r"sending packet: from 198\.18\.0\.2\[4500\] to 198\.18\.0\.1\[4500\]", log)
    assert "selected proposal: ESP:AES_GCM_16_256/NO_EXT_SEQ" in log
    _traffic(direct)


def test_direct_delete_from_strongswan_side(direct: Topo) -> None:
    direct.runner.clear()
    ike, _ = _swan_state(direct.charon)
    direct.charon.swanctl("--terminate", "--ike-id", ike[0]["uniqueid"])
    down = direct.runner.wait("IkeSaDown")
    assert down["reason"] == "deleted_by_peer" and down["established"]
    assert ping(direct.lab, direct.ours, SWAN_INNER, count=1) == 0  # route and SAs gone


def test_direct_strongswan_deletes_child_only(direct: Topo) -> None:
    direct.runner.clear()
    direct.charon.initiate("toB-child")
    direct.runner.wait("ChildSaUp")
    _, children = _swan_state(direct.charon)
    direct.charon.swanctl("--terminate", "--child-id", children[0]["uniqueid"])
    down = direct.runner.wait("ChildSaDown")
    assert down["reason"] == "deleted_by_peer"
    _wait_swan_clean(direct)
    direct.runner.wait("IkeSaDown")


def test_direct_wrong_psk_fails_cleanly_both_ways(direct: Topo) -> None:
    direct.runner.clear()
    r = direct.restart_runner(psk=b"the psk of some other account, not this one")
    mark = direct.charon.log_size()
    r.send(cmd="initiate", addr="198.18.0.2:4500", peer_id=SWAN_ID, inner=SWAN_INNER)
    down = r.wait("IkeSaDown")
    assert down["reason"] == "AUTHENTICATION_FAILED"
    assert "refused our PSK" in down["message"] and "different account files" in down["message"]
    direct.charon.wait_log(r"but MAC mismatched", after=mark)
    direct.charon.wait_log(r"generating IKE_AUTH response 1 \[ N\(AUTH_FAILED\) \]", after=mark)
    # strongSwan initiating to us: we refuse, and strongSwan's initiate fails.
    out = direct.charon.initiate("toB-child", timeout=8, check=False)
    assert "initiate failed" in out or ("establishing CHILD_SA" in out and "failed" in out)
    down = r.wait("IkeSaDown")
    assert down["reason"] == "AUTHENTICATION_FAILED" and "does not match ours" in down["message"]
    assert _swan_state(direct.charon) == ([], [])


def test_direct_no_common_proposal_fails_cleanly_both_ways(direct: Topo) -> None:
    direct.runner.clear()
    r = direct.restart_runner("--ike-encr", "chacha20poly1305", "--esp-encr", "chacha20poly1305")
    mark = direct.charon.log_size()
    r.send(cmd="initiate", addr="198.18.0.2:4500", peer_id=SWAN_ID, inner=SWAN_INNER)
    down = r.wait("IkeSaDown")
    assert down["reason"] == "NO_PROPOSAL_CHOSEN" and "accepts none of our IKE proposals" in down["message"]
    direct.charon.wait_log(r"received proposals unacceptable|no acceptable proposal found", after=mark)
    out = direct.charon.initiate("toB-child", timeout=8, check=False)
    assert "initiate failed" in out
    down = r.wait("IkeSaDown")
    assert down["reason"] == "NO_PROPOSAL_CHOSEN" and "AES_GCM" not in down["message"]
    assert "ENCR 20/256" in down["message"]  # names what strongSwan offered
    assert _swan_state(direct.charon) == ([], [])


def test_direct_chacha20_suite(direct: Topo) -> None:
    """Both ends allow ChaCha20-Poly1305 only (ours by flag, strongSwan by a second conn)."""
    direct.runner.clear()
    direct.charon.load(
        [
            swan_conn(
                "chacha",
                "%any",
                proposals="chacha20poly1305-prfsha256-ecp256",
                esp_proposals="chacha20poly1305",
            )
        ],
        PSK,
    )
    r = direct.restart_runner("--ike-encr", "chacha20poly1305", "--esp-encr", "chacha20poly1305")
    mark = direct.charon.log_size()
    r.send(cmd="initiate", addr="198.18.0.2:4500", peer_id=SWAN_ID, inner=SWAN_INNER)
    up = r.wait("IkeSaUp", timeout=15)
    assert up["suite"] == "chacha20poly1305-prfsha256-ecp256"  # INVALID_KE retry 31 → 19
    r.wait("ChildSaUp")
    log = direct.charon.log_text()[mark:]
    assert "selected proposal: IKE:CHACHA20_POLY1305/PRF_HMAC_SHA2_256/ECP_256" in log
    assert "selected proposal: ESP:CHACHA20_POLY1305/NO_EXT_SEQ" in log
    _traffic(direct)
    r.send(cmd="close")
    r.wait("IkeSaDown")


def test_direct_groups_modp2048_and_ecp256(direct: Topo) -> None:
    """strongSwan allowing only MODP-2048 answers our X25519 guess with INVALID_KE_PAYLOAD and we
    retry with group 14; strongSwan initiating with ECP-256 is answered by our responder."""
    direct.runner.clear()
    direct.charon.load([swan_conn("modp", "%any", proposals="aes256gcm16-prfsha256-modp2048")], PSK)
    r = direct.restart_runner()
    mark = direct.charon.log_size()
    r.send(cmd="initiate", addr="198.18.0.2:4500", peer_id=SWAN_ID, inner=SWAN_INNER)
    assert r.wait("IkeSaUp", timeout=15)["suite"] == "aes256gcm16-prfsha256-modp2048"
    r.wait("ChildSaUp")
    log = direct.charon.log_text()[mark:]
    assert "generating IKE_SA_INIT response 0 [ N(INVAL_KE) ]" in log
    assert "selected proposal: IKE:AES_GCM_16_256/PRF_HMAC_SHA2_256/MODP_2048" in log
    _traffic(direct)
    r.send(cmd="close")
    r.wait("IkeSaDown")
    ecp = swan_conn(
        "ecp",
        "198.18.0.1",
        local_port=4500,
        remote_port=4500,
        child="ecp-child",
        proposals="aes256gcm16-prfsha256-ecp256",
    )
    direct.charon.load([ecp], PSK)
    mark = direct.charon.log_size()
    assert "initiate completed successfully" in direct.charon.initiate("ecp-child")
    up = r.wait("IkeSaUp")
    assert up["suite"] == "aes256gcm16-prfsha256-ecp256" and not up["initiator"]
    r.wait("ChildSaUp")
    assert (
        "selected proposal: IKE:AES_GCM_16_256/PRF_HMAC_SHA2_256/ECP_256" in direct.charon.log_text()[mark:]
    )
    _traffic(direct)
    r.send(cmd="close")
    r.wait("IkeSaDown")


# ---------------------------------------------------------------------------------------------- NAT
@pytest.fixture(scope="module")
def natted() -> Iterator[Topo]:
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="btmm-ike-nat-") as tmpdir:
        tmp = Path(tmpdir)
        h, r, s = lab.ns("h"), lab.ns("r"), lab.ns("s")
        lab.veth(h, "lan0", r, "rlan")
        lab.veth(r, "rwan", s, "vs")
        lab.addr(h, "lan0", "10.77.0.2/24")
        lab.addr(r, "rlan", "10.77.0.1/24")
        lab.addr(r, "rwan", "198.18.0.1/24")
        lab.addr(s, "vs", "198.18.0.2/24")
        lab.addr(s, "lo", f"{SWAN_INNER}/128")
        lab.route(h, "default", "via", "10.77.0.1")
        lab.sysctl(r, "net.ipv4.ip_forward", "1")
        lab.nft(
            r,
            """
table ip btmmnat {
  chain prerouting {
    type nat hook prerouting priority dstnat;
    iifname "rwan" udp dport 14500 dnat to 10.77.0.2:4500
  }
  chain postrouting {
    type nat hook postrouting priority srcnat;
    oifname "rwan" meta l4proto udp masquerade to :40000-50000
    oifname "rwan" masquerade
  }
}
""",
        )
        charon = start_charon(
            lab,
            s,
            tmp,
            [
                # MOBIKE on, as strongSwan defaults; we do not announce MOBIKE_SUPPORTED, so it stays unused
                swan_conn("resp", "%any", esp_proposals=ESP_PFS, dpd_delay=2, mobike=True),
                # BTMM: strongSwan reaches us at the NAT's forwarded port, NAT-T framing from the start
                swan_conn(
                    "toH",
                    "198.18.0.1",
                    remote_port=14500,
                    local_port=4500,
                    child="toH-child",
                    esp_proposals=ESP_PFS,
                    dpd_delay=2,
                    mobike=True,
                ),
            ],
        )
        start_tcp_server(lab, s, SWAN_INNER)
        runner = Runner(lab, h, tmp, "--datapath")
        yield Topo(lab, tmp, h, s, charon, runner, "198.18.0.2", "198.18.0.1", 14500)


def test_nat_btmm_initiator_behind_masquerade(natted: Topo) -> None:
    natted.runner.clear()
    r, charon = natted.runner, natted.charon
    mark = charon.log_size()
    r.send(cmd="initiate", addr="198.18.0.2:4500", peer_id=SWAN_ID, inner=SWAN_INNER)
    up = r.wait("IkeSaUp", timeout=15)
    assert up["nat_local"]
    r.wait("ChildSaUp")
    ike, _ = _swan_state(charon)
    port = int(ike[0]["remote-port"])
    assert ike[0]["remote-host"] == "198.18.0.1" and 40000 <= port <= 50000  # remapped by the NAT
    assert "remote host is behind NAT" in charon.log_text()[mark:]
    _traffic(natted)
    # strongSwan's DPD (2 s) crosses the NAT to us and is answered
    mark = charon.log_size()
    charon.wait_log(r"parsed INFORMATIONAL response \d+ \[ \]", timeout=10, after=mark)


def test_nat_rekeys_from_strongswan_side_with_traffic(natted: Topo) -> None:
    natted.runner.clear()
    _rekeys_with_traffic(natted, their_side=True)


def test_nat_rekeys_from_our_side_with_traffic(natted: Topo) -> None:
    natted.runner.clear()
    _rekeys_with_traffic(natted, their_side=False)


def test_nat_delete_from_strongswan_side(natted: Topo) -> None:
    natted.runner.clear()
    ike, _ = _swan_state(natted.charon)
    natted.charon.swanctl("--terminate", "--ike-id", ike[0]["uniqueid"])
    assert natted.runner.wait("IkeSaDown")["reason"] == "deleted_by_peer"


def test_nat_strongswan_initiator_to_btmm_responder_via_port_forward(natted: Topo) -> None:
    natted.runner.clear()
    out = natted.charon.initiate("toH-child")
    assert "initiate completed successfully" in out
    up = natted.runner.wait("ChildSaUp")
    assert up["inner"] == SWAN_INNER
    _traffic(natted)
    natted.runner.send(cmd="close")
    assert natted.runner.wait("IkeSaDown")["reason"] == "closed"
    assert _swan_state(natted.charon) == ([], [])


def test_nat_dead_peer_detected_by_our_dpd(natted: Topo) -> None:
    """The path to strongSwan goes dark: our liveness checks (DPD every 1 s) give up → dead_peer."""
    r = natted.restart_runner("--dpd", "1")
    r.send(cmd="initiate", addr="198.18.0.2:4500", peer_id=SWAN_ID, inner=SWAN_INNER)
    r.wait("ChildSaUp", timeout=15)
    assert ping(natted.lab, natted.ours, SWAN_INNER, count=1) == 1
    router = next(ns for ns in natted.lab.namespaces if ns.endswith("-r"))
    natted.lab.nft(
        router,
        """
table ip blackhole {
  chain drop_udp {
    type filter hook forward priority 0;
    meta l4proto udp drop
  }
}
""",
    )
    down = r.wait("IkeSaDown", timeout=30)
    assert down["reason"] == "dead_peer" and "stopped answering" in down["message"]
