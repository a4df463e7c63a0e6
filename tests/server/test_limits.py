"""Per-key update rate limit, CLI errors (one line, exit 2), and the human banner."""

from __future__ import annotations

import subprocess
from pathlib import Path

import dns.query
import dns.update

from tests.conftest import script
from tests.server.serve_proc import ServeProc, account_key, rcode

BOB = "bob.members.example."


def test_rate_limit_per_key(tmp_path: Path, account: Path) -> None:
    key = account_key(account)
    with ServeProc(tmp_path, account, "--rate-limit", "0.5", "--burst", "3") as server:
        codes = []
        for i in range(5):
            up = dns.update.UpdateMessage(BOB, keyring=key)
            up.add(f"rl{i}.{BOB}", 60, "A", "192.0.2.1")
            codes.append(rcode(dns.query.tcp(up, "127.0.0.1", port=server.port, timeout=5)))
        assert codes[:3] == ["NOERROR"] * 3 and codes[3:] == ["REFUSED"] * 2
        assert rcode(server.query(f"rl4.{BOB}", "A")) == "NXDOMAIN"
        refused = [e for e in server.log_events() if e.get("rcode") == "REFUSED"]
        assert refused and "rate limit" in refused[0]["what"]


def test_cli_errors_are_one_line(tmp_path: Path, account: Path) -> None:
    base = [script("btmm-serve"), "--account", str(account), "--db", str(tmp_path / "x.db")]
    cases = [
        (["--listen", "nonsense"], "expected ADDR:PORT"),
        (["--listen", "127.0.0.1:0", "--tls-listen", "127.0.0.1:0"], "--self-signed"),
        (["--listen", "127.0.0.1:0", "--tsig-key", str(tmp_path / "missing.key")], "does not exist"),
        (["--listen", "127.0.0.1:0", "--lease-min", "10", "--lease-max", "5"], "--lease-min"),
    ]
    for extra, needle in cases:
        done = subprocess.run(base + extra, capture_output=True, text=True, timeout=20)
        assert done.returncode == 2, (extra, done.stderr)
        assert needle in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    loose = tmp_path / "loose.key"
    loose.write_text('key "k" { algorithm hmac-sha256; secret "AAAA"; };\n')
    loose.chmod(0o644)
    done = subprocess.run([*base, "--listen", "127.0.0.1:0", "--tsig-key", str(loose)],
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 2 and "chmod" in done.stderr


def test_human_banner_names_keys_not_secrets(tmp_path: Path, account: Path) -> None:
    proc = subprocess.Popen([script("btmm-serve"), "--account", str(account), "--db", str(tmp_path / "b.db"),
                             "--listen", "127.0.0.1:0", "--pretty"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    try:
        assert proc.stderr is not None
        banner = "".join(proc.stderr.readline() for _ in range(8))
    finally:
        proc.terminate()
        proc.wait(10)
    assert "btmm-serve ready" in banner and "btmm-bob.members.example" in banner
    secret = account_key(account).secret
    import base64

    assert base64.b64encode(secret).decode() not in banner


def test_cert_and_key_files(tmp_path: Path, account: Path) -> None:
    from dnssd_wa.server.tlsutil import fingerprint, self_signed

    cert, key = self_signed(tmp_path / "pair", ["bob.members.example."], ["127.0.0.1"])
    with ServeProc(tmp_path, account, "--cert", str(cert), "--key", str(key)) as server:
        assert server.ready["fingerprint"] == fingerprint(cert)
        assert server.ready["cert_file"] == str(cert)
        done = subprocess.run(["kdig", "+tls", "-p", str(server.tls_port), "@127.0.0.1", BOB, "SOA",
                               "+short"], capture_output=True, text=True, timeout=20)
        assert "hostmaster.bob.members.example." in done.stdout, done.stdout + done.stderr


def test_startup_objects_are_frozen_out_of_the_collector(tmp_path: Path, account: Path) -> None:
    """Modules and zones loaded at start are moved out of gen-2 collections (tail latency)."""
    with ServeProc(tmp_path, account) as server:
        assert server.ready["gc_frozen"] > 10_000  # the imported modules alone are far more
        up = dns.update.UpdateMessage(BOB, keyring=account_key(account))
        up.add(f"gc.{BOB}", 60, "A", "192.0.2.1")
        assert rcode(dns.query.tcp(up, "127.0.0.1", port=server.port, timeout=5)) == "NOERROR"
