"""The local store: every record, durably, before anything acts on it.

One SQLite database in WAL mode with synchronous=FULL, so a committed record
survives a crash or a power cut. The outbox is not a separate table: it is
the set of records not yet confirmed by the broker (sent_at IS NULL), read
through a partial index in priority order, then creation order.

Images (scene, plate crop) are files named by their sha256 under
data_dir/images, referenced from records and listed in the `images` table.

Each thread gets its own connection; every write is one short transaction,
so the alarm path never waits behind a long one (the purge deletes in small
batches for the same reason).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterable

import sqlite_utils
from cryptography.exceptions import InvalidTag

from agent.privacy import Sealer
from agent.records import KINDS, Record, new_record, split_personal
from agent.sqlite_threads import ThreadConnections, damage_before_opening, is_damage, set_aside

log = logging.getLogger("gate.store")

# agent/salvage.py knows the rows of `records` and `images` by these columns when it reads a
# damaged file page by page (_is_record_row, _is_image_row): a migration that changes them
# changes those too (tests/test_requeue.py reads a store whose page 1 is gone).
MIGRATIONS = [
    """
    CREATE TABLE records (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        uuid TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        priority INTEGER NOT NULL,
        created REAL NOT NULL,
        time TEXT NOT NULL,
        schema INTEGER NOT NULL,
        body TEXT NOT NULL,
        sealed BLOB,
        sent_at REAL
    );
    CREATE INDEX outbox ON records(priority, seq) WHERE sent_at IS NULL;
    CREATE INDEX records_by_kind_time ON records(kind, created);
    CREATE TABLE images (
        sha256 TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        size INTEGER NOT NULL,
        created REAL NOT NULL,
        record_uuid TEXT,
        sent_at REAL
    );
    CREATE INDEX images_unsent ON images(created) WHERE sent_at IS NULL;
    CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated REAL NOT NULL);
    """,
]

NUMBER, NULL = (int, float), type(None)
RECORD_TYPES = {"uuid": str, "kind": str, "priority": int, "created": NUMBER, "time": str, "schema": int,
                "body": str, "sealed": (bytes, NULL)}
IMAGE_TYPES = {"sha256": str, "role": str, "size": int, "created": NUMBER, "record_uuid": (str, NULL)}
"""The columns a damaged store's rows are read back by (agent/salvage.py) and the type of each as
the store writes it (MIGRATIONS): how a row of the store is known without its schema, and a
salvaged row the store cannot take (misfit)."""


def misfit(values, types: dict) -> str:
    """What in `values` (in the order of `types`) the store would not write there: a NULL where
    it requires a value, or a value of another type ("" when all fit)."""
    for value, (name, allowed) in zip(values, types.items()):
        if isinstance(value, allowed) and not isinstance(value, bool):
            continue
        if value is None:
            return f"its {name} is missing (NULL), which the store requires"
        return f"its {name} is a {type(value).__name__}, not what the store holds there"
    return ""


DAMAGE_MARK = "gate.db.damage-found"
"""Written beside gate.db when SQLite reports damage while the agent runs: the next start sets
the store aside (and housekeeping requeues what it held), since that damage may lie deeper
than the first page, where a check at start cannot see it."""

REQUEUED_KEY = "requeued"
"""State key: the damaged stores whose unsent records were put back into the outbox."""

# Kinds that are never dropped while unsent, whatever the disk says.
PROTECTED = ("alarm", "alert", "access_decision", "tamper")
_UNSENT_PROTECTED = f"sent_at IS NULL AND kind IN {PROTECTED!r}"

# The order in which the disk quota frees space: (what, SQL condition on records).
PURGE_ORDER = [
    ("images of synced records", None),
    ("synced health records", "kind = 'health' AND sent_at IS NOT NULL"),
    ("unsent health records", "kind = 'health' AND sent_at IS NULL"),
    ("synced reads and faults", "kind IN ('plate_read','card_read','badge_read','fault') "
                                "AND sent_at IS NOT NULL"),
    ("unsent images", "images"),
    ("synced barrier and command records", "kind IN ('barrier','command') AND sent_at IS NOT NULL"),
    ("synced alarms, alerts, decisions, tamper", "sent_at IS NOT NULL"),
    ("unsent reads and faults", "kind IN ('plate_read','card_read','badge_read','fault','barrier','command') "
                                "AND sent_at IS NULL"),
]


class StoreError(Exception):
    pass


class DiskFull(StoreError):
    pass


class DamagedStore(StoreError):
    """gate.db is there but SQLite cannot read it as a database (an SD card's failure, most often)."""


def _as_store_error(exc: sqlite3.Error, path: Path, doing: str) -> StoreError:
    kind = DamagedStore if is_damage(exc) else StoreError
    return kind(f"cannot {doing} database {path}: {exc}")


class Store:
    def __init__(self, data_dir: str | os.PathLike, *, device_id: str, site: str,
                 tz: str = "Asia/Shanghai", sealer: Sealer | None = None,
                 retention: dict[str, int] | None = None, quota_mb: int = 2048,
                 reserve_mb: int = 16):
        self.dir = Path(data_dir)
        self.image_dir = self.dir / "images"
        self.path = self.dir / "gate.db"
        self.device_id, self.site, self.tz = device_id, site, tz
        self.sealer = sealer
        self.retention = retention or {}
        self.quota_bytes = quota_mb * 1024 * 1024
        self.reserve_bytes = reserve_mb * 1024 * 1024
        self.reserve_path = self.dir / "alarm-reserve"
        self._connections = ThreadConnections(self.path, foreign_keys=True)
        self._local = threading.local()
        self.listeners: list = []
        """Called with each Record once it is durably stored (in the writer's thread: be quick)."""
        self.sent_listeners: list = []
        """Called with the list of UUIDs the broker confirmed, once that is committed."""
        self.disk_full = False
        self.damage_found = ""
        """What SQLite said when it found the file damaged while running ("" if it has not)."""
        self.undecodable: dict[str, str] = {}
        """uuid -> why: unsent records that cannot be read back (since this Store opened)."""
        try:
            self.image_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create data directory {self.dir} (storage.data_dir): "
                             f"{exc.strerror}") from None
        damage = damage_before_opening(self.path)
        if damage:
            raise DamagedStore(f"cannot open database {self.path}: {damage}")
        try:
            self._migrate()
        except StoreError:
            self.close()
            raise
        self._keep_reserve()

    # --- connections -----------------------------------------------------------

    @property
    def db(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                conn = self._connections.get()
            except sqlite3.Error as exc:
                raise _as_store_error(exc, self.path, "open") from None
            db = sqlite_utils.Database(conn)
            self._local.db = db
        return db

    def close(self) -> None:
        self._connections.close()
        self._local = threading.local()

    def _migrate(self) -> None:
        conn = self.db.conn
        try:
            self._migrate_schema(conn)
        except sqlite3.DatabaseError as exc:
            raise _as_store_error(exc, self.path, "read") from None

    def _migrate_schema(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(f"{self.path} has schema version {version}, newer than this agent "
                             f"knows ({len(MIGRATIONS)}); upgrade gate-agent")
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            conn.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
            log.info("store schema migrated to version %d", number)

    # --- writing -----------------------------------------------------------------

    def add(self, kind: str, data: dict, at: float | None = None) -> Record:
        """Store a new record durably and return it (with its sequence number)."""
        record = new_record(kind, data, device_id=self.device_id, site=self.site, tz=self.tz, at=at)
        self.put(record)
        return record

    def put(self, record: Record) -> Record:
        public, personal = split_personal(record)
        sealed = None
        if personal:
            if self.sealer is None:
                raise StoreError(f"a {record.kind} record carries personal data but no data key "
                                 "is loaded (privacy.key_file)")
            sealed = self.sealer.seal(personal, record.uuid)
        row = (record.uuid, record.kind, record.priority, record.created, record.time, record.schema,
               json.dumps(public, ensure_ascii=False), sealed)
        sql = ("INSERT INTO records (uuid, kind, priority, created, time, schema, body, sealed) "
               "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(uuid) DO NOTHING RETURNING seq")
        try:
            found = self._write(sql, row)
        except DiskFull:
            if record.kind not in PROTECTED:
                raise
            self._release_reserve()
            found = self._write(sql, row)
        if found is None:  # the same UUID stored before: keep the first
            found = self.db.execute("SELECT seq FROM records WHERE uuid = ?", [record.uuid]).fetchone()
        record.seq = found[0]
        for listener in list(self.listeners):
            listener(record)
        return record

    def _write(self, sql: str, params) -> tuple | None:
        try:
            return self.db.execute(sql, params).fetchone()
        except sqlite3.DatabaseError as exc:
            error = self._write_error(exc)
            if error is exc:
                raise
            raise error from None

    def _write_error(self, exc: BaseException) -> BaseException:
        """What a failed write raises: DiskFull for a full disk (or an I/O error writing, which
        on an SD card is the same to the caller), the error itself otherwise, damage noted."""
        if isinstance(exc, sqlite3.OperationalError) and ("full" in str(exc) or "disk I/O" in str(exc)):
            self.disk_full = True
            return DiskFull(f"disk full writing to {self.path}: {exc}")
        if isinstance(exc, sqlite3.DatabaseError):
            self.note_damage(exc)
        return exc

    def note_damage(self, exc: sqlite3.Error) -> None:
        """If SQLite says the file is damaged: remember it, say it once, and leave DAMAGE_MARK
        so that the next start sets the file aside. The running agent goes on with what still
        works (an alarm the store refuses is sent from memory)."""
        if not is_damage(exc) or self.damage_found:
            return
        self.damage_found = str(exc)
        log.critical("store %s damaged while running (%s): it is set aside at the next start and "
                     "what it holds requeued; restart the agent to do it now", self.path, exc)
        try:
            found_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            (self.dir / DAMAGE_MARK).write_text(f"{found_at} {exc}\n")
        except OSError as mark_exc:
            log.error("cannot leave %s: %s", self.dir / DAMAGE_MARK, mark_exc.strerror)

    def add_image(self, data: bytes, role: str, record_uuid: str | None = None) -> str:
        """Store image bytes as images/<sha256[:2]>/<sha256>.jpg; return the sha256."""
        digest = hashlib.sha256(data).hexdigest()
        path = self.image_path(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                self.disk_full = True
                raise DiskFull(f"cannot write image {path}: {exc.strerror}") from None
        self._write("INSERT INTO images (sha256, role, size, created, record_uuid) VALUES (?,?,?,?,?) "
                    "ON CONFLICT(sha256) DO NOTHING", (digest, role, len(data), time.time(), record_uuid))
        return digest

    def image_path(self, sha256: str) -> Path:
        return self.image_dir / sha256[:2] / f"{sha256}.jpg"

    # --- the outbox --------------------------------------------------------------

    def pending(self, limit: int = 100, exclude: Iterable[str] = ()) -> list[Record]:
        """The next unsent records: by priority, then creation order. A record that cannot be
        read back is left out from then on (see `undecodable`): one damaged row must not stop
        the outbox behind it."""
        exclude = list(exclude) + list(self.undecodable)
        sql = "SELECT * FROM records WHERE sent_at IS NULL"
        if exclude:
            sql += f" AND uuid NOT IN ({','.join('?' * len(exclude))})"
        sql += " ORDER BY priority, seq LIMIT ?"
        try:
            rows = self.db.execute(sql, exclude + [limit]).fetchall()
        except sqlite3.DatabaseError as exc:
            self.note_damage(exc)
            raise
        records = []
        for row in rows:
            try:
                records.append(self._record(row))
            except Exception as exc:
                self._undecodable(row, exc)
        return records

    def _undecodable(self, row, exc: Exception) -> None:
        seq, uuid, kind = row[:3]
        if isinstance(exc, InvalidTag):
            reason = "its personal fields do not open with this device's data key (privacy.key_file " \
                     "replaced, or the stored bytes damaged)"
        elif isinstance(exc, ValueError):
            reason = f"its body is not JSON (the stored bytes damaged): {exc}"
        else:
            reason = f"{type(exc).__name__}: {exc}"
        self.undecodable[uuid] = reason
        detail = f"record {uuid} ({kind}, seq {seq}) cannot be read back: {reason}; kept in {self.path}, not sent"
        log.error("%s", detail)
        try:
            self.add("fault", {"subsystem": "store", "condition": "unreadable_record", "detail": detail})
        except Exception as fault_exc:
            log.error("cannot record that fault either: %s", fault_exc)

    def mark_sent(self, uuids: Iterable[str], at: float | None = None) -> None:
        uuids = list(uuids)
        if not uuids:
            return
        at = time.time() if at is None else at
        try:
            self.db.execute(f"UPDATE records SET sent_at = ? WHERE uuid IN ({','.join('?' * len(uuids))})",
                            [at] + uuids)
        except sqlite3.DatabaseError as exc:
            self.note_damage(exc)
            raise
        for listener in list(self.sent_listeners):
            listener(uuids)

    def mark_image_sent(self, sha256: str, at: float | None = None) -> None:
        self.db.execute("UPDATE images SET sent_at = ? WHERE sha256 = ?", [at or time.time(), sha256])

    def pending_images(self, limit: int = 10) -> list[dict]:
        """Unsent images whose record has been sent (images never hold records back)."""
        rows = self.db.execute(
            "SELECT i.sha256, i.role, i.size, i.record_uuid FROM images i "
            "LEFT JOIN records r ON r.uuid = i.record_uuid "
            "WHERE i.sent_at IS NULL AND (r.sent_at IS NOT NULL OR i.record_uuid IS NULL) "
            "ORDER BY i.created LIMIT ?", [limit]).fetchall()
        return [dict(zip(("sha256", "role", "size", "record_uuid"), row)) for row in rows]

    def get(self, uuid: str) -> Record | None:
        row = self.db.execute("SELECT * FROM records WHERE uuid = ?", [uuid]).fetchone()
        return self._record(row) if row else None

    def records(self, kind: str | None = None, limit: int = 100) -> list[Record]:
        sql, args = "SELECT * FROM records", []
        if kind:
            sql, args = sql + " WHERE kind = ?", [kind]
        rows = self.db.execute(sql + " ORDER BY seq DESC LIMIT ?", args + [limit]).fetchall()
        return [self._record(row) for row in rows]

    def _record(self, row) -> Record:
        seq, uuid, kind, _prio, created, rtime, schema, body, sealed, _sent = row
        data = json.loads(body)
        if sealed is not None:
            if self.sealer is None:
                data["sealed"] = True
            else:
                data.update(self.sealer.open(sealed, uuid))
        rec = Record(kind=kind, data=data, uuid=uuid, device_id=self.device_id, site=self.site,
                     seq=seq, time=rtime, schema=schema, created=created)
        return rec

    def depth(self) -> dict:
        """Outbox depth per priority and the age of the oldest unsent record."""
        rows = self.db.execute("SELECT kind, COUNT(*), MIN(created) FROM records "
                               "WHERE sent_at IS NULL GROUP BY kind").fetchall()
        by_kind = {kind: n for kind, n, _ in rows}
        oldest = min((t for _, _, t in rows), default=None)
        images = self.db.execute("SELECT COUNT(*) FROM images WHERE sent_at IS NULL").fetchone()[0]
        by_priority = {"alarm": 0, "decision": 0, "read": 0, "image": images, "health": 0}
        names = ["alarm", "decision", "read", "image", "health"]
        for kind, n in by_kind.items():
            by_priority[names[KINDS[kind].priority]] += n
        return {"by_priority": by_priority, "by_kind": by_kind,
                "total": sum(by_kind.values()) + images,
                "oldest_unsent_s": round(time.time() - oldest, 1) if oldest else 0.0}

    def has_unsent(self, priority: int) -> bool:
        """Whether a record of this priority (0: alarms) waits in the outbox."""
        return self.db.execute("SELECT 1 FROM records WHERE sent_at IS NULL AND priority = ? LIMIT 1",
                               [priority]).fetchone() is not None

    def last_sent(self) -> float | None:
        return self.db.execute("SELECT MAX(sent_at) FROM records").fetchone()[0]

    # --- records from a damaged store --------------------------------------------

    def requeue(self, salvage, chunk: int = 500, now: float | None = None) -> dict:
        """Put the unsent records and images read from a damaged store (agent.salvage) into
        this outbox, with their own UUIDs (one already here stays as it is), a few hundred
        per transaction so an alarm never waits long behind them. A record this agent could
        not send (an unknown kind, a body that is not JSON, personal fields sealed under
        another data key, a column the store requires missing or of the wrong type) is left
        out and listed under `refused`; an image row like that is counted under
        `images_refused`.

        Read page by page (salvage.scanned), the rows come from freed pages too: a record
        older than its kind's retention (storage.retention) is one purge had removed, once
        the platform confirmed it, and is counted under `too_old`, not queued. Rows SQLite
        read through its tables are live, so never too old: retention never removes an
        unsent record."""
        report = {"queued": {}, "already_here": 0, "refused": [], "too_old": 0, "images_queued": 0,
                  "images_missing": 0, "images_refused": 0}
        rows = self._requeueable(salvage, report, time.time() if now is None else now)
        sql = ("INSERT INTO records (uuid, kind, priority, created, time, schema, body, sealed) "
               "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(uuid) DO NOTHING")
        for start in range(0, len(rows), chunk):
            batch = [(u, k, KINDS[k].priority, c, t, sc, b, se) for u, k, _p, c, t, sc, b, se
                     in rows[start:start + chunk]]
            added = self._insert_many(sql, batch)
            for (uuid, kind, *_), new in zip(batch, added):
                if new:
                    report["queued"][kind] = report["queued"].get(kind, 0) + 1
                else:
                    report["already_here"] += 1
        images = [image for image in salvage.images if not misfit(image, IMAGE_TYPES)]
        report["images_refused"] = len(salvage.images) - len(images)
        present = [image for image in images if self.image_path(image[0]).is_file()]
        report["images_missing"] = len(images) - len(present)
        sql = ("INSERT INTO images (sha256, role, size, created, record_uuid) VALUES (?, ?, ?, ?, ?) "
               "ON CONFLICT(sha256) DO NOTHING")
        for start in range(0, len(present), chunk):
            report["images_queued"] += sum(self._insert_many(sql, present[start:start + chunk]))
        self.mark_requeued(Path(salvage.path).name, {
            "queued": sum(report["queued"].values()), "refused": len(report["refused"]),
            "too_old": report["too_old"],
            "unreadable_rows": sum(b - a + 1 for a, b in salvage.unreadable)})
        return report

    def _requeueable(self, salvage, report: dict, now: float) -> list[tuple]:
        """The salvaged records to queue; the others go into the report (refused, too_old)."""
        rows = []
        for row in salvage.records:
            problem = self._unsendable(row)
            if problem:
                report["refused"].append((row[0], problem))
            elif salvage.scanned and self._past_retention(row[1], row[3], now):
                report["too_old"] += 1
            else:
                rows.append(row)
        return rows

    def _past_retention(self, kind: str, created: float, now: float) -> bool:
        days = self.retention.get(kind)
        return days is not None and created < now - days * 86400

    def requeued(self) -> dict:
        """{file name: what requeue did with it} for the damaged stores already requeued."""
        return self.state_get(REQUEUED_KEY, {})

    def mark_requeued(self, name: str, summary: dict) -> None:
        done = self.requeued()
        done[name] = dict(summary, at=time.time())
        self.state_set(REQUEUED_KEY, done)

    def _unsendable(self, row: tuple) -> str:
        uuid, kind, *_, body, sealed = row
        if kind not in KINDS:
            return f"unknown kind {kind!r}"
        unfit = misfit(row, RECORD_TYPES)
        if unfit:
            return unfit
        try:
            json.loads(body)
        except ValueError:
            return "its body is not JSON"
        if sealed is not None:
            if self.sealer is None:
                return "personal fields sealed, and no data key loaded"
            try:
                self.sealer.open(sealed, uuid)
            except Exception:
                return "personal fields sealed under another data key (privacy.key_file)"
        return ""

    def _insert_many(self, sql: str, rows: list[tuple]) -> list[bool]:
        """One transaction; for each row, whether it was new. Whatever goes wrong inside it
        (a full disk, a row SQLite refuses), it is rolled back: one left open would hold the
        store's write lock, and every later write, alarms too, would wait and fail."""
        conn = self.db.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            added = [conn.execute(sql, row).rowcount == 1 for row in rows]
            conn.execute("COMMIT")
        except BaseException as exc:
            self._roll_back(conn)
            error = self._write_error(exc)
            if error is exc:
                raise
            raise error from None
        return added

    def _roll_back(self, conn: sqlite3.Connection) -> None:
        if not conn.in_transaction:
            return
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.error("cannot roll back a write to %s: %s", self.path, exc)

    # --- small persistent state ----------------------------------------------------

    def state_get(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM state WHERE key = ?", [key]).fetchone()
        return json.loads(row[0]) if row else default

    def state_set(self, key: str, value) -> None:
        self.db.execute("INSERT INTO state (key, value, updated) VALUES (?, ?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
                        [key, json.dumps(value, ensure_ascii=False), time.time()])

    # --- retention and quota -------------------------------------------------------

    def used_bytes(self) -> int:
        page_size, pages, free = (self.db.execute(f"PRAGMA {p}").fetchone()[0]
                                  for p in ("page_size", "page_count", "freelist_count"))
        images = self.db.execute("SELECT COALESCE(SUM(size), 0) FROM images").fetchone()[0]
        return (pages - free) * page_size + images

    def purge(self, now: float | None = None, batch: int = 500) -> dict:
        """Apply retention, then the disk quota. Returns what was removed, by reason."""
        now = time.time() if now is None else now
        removed: dict[str, int] = {}
        for kind, days in self.retention.items():
            if kind == "image":
                continue
            cutoff = now - days * 86400
            n = self._delete_records("kind = ? AND sent_at IS NOT NULL AND created < ?",
                                     [kind, cutoff], batch)
            if n:
                removed[f"retention:{kind}"] = n
        if "image" in self.retention:
            n = self._delete_images("sent_at IS NOT NULL AND created < ?",
                                    [now - self.retention["image"] * 86400], batch)
            if n:
                removed["retention:image"] = n
        for reason, condition in PURGE_ORDER:
            n = 0
            if self._over_quota():
                if condition is None:
                    n = self._delete_images("sent_at IS NOT NULL OR record_uuid IN "
                                            "(SELECT uuid FROM records WHERE sent_at IS NOT NULL)",
                                            [], batch, until_under_quota=True)
                elif condition == "images":
                    n = self._delete_images("1", [], batch, until_under_quota=True)
                else:
                    n = self._delete_records(f"({condition}) AND NOT ({_UNSENT_PROTECTED})", [],
                                             batch, until_under_quota=True)
            if n:
                removed[f"quota:{reason}"] = n
        if removed:
            log.info("purged %s", removed)
        self._keep_reserve()
        return removed

    def _over_quota(self) -> bool:
        return self.used_bytes() > self.quota_bytes

    def _delete_records(self, condition: str, args: list, batch: int,
                        until_under_quota: bool = False) -> int:
        total = 0
        while True:
            cur = self.db.execute(f"DELETE FROM records WHERE seq IN (SELECT seq FROM records "
                                  f"WHERE {condition} ORDER BY seq LIMIT ?)", args + [batch])
            total += cur.rowcount
            if cur.rowcount < batch or (until_under_quota and not self._over_quota()):
                return total

    def _delete_images(self, condition: str, args: list, batch: int,
                       until_under_quota: bool = False) -> int:
        total = 0
        while True:
            rows = self.db.execute(f"SELECT sha256 FROM images WHERE {condition} ORDER BY created LIMIT ?",
                                   args + [batch]).fetchall()
            for (digest,) in rows:
                self.image_path(digest).unlink(missing_ok=True)
            if rows:
                self.db.execute(f"DELETE FROM images WHERE sha256 IN ({','.join('?' * len(rows))})",
                                [r[0] for r in rows])
            total += len(rows)
            if len(rows) < batch or (until_under_quota and not self._over_quota()):
                return total

    # --- the alarm reserve -----------------------------------------------------------

    def _keep_reserve(self) -> None:
        """Hold `reserve_mb` of disk in a file that is given up to store alarms on a full disk."""
        try:
            if self.reserve_path.exists() and self.reserve_path.stat().st_size >= self.reserve_bytes:
                return
            if shutil.disk_usage(self.dir).free < self.reserve_bytes * 2:
                return
            with open(self.reserve_path, "wb") as f:
                f.truncate(0)
                chunk = b"\0" * (1024 * 1024)
                for _ in range(self.reserve_bytes // len(chunk)):
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            self.disk_full = False
        except OSError as exc:
            log.warning("cannot keep the alarm reserve %s: %s", self.reserve_path, exc.strerror)

    def _release_reserve(self) -> None:
        log.error("disk full: giving up the alarm reserve %s to store an alarm", self.reserve_path)
        self.reserve_path.unlink(missing_ok=True)

    def disk_free_mb(self) -> float:
        return round(shutil.disk_usage(self.dir).free / 1024 / 1024, 1)


def open_store(config, sealer: Sealer | None = None, *, set_aside_damaged: bool = False) -> Store:
    """The store described by a validated config.

    With set_aside_damaged (the agent itself, not the tools beside it), a gate.db
    SQLite cannot read is renamed, with its -wal and -shm files, to
    gate.db.damaged-<UTC time>, a new one is started and a `fault` record says
    so: a gate that will not start leaves its alarm buttons unheard, and the
    file set aside keeps what it held for an installer to recover."""
    mark = Path(config.storage.data_dir) / DAMAGE_MARK
    if mark.exists() and not (mark.parent / "gate.db").exists():
        _drop_stale_mark(mark)
    if set_aside_damaged and mark.exists():
        damage = DamagedStore(f"damage found while the agent ran: {mark.read_text().strip()}")
    else:
        try:
            return _store(config, sealer)
        except DamagedStore as exc:
            if not set_aside_damaged:
                raise
            damage = exc
    moved = set_aside(Path(config.storage.data_dir) / "gate.db")
    mark.unlink(missing_ok=True)
    log.error("%s: set aside as %s; starting a new store", damage, moved)
    store = _store(config, sealer)
    store.add("fault", {"subsystem": "store", "condition": "damaged_set_aside",
                        "detail": f"{damage}; set aside as {moved.name} and a new store started (its "
                                  f"unsent records: gate-agent sync requeue {moved.name})"})
    return store


def _drop_stale_mark(mark: Path) -> None:
    """A DAMAGE_MARK with no gate.db beside it (the file deleted by hand) names damage gone with
    that file: left there, it would have the new store set aside at the next start."""
    log.warning("%s is there but gate.db is not: the damage it names went with that file; removing it", mark)
    try:
        mark.unlink()
    except OSError as exc:
        log.error("cannot remove %s: %s", mark, exc.strerror)


def _store(config, sealer: Sealer | None) -> Store:
    return Store(config.storage.data_dir, device_id=config.device.id, site=config.device.site,
                 tz=config.device.timezone, sealer=sealer,
                 retention=config.storage.retention.to_dict(), quota_mb=config.storage.quota_mb,
                 reserve_mb=config.storage.reserve_mb)
