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
its start after each complete checkpoint and never shrinks it, so the commits of UPDATEs overwrite
blocks that already exist: the fsync on each commit then has no file-size change to
journal, which halves its cost on ext4 here (~0.22 → ~0.12 ms). Durability is unchanged:
every commit still ends with an fsync of the log, and a crash recovers only committed
frames (spilled frames of a rolled-back transaction never carry a commit mark).

Checkpoints run off the request path. SQLite's automatic checkpoint (every 1000 log
pages, about one registration in 220) runs inside the COMMIT of whichever UPDATE crosses
the threshold, and that request pays for copying the log into the database file and
fsyncing it (1.6–2.6 ms instead of ~0.35 ms for the commit, measured here). Instead a
:class:`Checkpointer` thread with its own connection runs ``PRAGMA
wal_checkpoint(PASSIVE)``: at the first quiet moment (no commit for ``CHECKPOINT_IDLE``
seconds) once half of ``CHECKPOINT_COMMITS`` commits are pending, and at once when all
are. A PASSIVE checkpoint takes neither the writer lock nor waits for readers, so a
commit can run while it copies (Python's sqlite3 releases the GIL inside SQLite calls).
When a checkpoint has copied the whole log and no reader still uses it, the next commit
restarts the log from its start — inside the reserved blocks again; that commit also
writes and fsyncs the log header (~0.15 ms more, once per restart, as before).

Bounded log: a PASSIVE checkpoint copies only the frames that existed when it began, and
a commit that lands meanwhile leaves the log incomplete, so it does not restart. Under
sustained back-to-back commits (a pipelined registrar) that can go on indefinitely. The
fallback is in the request path and DOES block that request: the serving connection
keeps SQLite's automatic checkpoint, but at ``WAL_HARD_LIMIT`` (3/4 of the reserve)
instead of 1000 pages, so the commit that takes the log past it runs the checkpoint
itself before the answer goes out, as every checkpoint used to. That one completes (no
commit can interleave with the only writer's own checkpoint; only a reader still on an
old snapshot could stop it), it copies only the frames the background checkpoints have
not copied yet, and the next commit restarts the log (should the thread's own checkpoint
hold the checkpoint lock at that moment, the next commit tries again). The thread never
uses RESTART or FULL: those take the writer lock, and a commit that meets it waits in
SQLite's busy handler, whose sleeps grow 1, 2, 5, 10 … ms (tens of ms measured under
sustained load), far worse than running the tail of the checkpoint inline. TRUNCATE is
never used: it would throw the reserve away. Should the log still outgrow the reserve,
``journal_size_limit`` cuts the file back to the reserved size when it restarts.

Crash safety is SQLite's: a checkpoint fsyncs the log before it writes database pages
and copies only committed frames, so a kill -9 at any point (in a commit or in a
checkpoint) loses nothing that was acknowledged. :meth:`Store.close` stops the thread,
which runs a last checkpoint and closes its connection before the store closes its own
(the last connection to close deletes the log; the next open reserves it again).

Records are stored as wire bytes: owner name uncompressed with its case, rdata
uncompressed (dnspython renders and parses both). Lease ends are wall-clock seconds.
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
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
WAL_HARD_LIMIT = WAL_RESERVE * 3 // 4  # past this the commit checkpoints inline (see the docstring)
CHECKPOINT_COMMITS = 100  # checkpoint at once with this many commits pending (a registration: ~5 pages)
CHECKPOINT_IDLE = 0.01  # … and with half as many, once no commit came for this long (seconds)
WAL_FRAME_HEADER = 24


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


@dataclass
class CheckpointStats:
    """What the checkpointer did (for tests and diagnostics)."""

    passive: int = 0  # PASSIVE checkpoints run
    complete: int = 0  # … that copied the whole log with no commit meanwhile (the next commit restarts it)
    busy: int = 0  # … that could not get their locks
    max_log: int = 0  # the most log frames a checkpoint saw
    last: tuple[int, int, int] = (0, -1, -1)  # (busy, log frames, frames copied) of the last one
    errors: list[str] = field(default_factory=list)  # the last few SQLite errors (the thread goes on)


class Checkpointer:
    """Checkpoints the log of one database on its own connection, in a daemon thread.

    When: once ``every // 2`` commits are pending, at the next quiet moment (no commit for
    ``idle`` seconds); at once when ``every`` are pending; and at the next quiet moment
    after a checkpoint that a concurrent commit left incomplete. Always PASSIVE.

    The store calls :meth:`committed` after each commit: an increment and a comparison, and
    an ``Event.set`` only when the thread is asleep with a checkpoint due. Without
    :meth:`start` nothing runs by itself and tests drive :meth:`checkpoint` directly.
    """

    def __init__(self, path: Path, *, sync: str = "full", every: int = CHECKPOINT_COMMITS,
                 idle: float = CHECKPOINT_IDLE) -> None:
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
        self.db.execute("PRAGMA wal_autocheckpoint=0")
        self.every = max(1, every)
        self.soon = max(1, every // 2)
        self.idle = idle
        self.stats = CheckpointStats()
        self.commits = 0  # commits so far (written by the serving thread only)
        self._covered = 0  # commits made before the last checkpoint began (written by the thread)
        self._incomplete = False  # the last checkpoint left frames behind (a commit ran meanwhile)
        self._sleeping = False  # the thread waits without a timeout (no checkpoint due)
        self._stopping = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="btmm-serve-checkpoint", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def caught_up(self) -> bool:
        """The last checkpoint began after the last commit and copied the whole log."""
        return self.commits == self._covered and not self._incomplete and self.stats.passive > 0

    def committed(self) -> None:
        """One more commit (serving thread). Wakes a sleeping thread once a checkpoint is
        due soon, and the thread in any state once one is due now."""
        self.commits += 1
        pending = self.commits - self._covered
        if pending == self.every or (self._sleeping and pending >= self.soon):
            self._wake.set()

    def checkpoint(self) -> tuple[int, int, int]:
        """One PASSIVE checkpoint: (busy, log frames, copied frames) as SQLite reports them
        (-1, -1 for the frames when busy)."""
        start = self._covered = self.commits
        row = self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        busy, log, copied = int(row[0]), int(row[1]), int(row[2])
        self._incomplete = bool(busy) or copied < log or self.commits != start
        self.stats.passive += 1
        self.stats.max_log = max(self.stats.max_log, log)
        if busy:
            self.stats.busy += 1
        elif not self._incomplete:
            self.stats.complete += 1
        self.stats.last = (busy, log, copied)
        return busy, log, copied

    def _due_soon(self) -> bool:
        return self._incomplete or self.commits - self._covered >= self.soon

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._sleeping = True  # before reading the counters: see committed()
                timeout = self.idle if self._due_soon() else None
                if timeout is not None:
                    self._sleeping = False
                seen = self.commits
                woke = self._wake.wait(timeout)
                self._wake.clear()
                self._sleeping = False
                if self._stopping or self.commits == self._covered:
                    continue
                quiet = not woke and self.commits == seen
                if self.commits - self._covered >= self.every or (quiet and self._due_soon()):
                    self._guarded_checkpoint()
            self._guarded_checkpoint()  # the last one: nothing writes any more
        finally:
            self.db.close()
            self._closed = True

    def _guarded_checkpoint(self) -> None:
        try:
            self.checkpoint()
        except sqlite3.Error as exc:  # the serving connection keeps working; try again later
            self.stats.errors.append(str(exc))
            del self.stats.errors[:-10]

    def stop(self, join: bool = True) -> None:
        """A last checkpoint, then the connection is closed (by the thread when it runs)."""
        self._stopping = True
        self._wake.set()
        if self._thread is None:
            if not self._closed:
                self._guarded_checkpoint()
                self.db.close()
                self._closed = True
        elif join:
            self._thread.join()


class Store:
    """The serving connection. ``checkpoint="background"`` (default) runs checkpoints in a
    :class:`Checkpointer` thread; ``"manual"`` starts no thread (tests drive a Checkpointer);
    both keep the inline checkpoint at ``WAL_HARD_LIMIT``. ``"auto"`` is SQLite's automatic
    checkpoint every 1000 pages inside the commits (the old behaviour, for comparison)."""

    def __init__(self, path: Path, *, sync: str = "full", checkpoint: str = "background") -> None:
        self._next_id: int | None = None
        self._owner_wire: dict[tuple[bytes, ...], bytes] = {}  # owner labels → wire (owners repeat)
        self.checkpointer: Checkpointer | None = None
        self.hard_frames = 1000  # SQLite's default automatic checkpoint
        if checkpoint not in ("background", "manual", "auto"):
            raise ValueError(f"checkpoint must be background, manual or auto, not {checkpoint!r}")
        try:
            self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open database {path}: {exc}") from exc
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
            if checkpoint != "auto":
                (page_size,) = self.db.execute("PRAGMA page_size").fetchone()
                self.hard_frames = max(1, WAL_HARD_LIMIT // (int(page_size) + WAL_FRAME_HEADER))
                self.db.execute(f"PRAGMA wal_autocheckpoint={self.hard_frames}")
            self.db.executescript(SCHEMA)
            self._reserve_wal(path)
            if checkpoint == "background":
                self.checkpointer = Checkpointer(path, sync=sync)
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise StoreError(f"cannot open database {path}: {exc}") from exc
        self._finalizer = None
        if self.checkpointer is not None:
            self.checkpointer.start()
            # a store dropped without close() still stops its thread and closes that connection
            self._finalizer = weakref.finalize(self, self.checkpointer.stop, False)

    def _reserve_wal(self, path: Path) -> None:
        """Grow the write-ahead log to ~WAL_RESERVE bytes (see the module docstring): a
        transaction writes a big filler row with a tiny page cache, so SQLite spills its
        pages into the log, and is rolled back. Nothing is committed, the database file does
        not grow, and the log keeps its size (later commits overwrite the spilled frames)."""
        wal = Path(f"{path}-wal")
        if not (wal.exists() and wal.stat().st_size >= WAL_RESERVE):
            self._fill_wal()
        # a log that outgrew the reserve is cut back to it when it restarts (never below)
        self.db.execute(f"PRAGMA journal_size_limit = {max(wal.stat().st_size, WAL_RESERVE)}")

    def _fill_wal(self) -> None:
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
        """Stop the checkpointer (a last checkpoint, thread joined, its connection closed),
        then close the serving connection."""
        if self._finalizer is not None:
            self._finalizer.detach()
        if self.checkpointer is not None:
            self.checkpointer.stop()
        self.db.close()

    def ensure_zone(self, name: str, now: float) -> int:
        """The zone's serial, creating the zone row (serial 1) on first start."""
        row = self.db.execute("SELECT serial FROM zone WHERE name = ?", (name,)).fetchone()
        if row is not None:
            return int(row[0])
        self.db.execute("INSERT INTO zone(name, serial, created) VALUES (?, 1, ?)", (name, now))
        self._committed()
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
            self._committed()
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
        self._committed()
        return ids

    def _committed(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.committed()
