"""The background checkpointer of the SQLite store (dnssd_wa/server/store.py).

"A checkpoint in progress" is built deterministically from another process holding, on the
``-shm`` file, the locks SQLite's wal.c holds while it backfills: ``WAL_CKPT_LOCK`` and
``WAL_READ_LOCK(0)`` exclusive. The control holds ``WAL_WRITE_LOCK`` instead (what a FULL or
RESTART checkpoint, or another writer, holds) and shows the same commit then fails, so the
lock simulation really bites.
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import dns.message
import dns.name
import dns.rcode
import dns.tsig
import dns.update
import pytest

from dnssd_wa.server.store import WAL_HARD_LIMIT, WAL_RESERVE, Change, Checkpointer, Store
from tests.server.serve_proc import ServeProc, account_key, rcode, tcp_update_ok

ZONE = "bob.members.example."
WALINDEX_LOCK_OFFSET = 120  # wal.c: two WalIndexHdr (48 bytes each) + WalCkptInfo (24 bytes)
WAL_WRITE_LOCK, WAL_CKPT_LOCK, WAL_READ_LOCK0 = 0, 1, 3

HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
for lock in sys.argv[2:]:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, int(lock))
print("held", flush=True)
sys.stdin.read()
"""


@contextmanager
def locks_held_elsewhere(db: Path, *locks: int) -> Iterator[None]:
    """Another process holds these WAL locks (exclusive) on ``db``'s shared-memory file."""
    offsets = [str(WALINDEX_LOCK_OFFSET + lock) for lock in locks]
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, f"{db}-shm", *offsets],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


def commit(store: Store, i: int) -> None:
    """One registration-sized transaction (10 records)."""
    owner = dns.name.from_text(f"Host {i}._ssh._tcp.{ZONE}")
    texts = [f"record {k} of host {i}".encode() for k in range(10)]
    rows: list[tuple[str, dns.name.Name, int, bytes, int, float | None]] = [
        (ZONE, owner, 16, bytes([len(text)]) + text, 120, None) for text in texts]
    store.apply(Change(rows, [], [], {ZONE: i + 2}))


def manual_store(db: Path, commits: int = 20) -> Store:
    """A store without a checkpointer thread, its zone created and ``commits`` made."""
    store = Store(db, checkpoint="manual")
    store.ensure_zone(ZONE, 0.0)
    for i in range(commits):
        commit(store, i)
    return store


def rows_in_database_file(db: Path, tmp: Path) -> int:
    """Rows found in the database file alone (a copy without its log)."""
    copy = tmp / "copy-without-log.db"
    shutil.copyfile(db, copy)
    conn = sqlite3.connect(copy)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM rr").fetchone()[0])
    finally:
        conn.close()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_background_checkpoint_moves_the_log_into_the_database(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = Store(db)
    try:
        assert store.checkpointer is not None and store.checkpointer.running
        reserved = os.path.getsize(f"{db}-wal")
        store.ensure_zone(ZONE, 0.0)
        for i in range(60):  # ~280 log pages (no inline checkpoint): the thread runs once they stop
            commit(store, i)
        stats = store.checkpointer.stats
        ckpt = store.checkpointer
        wait_for(lambda: ckpt.caught_up, "a complete checkpoint after the last commit")
        assert stats.complete >= 1
        assert stats.errors == []
        assert rows_in_database_file(db, tmp_path) == 600  # every committed row is in the database file
        assert os.path.getsize(f"{db}-wal") == reserved
        commit(store, 60)  # the next commit restarts the log from its start, inside the reserve
        probe = Checkpointer(db)
        busy, log, copied = probe.checkpoint()
        probe.stop()
        assert busy == 0 and 0 < log < 20 and copied == log
        assert os.path.getsize(f"{db}-wal") == reserved
    finally:
        store.close()


def test_inline_checkpoint_only_at_the_hard_limit(tmp_path: Path) -> None:
    store = Store(tmp_path / "a.db")
    auto = Store(tmp_path / "b.db", checkpoint="auto")
    try:
        assert 0 < store.hard_frames * 4120 <= WAL_HARD_LIMIT < WAL_RESERVE
        assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone() == (store.hard_frames,)
        assert auto.checkpointer is None
        assert auto.db.execute("PRAGMA wal_autocheckpoint").fetchone() == (1000,)  # SQLite's default
    finally:
        store.close()
        auto.close()


def test_commit_goes_through_while_a_checkpoint_holds_its_locks(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    store = manual_store(db)
    store.db.execute("PRAGMA busy_timeout = 200")  # a blocked commit fails fast instead of after 5 s
    try:
        with locks_held_elsewhere(db, WAL_CKPT_LOCK, WAL_READ_LOCK0):
            other = Checkpointer(db)
            assert other.checkpoint()[0] == 1  # SQLite sees a checkpoint in progress …
            other.stop()
            for i in range(20, 30):
                commit(store, i)  # … and commits go through meanwhile
        with locks_held_elsewhere(db, WAL_WRITE_LOCK), pytest.raises(sqlite3.OperationalError):
            commit(store, 30)  # control: what a blocking checkpoint holds does stop the commit
        assert len(list(store.load())) == 300
    finally:
        store.close()


def test_checkpointer_runs_while_another_writer_holds_the_write_lock(tmp_path: Path) -> None:
    """Below the hard limit the checkpointer never takes the writer lock (PASSIVE)."""
    db = tmp_path / "w.db"
    store = manual_store(db)
    ckpt = Checkpointer(db)
    try:
        with locks_held_elsewhere(db, WAL_WRITE_LOCK):
            busy, log, copied = ckpt.checkpoint()
        assert busy == 0 and log > 20 and copied == log
        assert rows_in_database_file(db, tmp_path) == 200
    finally:
        ckpt.stop()
        store.close()


def test_hard_limit_checkpoints_in_the_commit_when_nothing_else_does(tmp_path: Path) -> None:
    """No checkpointer thread at all: the log still restarts, inside the reserve."""
    db = tmp_path / "h.db"
    store = Store(db, checkpoint="manual")
    reserved = os.path.getsize(f"{db}-wal")
    probe = Checkpointer(db)
    try:
        store.ensure_zone(ZONE, 0.0)
        for i in range(600):  # ~2700 log pages: several times the hard limit
            commit(store, i)
            assert os.path.getsize(f"{db}-wal") == reserved
        busy, log, _ = probe.checkpoint()
        assert busy == 0 and 0 < log < store.hard_frames + 10
        assert rows_in_database_file(db, tmp_path) >= 6000 - (store.hard_frames + 10)
    finally:
        probe.stop()
        store.close()


def test_log_stays_bounded_under_sustained_commits(tmp_path: Path) -> None:
    """Back to back commits, no quiet moment: the thresholds and the inline fallback."""
    db = tmp_path / "b.db"
    store = Store(db)
    reserved = os.path.getsize(f"{db}-wal")
    try:
        store.ensure_zone(ZONE, 0.0)
        for i in range(3000):
            commit(store, i)
            assert os.path.getsize(f"{db}-wal") == reserved
        assert store.checkpointer is not None
        stats = store.checkpointer.stats
        assert stats.passive >= 1 and stats.errors == []
        assert stats.max_log < store.hard_frames + 100, stats
    finally:
        store.close()
    again = Store(db)
    try:
        assert len(list(again.load())) == 30000
    finally:
        again.close()


def test_close_runs_a_last_checkpoint_and_joins_the_thread(tmp_path: Path) -> None:
    db = tmp_path / "close.db"
    store = Store(db)
    ckpt = store.checkpointer
    assert ckpt is not None
    store.ensure_zone(ZONE, 0.0)
    for i in range(5):  # too few for a checkpoint while running: the last one copies them
        commit(store, i)
    passive = ckpt.stats.passive
    store.close()
    assert not ckpt.running and ckpt.closed
    assert ckpt.stats.passive == passive + 1
    assert "btmm-serve-checkpoint" not in [t.name for t in threading.enumerate()]
    with pytest.raises(sqlite3.ProgrammingError):
        ckpt.db.execute("SELECT 1")
    with pytest.raises(sqlite3.ProgrammingError):
        store.db.execute("SELECT 1")
    assert not os.path.exists(f"{db}-wal")  # the last connection closed: nothing left in a log
    assert rows_in_database_file(db, tmp_path) == 50


def test_dropped_store_stops_its_thread(tmp_path: Path) -> None:
    store = Store(tmp_path / "drop.db")
    ckpt = store.checkpointer
    assert ckpt is not None and ckpt.running
    del store
    gc.collect()
    wait_for(lambda: ckpt.closed, "the checkpointer of a dropped store to close")
    assert not ckpt.running


def _burst(port: int, key: dns.tsig.Key, acked: list[str]) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            for i in range(100_000):
                name = f"ck-{i}.{ZONE}"
                up = dns.update.UpdateMessage(ZONE, keyring=key)
                up.add(name, 60, "A", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
                up.add(name, 60, "TXT", f'"burst {i}"')
                ok = tcp_update_ok(sock, up)
                if ok is None:
                    return
                if ok:
                    acked.append(name)
    except OSError:
        return


def test_kill9_while_checkpointing_keeps_every_acknowledged_update(tmp_path: Path, account: Path) -> None:
    db = tmp_path / "kill.db"
    proc = ServeProc(tmp_path, account, "--rate-limit", "0", db=db).start()
    size_at_start = os.path.getsize(db)
    acked: list[str] = []
    worker = threading.Thread(target=_burst, args=(proc.port, account_key(account), acked))
    worker.start()
    try:
        # several checkpoints have copied the log into the database file (nothing else writes it)
        wait_for(lambda: len(acked) >= 500 and os.path.getsize(db) > size_at_start + 8192,
                 "checkpoints during the burst", timeout=30)
    finally:
        proc.stop(sig=signal.SIGKILL)
        worker.join(10)
    assert not worker.is_alive()
    with ServeProc(tmp_path, account, db=db) as again:
        missing = [n for n in acked if rcode(again.query(n, "TXT", tcp=True)) != "NOERROR"]
        assert not missing, f"{len(missing)} of {len(acked)} acknowledged updates lost, e.g. {missing[:3]}"
