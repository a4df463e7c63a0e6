"""btmm-browse --watch uses DNS Push against btmm-serve (events long before a poll would run),
and still polls against a server without DNS Push (BIND)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import dns.query
import dns.update

from tests.conftest import script
from tests.server.serve_proc import ServeProc, account_key, rcode
from tools.peers.bind import BindServer, PeerZone

BOB = "bob.members.example."


def read_event(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any] | None:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        return None
    line = proc.stdout.readline()
    return json.loads(line) if line else None


def register(port: int, account: Path, instance: str, *, delete: bool = False) -> None:
    up = dns.update.UpdateMessage(BOB, keyring=account_key(account))
    owner = f"{instance}._ipp._tcp.{BOB}"
    if delete:
        up.delete(f"_ipp._tcp.{BOB}", "PTR", owner)
        up.delete(owner)
    else:
        up.add(f"_ipp._tcp.{BOB}", 120, "PTR", owner)
        up.add(owner, 120, "SRV", f"0 0 631 printer.{BOB}")
        up.add(owner, 120, "TXT", '"rp=ipp/print"')
        up.add(f"printer.{BOB}", 120, "AAAA", "fd12:3456:789a::631")
    assert rcode(dns.query.tcp(up, "127.0.0.1", port=port, timeout=5)) == "NOERROR"


def start_watch(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, XDG_CONFIG_HOME=str(workdir / "cfg"))
    return subprocess.Popen([script("btmm-browse"), "--server", f"127.0.0.1:{port}", "-d", BOB,
                             "-t", "_ipp._tcp", "--watch", "--json", "-v",
                             "--min-interval", "30", "--max-interval", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def stop(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    assert proc.stderr is not None
    return proc.returncode, proc.stderr.read().decode(errors="replace")


def test_watch_uses_dns_push(server: ServeProc, account: Path, workdir: Path) -> None:
    watcher = start_watch(server.port, workdir)
    try:
        time.sleep(1.0)  # first browse + subscriptions
        t0 = time.monotonic()
        register(server.port, account, "Office\\032Printer")
        added = read_event(watcher, 10)
        assert added is not None and added["event"] == "added", added
        assert added["instance"] == "Office Printer" and added["port"] == 631
        assert time.monotonic() - t0 < 10  # polling would wait ≥ 30 s (--min-interval 30)
        register(server.port, account, "Office\\032Printer", delete=True)
        removed = read_event(watcher, 10)
        assert removed is not None and removed["event"] == "removed"
    finally:
        code, err = stop(watcher)
    assert code == 0, err
    assert "DNS Push session" in err


def test_watch_falls_back_to_polling_without_push(account: Path, workdir: Path) -> None:
    key = account_key(account)
    zone = PeerZone(BOB.rstrip("."), key.name.to_text().rstrip("."), key.secret)
    with BindServer([zone], tls=False) as bind:
        watcher = start_watch(bind.port, workdir)
        try:
            time.sleep(1.0)
            assert read_event(watcher, 0.1) is None
        finally:
            code, err = stop(watcher)
    assert code == 0, err
    assert "no _dns-push-tls._tcp SRV record: polling" in err
