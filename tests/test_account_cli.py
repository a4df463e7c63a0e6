"""btmm-account, btmm-ula and the shared CLI conventions, through the real console scripts."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import script
from tools import cli
from tools.account_file import default_host_label


def run(argv: list[str], env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, input=stdin, capture_output=True, text=True, timeout=60,
                          check=False)


def test_init_writes_0600_and_refuses_overwrite(btmm_env: dict[str, str], tmp_path: Path) -> None:
    r = run([script("btmm-account"), "init", "--domain", "Bob.Members.Example.", "--json"], btmm_env)
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    path = Path(btmm_env["XDG_CONFIG_HOME"]) / "btmm" / "account.json"
    assert rec["path"] == str(path)
    assert rec["domain"] == "bob.members.example"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert len(bytes.fromhex(data["ike_psk"])) == 32
    assert data["ula_prefix"].endswith("::/48") and data["ula_prefix"].startswith("fd")
    assert "********" in r.stdout and data["ike_psk"] not in r.stdout  # secrets masked
    again = run([script("btmm-account"), "init", "--domain", "bob.members.example"], btmm_env)
    assert again.returncode == 2
    assert "--force" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    assert json.loads(path.read_text()) == data  # nothing lost
    forced = run([script("btmm-account"), "init", "--domain", "bob.members.example", "--force"], btmm_env)
    assert forced.returncode == 0
    assert json.loads(path.read_text())["ike_psk"] != data["ike_psk"]


def test_show_masks_and_reveal_needs_json(account_file: Path, btmm_env: dict[str, str]) -> None:
    secret = json.loads(account_file.read_text())["ike_psk"]
    shown = run([script("btmm-account"), "--account", str(account_file), "show", "--json"], btmm_env)
    assert shown.returncode == 0 and secret not in shown.stdout
    pretty = run([script("btmm-account"), "--account", str(account_file), "--pretty", "show"], btmm_env)
    assert pretty.returncode == 0 and secret not in pretty.stdout and "bob.members.example" in pretty.stdout
    refused = run([script("btmm-account"), "--account", str(account_file), "show", "--reveal"], btmm_env)
    assert refused.returncode == 2 and "--json" in refused.stderr
    revealed = run([script("btmm-account"), "--account", str(account_file), "show", "--reveal", "--json"],
                   btmm_env)
    assert json.loads(revealed.stdout)["ike_psk"] == secret


def test_tsig_key_clause(account_file: Path, btmm_env: dict[str, str]) -> None:
    data = json.loads(account_file.read_text())
    r = run([script("btmm-account"), "--account", str(account_file), "tsig-key"], btmm_env)
    assert r.returncode == 0
    assert r.stdout.startswith('key "btmm-bob.members.example" {')
    assert "algorithm hmac-sha256;" in r.stdout
    assert f'secret "{data["tsig"]["secret"]}";' in r.stdout


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_refuses_readable_account_file(account_file: Path, btmm_env: dict[str, str], mode: int) -> None:
    os.chmod(account_file, mode)
    r = run([script("btmm-ula"), "--account", str(account_file), "prefix"], btmm_env)
    assert r.returncode == 2
    assert f"chmod 600 {account_file}" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_account_lookup_rule(account_file: Path, btmm_env: dict[str, str], tmp_path: Path) -> None:
    env = dict(btmm_env, BTMM_ACCOUNT=str(account_file))
    via_env = run([script("btmm-ula"), "prefix", "--json"], env)
    assert via_env.returncode == 0, via_env.stderr
    missing = run([script("btmm-ula"), "prefix", "--json"], btmm_env)
    assert missing.returncode == 2 and "btmm-account init" in missing.stderr
    other = tmp_path / "nope.json"
    flag_wins = run([script("btmm-ula"), "--account", str(other), "prefix"], env)
    assert flag_wins.returncode == 2 and str(other) in flag_wins.stderr


def test_broken_account_file(account_file: Path, btmm_env: dict[str, str]) -> None:
    account_file.write_text("{not json")
    r = run([script("btmm-ula"), "--account", str(account_file), "prefix"], btmm_env)
    assert r.returncode == 2 and "not valid JSON" in r.stderr and "Traceback" not in r.stderr


def test_ula_address_stable_and_in_prefix(account_file: Path, btmm_env: dict[str, str]) -> None:
    argv = [script("btmm-ula"), "--account", str(account_file), "address", "--host", "bobs-imac", "--json"]
    first = json.loads(run(argv, btmm_env).stdout)
    second = json.loads(run(argv, btmm_env).stdout)
    assert first == second
    prefix = json.loads(run([script("btmm-ula"), "--account", str(account_file), "prefix", "--json"],
                            btmm_env).stdout)["prefix"]
    import ipaddress

    assert ipaddress.IPv6Address(first["address"]) in ipaddress.IPv6Network(prefix)
    assert first["host"] == "bobs-imac.bob.members.example"
    assert first["autotunnel"].startswith("AutoTunnel-")
    assert first["kerberos"].startswith("LKDC:SHA1.") and len(first["kerberos"]) == 50
    key = Path(btmm_env["XDG_STATE_HOME"]) / "btmm" / "identity.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # A different host identity gives a different address in the same prefix.
    other_env = dict(btmm_env, BTMM_STATE_DIR=str(Path(btmm_env["XDG_STATE_HOME"]) / "other"))
    other = json.loads(run(argv, other_env).stdout)
    assert other["address"] != first["address"] and other["prefix"] == first["prefix"]


def test_bad_host_label(account_file: Path, btmm_env: dict[str, str]) -> None:
    r = run([script("btmm-ula"), "--account", str(account_file), "address", "--host", "bob.imac"], btmm_env)
    assert r.returncode == 2 and "--host" in r.stderr


def test_default_host_label() -> None:
    assert default_host_label("Bobs-iMac.local") == "bobs-imac"
    assert default_host_label("Bob's iMac") == "bob-s-imac"
    assert default_host_label("---") == "host"


def test_json_lines_passthrough_errors_and_exit_codes(btmm_env: dict[str, str]) -> None:
    stdin = (
        '{"mac": "34:56:78:9a:bc:de", "context": {"from": "upstream"}}\n'
        "this is not json\n"
        '{"type": "error", "v": 1, "stage": "earlier", "error": "boom"}\n'
        "[1, 2]\n"
        '{"mac": "zz"}\n'
    )
    r = run([script("btmm-ula"), "eui64"], btmm_env, stdin=stdin)
    assert r.returncode == cli.EXIT_PARTIAL
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(out) == 5
    assert out[0]["type"] == "eui64" and out[0]["context"] == {"from": "upstream"}
    assert out[0]["eui64"] == "365678fffe9abcde"
    assert out[1]["type"] == "error" and "line 2" in out[1]["error"] and out[1]["input"]["line"] == 2
    assert out[2] == {"type": "error", "v": 1, "stage": "earlier", "error": "boom"}  # passed along
    assert out[3]["type"] == "error" and "line 4" in out[3]["error"]
    assert out[4]["type"] == "error" and out[4]["input"] == {"mac": "zz"}
    ok = run([script("btmm-ula"), "eui64", "34:56:78:9a:bc:de", "--json"], btmm_env)
    assert ok.returncode == cli.EXIT_OK


def test_usage_errors_exit_2_and_help_documents_codes(btmm_env: dict[str, str]) -> None:
    bad = run([script("btmm-ula"), "--no-such-flag"], btmm_env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    helptext = run([script("btmm-ula"), "--help"], btmm_env)
    assert helptext.returncode == 0
    for code in ("0 ", "1 ", "2 ", "3 "):
        assert f"  {code}" in helptext.stdout
    umbrella = run([script("btmm"), "ula", "eui64", "34:56:78:9a:bc:de", "--json"], btmm_env)
    assert umbrella.returncode == 0 and json.loads(umbrella.stdout)["eui64"] == "365678fffe9abcde"
    unknown = run([script("btmm"), "frobnicate"], btmm_env)
    assert unknown.returncode == 2 and "unknown stage" in unknown.stderr


def test_derive_copies_unknown_fields() -> None:
    src = {"type": "service", "v": 1, "instance": "Bob's iMac", "extra": [1]}
    rec = cli.derive(src, "tunnel-endpoint", host="x")
    assert rec["type"] == "tunnel-endpoint" and rec["extra"] == [1] and rec["instance"] == "Bob's iMac"
    assert list(rec)[:3] == ["type", "v", "host"]
