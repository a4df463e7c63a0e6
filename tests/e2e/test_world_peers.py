"""The same Back to My Mac flow with real third-party peers in the home's place.

* BIND 9 instead of btmm-serve as the account's DNS server (the tools speak only standard
  DNS: RFC 2136 UPDATE + TSIG, no lease echo — so records stay until the host removes them).
* strongSwan (charon + kernel-libipsec) as Bob's iMac's tunnel end, its autotunnel records
  published with ``btmm-register --outer`` after ``btmm-map-port --once``: our café client
  negotiates IKEv2 with charon through two NATs and fetches the service over ESP-in-UDP.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.account_file import load_host
from tools.netns import Lab
from tools.peers.strongswan import Charon, Conn
from tools.scenario import CAFE_LABEL, DNS_ADDR, DOMAIN, HOME_LABEL, SERVICE_TYPE, World, bin_path

pytestmark = [pytest.mark.netns, pytest.mark.peer]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with Lab() as lab:
        w = World.create(lab, tmp_path / "world")
        w.create_account()
        yield w


def dig(world: World, name: str, rdtype: str) -> list[str]:
    proc = world.lab.run(world.inet_ns, ["dig", "+short", "+time=2", "+tries=2", f"@{DNS_ADDR}", name,
                                         rdtype])
    return proc.stdout.decode().split("\n")[:-1]


def test_flow_with_bind_as_the_dns_server(world: World) -> None:
    world.start_bind()
    reg = world.start_home_registration()
    rec = reg.wait_for(lambda r: r.get("type") == "registration" and r.get("outer"), 60, "registration")
    assert rec["lease_granted"] is None  # BIND does not echo the Update Lease option
    assert "did not echo the Update Lease option" in reg.stderr_files[1].read_text()  # said so once
    world.start_home_tunnel()
    world.start_home_service()
    client = world.start_cafe_client()
    up = client.wait_for(lambda r: r.get("type") == "tunnel" and r.get("state") == "up", 30, "tunnel up")
    body, _ = world.fetch(str(up["inner_remote"]))
    assert "hello from Bob’s iMac" in body
    host = f"{HOME_LABEL}.{DOMAIN}"
    assert dig(world, host, "AAAA") == [up["inner_remote"]]
    assert world.stop_stage("home-register")[-1] == 0
    assert dig(world, host, "AAAA") == []  # removed by the host itself on a clean exit
    assert dig(world, f"_autotunnel._udp.{host}", "SRV") == []


def test_cafe_client_reaches_strongswan_at_home(world: World) -> None:
    world.start_dns()
    assert world.account_file is not None and world.home is not None
    home_state = world.workdir / "home-state"
    imac = load_host(str(world.account_file), HOME_LABEL, str(home_state))
    laptop = load_host(str(world.account_file), CAFE_LABEL, str(world.workdir / "cafe-state"))
    # Bob's iMac runs strongSwan: its ULA on lo, charon answering on 500/4500.
    world.lab.addr(world.home_ns, "lo", f"{imac.ula}/128")
    charon = Charon(world.lab, world.home_ns, world.workdir / "charon")
    charon.start()
    charon.load([Conn(name="btmm", local_id=imac.fqdn, remote_id=laptop.fqdn, local_ts=str(imac.ula),
                      remote_ts=str(laptop.ula), local_port=500, remote_port=4500)], imac.account.ike_psk)
    world.start_home_service()
    # Its NAT mapping and DNS records come from our tools: map once, register with --outer.
    env = world.env("home")
    mapped = world.lab.run(world.home_ns, [bin_path("btmm-map-port"), "--once", "--json"], env=env)
    mapping = json.loads(mapped.stdout.decode().splitlines()[-1])
    outer = f"{mapping['external_address']}:{mapping['external_port']}"
    world.lab.run(world.home_ns, [bin_path("btmm-register"), "--host", HOME_LABEL, "--name", "Bob’s iMac",
                                  "--service", f"{SERVICE_TYPE}:8080", "--outer", outer, "--once", "--json"],
                  env=env)
    client = world.start_cafe_client()
    up = client.wait_for(lambda r: r.get("type") == "tunnel" and r.get("state") == "up", 30, "tunnel up")
    assert up["inner_remote"] == str(imac.ula) and up["suite"] == "aes256gcm16"
    body, _ = world.fetch(str(imac.ula))
    assert "hello from Bob’s iMac" in body
    charon.wait_log(r"CHILD_SA btmm-child\{\d+\} established", timeout=10)
    assert "AES_GCM_16_256" in charon.log_text() and "CURVE_25519" in charon.log_text()
    sas = charon.list_sas()
    assert str(laptop.ula) in sas and "ESTABLISHED" in sas
