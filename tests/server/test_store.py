"""The SQLite store: the write-ahead log is reserved at open without committing anything."""

from __future__ import annotations

import os
from pathlib import Path

import dns.name

from dnssd_wa.server.store import WAL_RESERVE, Change, Store


def test_wal_reserved_nothing_committed_and_data_kept(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path)
    assert os.path.getsize(f"{path}-wal") >= WAL_RESERVE
    assert os.path.getsize(path) < WAL_RESERVE // 8  # the filler never reached the database
    tables = {row[0] for row in store.db.execute("SELECT name FROM sqlite_master")}
    assert "wal_reserve" not in tables and "rr" in tables
    store.ensure_zone("bob.members.example.", 0.0)
    owner = dns.name.from_text("h.bob.members.example.")
    wal_size = os.path.getsize(f"{path}-wal")
    for i in range(50):
        store.apply(Change([("bob.members.example.", owner, 1, bytes((192, 0, 2, i)), 60, None)], [], [],
                           {"bob.members.example.": i + 2}))
    assert os.path.getsize(f"{path}-wal") == wal_size  # commits overwrite, the log does not grow
    store.close()
    again = Store(path)
    assert len(list(again.load())) == 50
    assert again.ensure_zone("bob.members.example.", 0.0) == 51
    again.close()
