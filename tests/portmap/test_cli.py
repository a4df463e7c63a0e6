"""btmm-map-port: flag errors, help and the one-line failure messages (no network needed)."""

from __future__ import annotations

import subprocess
from ipaddress import IPv4Address

import pytest

from portmap.client import Failure, MappingFailed, Protocol
from tests.conftest import script
from tools.map_port import OUTER_HINT, failure_message

GW = IPv4Address("10.77.0.1")


@pytest.mark.parametrize(("args", "needle"), [
    (["--gateway", "router.local"], "--gateway 'router.local' is not an IPv4 address"),
    (["--internal-port", "0"], "--internal-port 0: must be 1-65535"),
    (["--external-port", "70000"], "--external-port 70000: must be 1-65535"),
    (["--attempts", "12"], "--attempts 12: must be 1-9"),
    (["--lifetime", "0"], "--lifetime 0: must be at least 1 second"),
])
def test_bad_flags_exit_2_with_one_line(args: list[str], needle: str, btmm_env: dict[str, str]) -> None:
    proc = subprocess.run([script("btmm-map-port"), "--once", *args], capture_output=True, env=btmm_env,
                          timeout=30, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_help_names_defaults_and_exit_codes(btmm_env: dict[str, str]) -> None:
    proc = subprocess.run([script("btmm-map-port"), "--help"], capture_output=True, env=btmm_env,
                          timeout=30, check=True)
    text = proc.stdout.decode()
    for needle in ("--internal-port", "default 4500", "--watch", "--once", "--protocol", "exit codes"):
        assert needle in text


def failed(failure: Failure, result: int | None, name: str,
           protocol: Protocol = Protocol.PCP) -> MappingFailed:
    return MappingFailed(failure, protocol, result, name, fatal=True, renewing=False)


def test_failure_messages() -> None:
    silent = failure_message(failed(Failure.NO_RESPONSE, None, "no reply"), GW, 4500, 7.5, refused=False)
    assert "no NAT-PMP or PCP answer from the gateway 10.77.0.1 after 7.5 s" in silent
    assert OUTER_HINT in silent and "ICMP" not in silent
    refused = failure_message(failed(Failure.NO_RESPONSE, None, "no reply"), GW, 4500, 1.0, refused=True)
    assert "ICMP port unreachable" in refused
    for failure, code, name, proto in ((Failure.NETWORK_FAILURE, 3, "NETWORK_FAILURE", Protocol.NATPMP),
                                       (Failure.NO_RESOURCES, 8, "NO_RESOURCES", Protocol.PCP)):
        text = failure_message(failed(failure, code, name, proto), GW, 4500, 0.1, refused=False)
        assert "double NAT or carrier-grade NAT" in text and name in text and OUTER_HINT in text
    denied = failure_message(failed(Failure.NOT_AUTHORIZED, 2, "NOT_AUTHORIZED"), GW, 80, 0.1, refused=False)
    assert "refused to map UDP 80" in denied and "NOT_AUTHORIZED" in denied
    other = failure_message(failed(Failure.REFUSED, 12, "ADDRESS_MISMATCH"), GW, 4500, 0.1, refused=False)
    assert "ADDRESS_MISMATCH (12)" in other
    for text in (silent, refused, denied, other):
        assert "\n" not in text
