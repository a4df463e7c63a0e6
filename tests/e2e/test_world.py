"""The Back to My Mac flow end to end, in namespaces: the demo scenario as a test.

One world per module (namespaces, NAT routers, miniupnpd, btmm-serve), the tests run in
order and each builds on the previous one's state, like a user's day: the iMac registers
through its NAT, the laptop in the café reaches its service through two NATs, the iMac's
tunnel process restarts, the home router reboots, the iMac shuts down cleanly.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tools.netns import Lab
from tools.scenario import DNS_ADDR, DOMAIN, HOME_LABEL, SERVICE_TYPE, Stage, World, bin_path

pytestmark = [pytest.mark.netns, pytest.mark.peer]

HOST_FQDN = f"{HOME_LABEL}.{DOMAIN}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with Lab() as lab:
        w = World.create(lab, tmp_path_factory.mktemp("world"))
        w.create_account()
        w.start_dns()
        yield w


def dig(world: World, name: str, rdtype: str) -> list[str]:
    proc = world.lab.run(world.inet_ns, ["dig", "+short", "+time=2", "+tries=2", "-p", "53", f"@{DNS_ADDR}",
                                         name, rdtype])
    return proc.stdout.decode().split("\n")[:-1]


def registration(stage: Stage, pred: Any, timeout: float = 60.0) -> dict[str, Any]:
    return stage.wait_for(lambda r: r.get("type") == "registration" and pred(r), timeout, "registration")


def test_home_registers_through_its_nat(world: World) -> None:
    reg = world.start_home_registration()
    rec = registration(reg, lambda r: r.get("outer"))
    assert rec["state"] == "registered"
    assert rec["outer"] == "198.18.1.2:4500"  # miniupnpd's WAN address, external port = 4500
    assert dig(world, HOST_FQDN, "AAAA")[0].startswith("fd")
    srv = dig(world, f"_autotunnel._udp.{HOST_FQDN}", "SRV")
    assert len(srv) == 1 and srv[0].split()[2] == "4500" and srv[0].split()[3].startswith("AutoTunnel-")
    assert dig(world, srv[0].split()[3], "A") == ["198.18.1.2"]
    ptr = "Bob\\226\\128\\153s\\032iMac._http._tcp.bob.members.example."  # dig's escaping of ’ and space
    assert dig(world, f"{SERVICE_TYPE}.{DOMAIN}", "PTR") == [ptr]


def _tunnel_up(stage: Stage, timeout: float = 30.0) -> dict[str, Any]:
    return stage.wait_for(lambda r: r.get("type") == "tunnel" and r.get("state") == "up", timeout,
                          "tunnel up")


def test_cafe_reaches_home_service_through_two_nats(world: World) -> None:
    home = world.start_home_tunnel()
    world.start_home_service()
    time.sleep(0.5)
    capture = world.workdir / "outer.pcap"
    dump_log = world.workdir / "tcpdump.log"
    with open(dump_log, "wb") as log:
        dump = world.lab.popen(world.inet_ns, ["tcpdump", "-Z", "root", "--immediate-mode", "-n", "-U",
                                               "-i", "to-home", "-w", str(capture)],
                               stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 10
    while b"listening on" not in dump_log.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.05)
    client = world.start_cafe_client()
    up = _tunnel_up(client)
    assert up["inner_remote"] == dig(world, HOST_FQDN, "AAAA")[0]
    assert up["suite"] and up["setup_ms"] is not None and up["setup_ms"] > 0
    assert up["instance"] == "Bob’s iMac"  # context from btmm-browse flowed through the pipe
    home_up = _tunnel_up(home)
    assert home_up["spi_in"] == up["spi_out"] and home_up["spi_out"] == up["spi_in"]
    body, _ttfb = world.fetch(up["inner_remote"])
    assert "hello from Bob’s iMac via fd" in body
    check_status(world, up["inner_local"])
    time.sleep(0.5)
    world.lab.stop(dump)
    assert capture.exists(), dump_log.read_text()
    check_capture(capture, secret=b"hello from Bob")


def check_status(world: World, laptop_ula: str) -> None:
    """btmm-status on the iMac shows its mapping, its registration and the tunnel with counters."""
    deadline = time.monotonic() + 5
    while True:
        proc = subprocess.run([bin_path("btmm-status"), "--json"], env=world.env("home"), capture_output=True,
                              text=True, check=False)
        status = {r["component"]: r for r in map(json.loads, proc.stdout.splitlines())}
        tunnels = status.get("tunnels", {}).get("tunnels", [])
        if (len(status) == 3 and tunnels and tunnels[0].get("counters", {}).get("packets_in", 0) > 0) \
                or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert proc.returncode == 0, proc.stderr
    assert set(status) == {"port-mapping", "registration", "tunnels"}, status
    assert not any(s["stale"] for s in status.values())
    registration = status["registration"]
    assert registration["state"] == "registered" and registration["outer"] == "198.18.1.2:4500"
    assert status["port-mapping"]["external_port"] == 4500
    assert tunnels[0]["peer"] == laptop_ula and tunnels[0]["counters"]["packets_in"] > 0, tunnels


def check_capture(path: Path, secret: bytes) -> None:
    """On the home router's WAN link: only IPv4, the tunnel is UDP-encapsulated ESP, no cleartext."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import ARP
    from scapy.utils import rdpcap

    packets = rdpcap(str(path))
    assert len(packets) > 0, "the capture on the home WAN link saw nothing"
    esp = 0
    for pkt in packets:
        raw = bytes(pkt)
        assert secret not in raw, "cleartext service data on the outer link"
        assert not pkt.haslayer(IPv6), f"IPv6 on the outer link (outside the tunnel): {pkt.summary()}"
        if pkt.haslayer(ARP):
            continue
        assert pkt.haslayer(IP), f"non-IPv4 packet on the outer link: {pkt.summary()}"
        if pkt.haslayer(UDP) and 4500 in (pkt[UDP].sport, pkt[UDP].dport):
            payload = bytes(pkt[UDP].payload)
            if len(payload) > 8 and payload[:4] != b"\0\0\0\0":
                esp += 1  # ESP: SPI != 0
        else:
            # Anything else crossing the WAN is DNS to the server (UDP/TCP 53).
            l4 = pkt[IP].payload
            assert 53 in (getattr(l4, "sport", 0), getattr(l4, "dport", 0)), pkt.summary()
    assert esp >= 4, f"expected ESP-in-UDP packets on the outer link, saw {esp}"


def test_client_recovers_when_host_restarts_tunnel(world: World) -> None:
    client = world.stages["cafe-client"]
    world.stop_stage("home-tunnel")
    world.start_home_tunnel()
    seen = len(client.records)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        client.poll_records(1.0)
        if any(r.get("type") == "tunnel" and r.get("state") == "up" for r in client.records[seen:]):
            break
    else:
        pytest.fail(f"the café client did not bring the tunnel back: {client.records[seen:]} "
                    f"{client.stderr_tail()}")
    up = [r for r in client.records if r.get("type") == "tunnel" and r.get("state") == "up"][-1]
    body, _ = world.fetch(up["inner_remote"])
    assert "hello from Bob’s iMac" in body


def test_home_router_restart_remaps_and_tunnel_comes_back(world: World) -> None:
    """The router reboots: its port mapping is gone (epoch reset). btmm-map-port maps again by
    itself; the external endpoint is unchanged, so the DNS records stay as they are (a
    re-registration is only sent when the mapping changes), and the tunnel carries traffic."""
    assert world.home is not None
    reg = world.stages["home-register"]
    world.home.restart()
    deadline = time.monotonic() + 30
    while "4500" not in world.home.rules() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "4500" in world.home.rules(), f"no re-mapping after the router restart: {reg.stderr_tail()}"
    assert "router restarted" in reg.stderr_files[0].read_text()
    assert dig(world, f"_autotunnel._udp.{HOST_FQDN}", "SRV")[0].split()[2] == "4500"
    up = [r for r in world.stages["cafe-client"].records if r.get("type") == "tunnel"
          and r.get("state") == "up"][-1]
    body, _ = world.fetch(up["inner_remote"], timeout=30)
    assert "hello from Bob’s iMac" in body


def test_clean_exit_removes_records_and_tunnels(world: World) -> None:
    codes = world.stop_stage("home-register")
    assert codes[-1] == 0
    stopped = world.stages["home-register-stopped"].records
    assert any(r.get("type") == "registration" and r.get("state") == "removed" for r in stopped)
    assert dig(world, HOST_FQDN, "AAAA") == []
    assert dig(world, f"_autotunnel._udp.{HOST_FQDN}", "SRV") == []
    assert world.stop_stage("home-tunnel")[-1] == 0
    assert world.stop_stage("cafe-client")[-1] == 0
    links = world.lab.run(world.home_ns, ["ip", "-o", "link"]).stdout.decode()
    assert "btmm0" not in links, "btmm-tunnel-up left its TUN device behind"
