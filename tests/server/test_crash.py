"""Durability: kill -9 during a burst of updates loses no acknowledged update; restarts purge
expired leases; SIGTERM is a clean exit 0."""

from __future__ import annotations

import signal
import socket
import struct
import threading
import time
from pathlib import Path

import dns.edns
import dns.message
import dns.rcode
import dns.update

from tests.server.serve_proc import ServeProc, account_key, names, rcode, tcp_update_ok

BOB = "bob.members.example."
LEASE = dns.edns.OptionType.make(2)


def _burst(port: int, account: Path, acked: list[str], stop: threading.Event) -> None:
    key = account_key(account)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            for i in range(100_000):
                if stop.is_set():
                    return
                name = f"burst-{i}.{BOB}"
                up = dns.update.UpdateMessage(BOB, keyring=key)
                up.add(name, 60, "A", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
                ok = tcp_update_ok(sock, up)
                if ok is None:
                    return
                if ok:
                    acked.append(name)
    except OSError:
        return


def test_kill9_during_burst_keeps_every_acknowledged_update(tmp_path: Path, account: Path) -> None:
    db = tmp_path / "crash.db"
    first = ServeProc(tmp_path, account, "--rate-limit", "0", db=db).start()
    acked: list[str] = []
    stop = threading.Event()
    worker = threading.Thread(target=_burst, args=(first.port, account, acked, stop))
    worker.start()
    deadline = time.monotonic() + 10
    while len(acked) < 150 and time.monotonic() < deadline:
        time.sleep(0.01)
    first.stop(sig=signal.SIGKILL)
    worker.join(10)
    stop.set()
    assert len(acked) >= 150
    with ServeProc(tmp_path, account, db=db) as second:
        missing = [n for n in acked if rcode(second.query(n, "A", tcp=True)) != "NOERROR"]
        assert not missing, f"{len(missing)} acknowledged updates lost, e.g. {missing[:3]}"


def test_restart_restores_and_purges_expired(tmp_path: Path, account: Path) -> None:
    db = tmp_path / "restart.db"
    key = account_key(account)
    with ServeProc(tmp_path, account, "--lease-min", "1", db=db) as proc:
        up = dns.update.UpdateMessage(BOB, keyring=key)
        up.use_edns(0, options=[dns.edns.GenericOption(LEASE, struct.pack("!I", 1))])
        up.add(f"short.{BOB}", 60, "A", "192.0.2.1")
        assert rcode(proc.send(up)) == "NOERROR"
        up = dns.update.UpdateMessage(BOB, keyring=key)
        up.use_edns(0, options=[dns.edns.GenericOption(LEASE, struct.pack("!I", 3600))])
        up.add(f"Long.{BOB}", 60, "A", "192.0.2.2")
        up.add(f"forever.{BOB}", 60, "TXT", '"x"')
        assert rcode(proc.send(up)) == "NOERROR"
        serial = proc.query(BOB, "SOA").answer[0][0].serial
        assert proc.stop() == 0
    time.sleep(1.2)
    with ServeProc(tmp_path, account, "--lease-min", "1", db=db) as proc:
        assert rcode(proc.query(f"short.{BOB}", "A")) == "NXDOMAIN"
        long = proc.query(f"long.{BOB}", "A")
        assert names(long) == ["192.0.2.2"] and str(long.answer[0].name) == f"long.{BOB}"
        assert names(proc.query(f"forever.{BOB}", "TXT")) == ['"x"']
        assert proc.query(BOB, "SOA").answer[0][0].serial == serial + 1
        start = next(e for e in proc.log_events() if e.get("event") == "start")
        assert start["purged_expired"] == 1
