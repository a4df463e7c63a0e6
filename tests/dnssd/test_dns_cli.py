"""tools.dns_cli.server_config: the one place where --server/--tls/--tcp/--ca-file become a ServerConfig.

btmm-browse, btmm-register (also after SRV discovery) and btmm-resolve-tunnel all go through it.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest

from dnssd_wa import driver
from tests.conftest import script
from tools.cli import EXIT_USAGE, Fatal
from tools.dns_cli import add_transport_arguments, server_config


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server")
    add_transport_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(("argv", "transport", "port"), [
    ((), driver.Transport.UDP, 53),
    (("--tcp",), driver.Transport.TCP, 53),
    (("--tls",), driver.Transport.TLS, 853),
])
def test_transport_flags_and_default_ports(argv: tuple[str, ...], transport: driver.Transport,
                                           port: int) -> None:
    cfg = server_config(parse("--server", "ns.example.net", *argv), None)
    assert (cfg.host, cfg.port, cfg.transport) == ("ns.example.net", port, transport)


def test_server_flag_wins_over_account_and_discovery() -> None:
    cfg = server_config(parse("--server", "192.0.2.1:5300"), "ns.example.net", discovered=("d.example", 8853))
    assert (cfg.host, cfg.port, cfg.transport) == ("192.0.2.1", 5300, driver.Transport.UDP)
    cfg = server_config(parse(), "ns.example.net:5353", discovered=("d.example", 8853))
    assert (cfg.host, cfg.port, cfg.transport) == ("ns.example.net", 5353, driver.Transport.UDP)


def test_discovered_update_server_speaks_tls_unless_tcp() -> None:
    cfg = server_config(parse("--tls-name", "dns.example", "--timeout", "2"), None,
                        discovered=("update.example", 8853))
    assert (cfg.host, cfg.port, cfg.transport) == ("update.example", 8853, driver.Transport.TLS)
    assert (cfg.tls_hostname, cfg.timeout) == ("dns.example", 2.0)
    cfg = server_config(parse("--tcp"), None, discovered=("update.example", 8853))
    assert (cfg.port, cfg.transport) == (8853, driver.Transport.TCP)


def test_bad_server_and_missing_ca_file_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(Fatal, match="port must be 1-65535"):
        server_config(parse("--server", "ns.example.net:99999"), None)
    with pytest.raises(Fatal, match=r"--ca-file .* does not exist") as info:
        server_config(parse("--tls", "--ca-file", str(tmp_path / "nope.pem"), "--server", "ns.example"), None)
    assert info.value.code == EXIT_USAGE
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    assert server_config(parse("--ca-file", str(ca), "--server", "ns.example"), None).ca_file == str(ca)


def test_browse_says_a_missing_ca_file_in_one_line(tmp_path: Path, btmm_env: dict[str, str]) -> None:
    missing = tmp_path / "nope.pem"
    proc = subprocess.run([script("btmm-browse"), "-d", "example.com", "-t", "_rfb._tcp", "--tls",
                           "--ca-file", str(missing), "--server", "127.0.0.1:1"],
                          capture_output=True, text=True, env=btmm_env, timeout=30)
    assert proc.returncode == EXIT_USAGE
    assert proc.stderr.strip().splitlines() == [f"btmm-browse: error: --ca-file {missing} does not exist"]
