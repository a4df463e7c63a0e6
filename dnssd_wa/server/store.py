"""The SQLite store: zones (serial) and client records (with lease ends).

How this works
--------------
One database file in WAL mode. ``synchronous=FULL`` by default: in WAL mode that fsyncs
the log on every commit, so a transaction that :meth:`Store.commit` returned from
survives a crash of the process *and* of the machine. (``--sync normal`` trades the
machine-crash guarantee for latency: WAL + NORMAL still survives a killed process,
because committed frames are in the OS page cache, but not a power cut.) The server
acknowledges an UPDATE only after :meth:`Store.apply` has committed it.

The write-ahead log is grown to its working size when the store opens (a rolled-back
filler transaction whose pages SQLite spilled into the log). SQLite reuses the log from
its start after each checkpoint and never shrinks it, so the commits of UPDATEs overwrite
blocks that already exist: the fsync on each commit then has no file-size change to
journal, which halves its cost on ext4 here (~0.22 → ~0.12 ms). Durability is unchanged:
every commit still ends with an fsync of the log, and a crash recovers only committed
frames (spilled frames of a rolled-back transaction never carry a commit mark).

Records are stored as wire bytes: owner name uncompressed with its case, rdata
uncompressed (dnspython renders and parses both). Lease ends are wall-clock seconds.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import dns.name
import dns.rdata
import dns.rdataclass

SCHEMA = """
CREATE TABLE IF NOT EXISTS zone (
    name TEXT PRIMARY KEY,
    serial INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rr (
    id INTEGER PRIMARY KEY,
    zone TEXT NOT NULL,
    owner BLOB NOT NULL,
    rdtype INTEGER NOT NULL,
    ttl INTEGER NOT NULL,
    rdata BLOB NOT NULL,
    expires REAL
);
CREATE INDEX IF NOT EXISTS rr_expires ON rr(expires) WHERE expires IS NOT NULL;
"""
WAL_RESERVE = 4 << 20  # about the size the log reaches between automatic checkpoints (1000 pages)


class StoreError(Exception):
    """The database cannot be opened or is not a btmm-serve database."""


@dataclass(frozen=True)
class StoredRecord:
    rid: int
    zone: str
    owner: dns.name.Name
    rdtype: int
    wire: bytes
    ttl: int
    expires: float | None


@dataclass
class Change:
    """One transaction: rows to insert, delete and re-lease, and new zone serials."""

    inserts: list[tuple[str, dns.name.Name, int, bytes, int, float | None]]  # zone owner type rdata ttl exp
    deletes: list[int]
    updates: list[tuple[int, int, float | None]]  # rid, ttl, expires
    serials: dict[str, int]


class Store:
    def __init__(self, path: Path, *, sync: str = "full") -> None:
        self._next_id: int | None = None
        self._owner_wire: dict[tuple[bytes, ...], bytes] = {}  # owner labels → wire (owners repeat)
        try:
            self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
            self.db.executescript(SCHEMA)
            self._reserve_wal(path)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open database {path}: {exc}") from exc

    def _reserve_wal(self, path: Path) -> None:
        """Grow the write-ahead log to ~WAL_RESERVE bytes (see the module docstring): a
        transaction writes a big filler row with a tiny page cache, so SQLite spills its
        pages into the log, and is rolled back. Nothing is committed, the database file does
        not grow, and the log keeps its size (later commits overwrite the spilled frames)."""
        wal = Path(f"{path}-wal")
        if wal.exists() and wal.stat().st_size >= WAL_RESERVE:
            return
        db = self.db
        (cache_size,) = db.execute("PRAGMA cache_size").fetchone()
        db.execute("PRAGMA cache_size = 16")
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("CREATE TABLE wal_reserve (filler BLOB)")
                db.execute("INSERT INTO wal_reserve VALUES (zeroblob(?))", (WAL_RESERVE,))
            finally:
                db.execute("ROLLBACK")
        finally:
            db.execute(f"PRAGMA cache_size = {int(cache_size)}")

    def close(self) -> None:
        self.db.close()

    def ensure_zone(self, name: str, now: float) -> int:
        """The zone's serial, creating the zone row (serial 1) on first start."""
        row = self.db.execute("SELECT serial FROM zone WHERE name = ?", (name,)).fetchone()
        if row is not None:
            return int(row[0])
        self.db.execute("INSERT INTO zone(name, serial, created) VALUES (?, 1, ?)", (name, now))
        return 1

    def purge_expired(self, now: float) -> dict[str, int]:
        """Delete records whose lease ended while the server was down; counts per zone."""
        rows = self.db.execute(
            "SELECT zone, COUNT(*) FROM rr WHERE expires IS NOT NULL AND expires <= ? GROUP BY zone",
            (now,)).fetchall()
        if rows:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM rr WHERE expires IS NOT NULL AND expires <= ?", (now,))
            for zone, _count in rows:
                self.db.execute("UPDATE zone SET serial = serial + 1 WHERE name = ?", (zone,))
            self.db.execute("COMMIT")
        return {str(zone): int(count) for zone, count in rows}

    def load(self) -> Iterable[StoredRecord]:
        cursor = self.db.execute("SELECT id, zone, owner, rdtype, ttl, rdata, expires FROM rr")
        for rid, zone, owner, rdtype, ttl, rdata, expires in cursor:
            name = dns.name.from_wire(owner, 0)[0]
            yield StoredRecord(int(rid), str(zone), name, int(rdtype), bytes(rdata), int(ttl), expires)

    def apply(self, change: Change) -> list[int]:
        """Commit one change durably; returns the row ids of the inserted records.

        Row ids are handed out here (one process owns the file), so inserts go in one
        ``executemany``; a failed transaction leaves gaps, which is harmless.
        """
        if self._next_id is None:
            row = self.db.execute("SELECT COALESCE(MAX(id), 0) FROM rr").fetchone()
            self._next_id = int(row[0]) + 1
        first = self._next_id
        ids = list(range(first, first + len(change.inserts)))
        owners = self._owner_wire
        if len(owners) > 4096:
            owners.clear()
        rows = []
        for rid, (zone, owner, rdtype, rdata, ttl, expires) in zip(ids, change.inserts, strict=True):
            labels = owner.labels
            wire = owners.get(labels)
            if wire is None:
                wire = owners[labels] = b"".join([bytes((len(label),)) + label for label in labels])
            rows.append((rid, zone, wire, rdtype, ttl, rdata, expires))
        self._next_id = first + len(ids)
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            if rows:
                cur.executemany("INSERT INTO rr(id, zone, owner, rdtype, ttl, rdata, expires) "
                                "VALUES (?,?,?,?,?,?,?)", rows)
            if change.deletes:
                cur.executemany("DELETE FROM rr WHERE id = ?", [(rid,) for rid in change.deletes])
            if change.updates:
                cur.executemany("UPDATE rr SET ttl = ?, expires = ? WHERE id = ?",
                                [(ttl, exp, rid) for rid, ttl, exp in change.updates])
            for zone, serial in change.serials.items():
                cur.execute("UPDATE zone SET serial = ? WHERE name = ?", (serial, zone))
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return ids
