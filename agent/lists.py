"""Who may pass: staff vehicles, staff, visitor passes and the police watchlist.

The lists live in their own SQLite file, data_dir/lists.db, not in the records
database: replacing a 100,000-entry list is one long write transaction, and in
gate.db that would make an alarm record wait behind it. lists.db can also be
deleted and re-sent by the platform without touching a single record.

ID numbers are never stored: only HMAC-SHA256(list key, normalised number) and
a masked form (2101**********123X) for installers' screens. Reads are matched
by hashing them with the same key.

Decisions read an immutable in-memory `Index` (dicts by plate, ID hash and
badge, plus a plate index with each position wildcarded for one-character
tolerance). Applying an update writes the database in one transaction, builds
a new Index and swaps one reference, so a decision sees the old lists or the
new ones, never a mix.
"""
from __future__ import annotations

import csv
import hmac
import io
import json
import logging
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from operator import mul
from pathlib import Path
from typing import Iterable
from zoneinfo import ZoneInfo

import numpy as np

from agent.identity import mask_id_number, upgrade_id15
from agent.platecodes import normalise as normalise_plate
from agent.sqlite_threads import ThreadConnections, damage_before_opening, is_damage

log = logging.getLogger("gate.lists")

LIST_NAMES = ("staff_vehicles", "staff", "visitors", "watchlist")

COMMON = ("ref", "name", "valid_from", "valid_to", "note")
SCHEDULED = ("days", "hours", "lanes")
COLUMNS = {
    "staff_vehicles": COMMON + SCHEDULED + ("plate",),
    "staff": COMMON + SCHEDULED + ("id_number", "badge"),
    "visitors": COMMON + ("lanes", "id_number", "plate", "uses", "invited_by"),
    "watchlist": COMMON + ("plate", "id_number"),
}
IDENTIFIERS = {"staff_vehicles": ("plate",), "staff": ("id_number", "badge"),
               "visitors": ("id_number", "plate"), "watchlist": ("plate", "id_number")}

MIGRATIONS = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE entries (
        list TEXT NOT NULL,
        ref TEXT NOT NULL,
        plate TEXT,
        id_hash BLOB,
        id_masked TEXT,
        badge TEXT,
        name TEXT,
        valid_from REAL,
        valid_to REAL,
        days TEXT,
        hours TEXT,
        lanes TEXT,
        single_use INTEGER NOT NULL DEFAULT 0,
        invited_by TEXT,
        note TEXT,
        PRIMARY KEY (list, ref)
    ) WITHOUT ROWID;
    """,
]
# What decisions write as they go lives in its own file, so that a long list
# update (a write transaction on lists.db) never makes a decision wait.
STATE_MIGRATIONS = [
    """
    CREATE TABLE pass_uses (list TEXT NOT NULL, ref TEXT NOT NULL, used_at REAL NOT NULL,
                            lane TEXT, PRIMARY KEY (list, ref));
    CREATE TABLE passback (subject TEXT PRIMARY KEY, inside INTEGER NOT NULL, lane TEXT,
                           at REAL NOT NULL);
    """,
]
_FIELDS = ("list", "ref", "plate", "id_hash", "id_masked", "badge", "name", "valid_from", "valid_to",
           "days", "hours", "lanes", "single_use", "invited_by", "note")
_MEMORY_FIELDS = tuple(f for f in _FIELDS if f != "id_masked")  # masked IDs: for screens, from disk


class ListError(ValueError):
    """A list entry, file or update that can't be used; the message says what and where."""


class DamagedLists(ListError):
    """A lists database SQLite cannot read; `path` is the file."""

    def __init__(self, path: Path, message: str):
        super().__init__(message)
        self.path = path


class UpdateRefused(ListError):
    """A list update out of version order."""


# --- keys and hashing ------------------------------------------------------------

def load_list_key(path: str | os.PathLike) -> bytes:
    from agent.privacy import load_key
    return load_key(path, "list key", "decisions.list_key_file", ListError)


def normalise_id(number: str) -> str:
    """The 18-character upper-case form of a resident ID number; ValueError if it isn't one."""
    number = number.strip().upper()
    if len(number) == 15 and number.isdigit():
        number = upgrade_id15(number)
    if len(number) != 18 or not number[:17].isdigit():
        raise ValueError("expected an 18-character ID number (17 digits and a check digit or X)")
    if number[17] != _check_char(number[:17]):
        raise ValueError("check character is wrong (a typo?)")
    return number


_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def _check_char(first17: str) -> str:
    """identity.id_check_char, a few times faster (it runs 100,000 times per list import)."""
    return "10X98765432"[sum(map(mul, map(int, first17), _WEIGHTS)) % 11]


def id_hash(key: bytes, number: str) -> bytes:
    """HMAC-SHA256 of the normalised ID number: how ID numbers are stored and matched."""
    return hmac.digest(key, normalise_id(number).encode(), "sha256")


def normalise_badge(badge: str) -> str:
    return str(badge).strip().upper()


# --- schedules and times ------------------------------------------------------------

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME_RE = re.compile(r"^(\d{1,2}):(\d{2})$")


@lru_cache(maxsize=4096)
def parse_days(text: str) -> frozenset[int] | None:
    """'mon-fri', 'mon,wed,sat', '1-5' (1 = Monday) -> weekday numbers 0..6; '' -> None (every day)."""
    text = text.strip().lower()
    if not text:
        return None
    days: set[int] = set()
    for part in re.split(r"[,\s]+", text):
        bounds = part.split("-")
        if len(bounds) > 2 or not all(bounds):
            raise ValueError(f"{part!r} is not a day or a day range like mon-fri")
        first, last = (_day(b) for b in (bounds[0], bounds[-1]))
        day = first
        while True:
            days.add(day)
            if day == last:
                break
            day = (day + 1) % 7
    return frozenset(days)


def _day(text: str) -> int:
    if text.isdigit() and 1 <= int(text) <= 7:
        return int(text) - 1
    if text[:3] in DAY_NAMES:
        return DAY_NAMES.index(text[:3])
    raise ValueError(f"{text!r} is not a day (mon..sun or 1..7, 1 = Monday)")


@lru_cache(maxsize=4096)
def parse_hours(text: str) -> tuple[tuple[int, int], ...] | None:
    """'07:00-19:00;22:00-06:00' -> ((420, 1140), (1320, 360)) in minutes; '' -> None (all day).
    A range whose end is not after its start runs past midnight into the next day."""
    text = text.strip()
    if not text:
        return None
    ranges = []
    for part in re.split(r"[;,\s]+", text):
        bounds = part.split("-")
        if len(bounds) != 2:
            raise ValueError(f"{part!r} is not a time range like 07:00-19:00")
        start, end = (_minutes(b) for b in bounds)
        if start == end:
            raise ValueError(f"{part!r} is empty (start equals end)")
        ranges.append((start, end))
    return tuple(ranges)


def _minutes(text: str) -> int:
    match = _TIME_RE.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a time HH:MM")
    hours, minutes = int(match[1]), int(match[2])
    if hours == 24 and minutes == 0:
        return 1440
    if hours > 23 or minutes > 59:
        raise ValueError(f"{text!r} is not a time of day")
    return hours * 60 + minutes


def in_schedule(days: frozenset[int] | None, hours: tuple | None, weekday: int, minute: int) -> bool:
    """Whether local (weekday, minute of day) falls in the schedule. A range crossing
    midnight belongs to the day it starts on: fri 22:00-06:00 covers Saturday 05:59."""
    if hours is None:
        return days is None or weekday in days
    yesterday = (weekday - 1) % 7
    for start, end in hours:
        if start < end:
            if (days is None or weekday in days) and start <= minute < end:
                return True
        else:
            if (days is None or weekday in days) and minute >= start:
                return True
            if (days is None or yesterday in days) and minute < end:
                return True
    return False


@lru_cache(maxsize=8192)
def parse_when(text: str, tz: ZoneInfo, end: bool) -> float | None:
    """'2026-12-31' or '2026-12-31T18:00' (local time unless it has an offset) -> epoch.
    A date alone as an end means the end of that day."""
    text = text.strip()
    if not text:
        return None
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            if end:
                day += timedelta(days=1)
            return datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()
        moment = datetime.fromisoformat(text.replace(" ", "T", 1))
    except ValueError:
        raise ValueError(f"{text!r} is not a date YYYY-MM-DD or a time YYYY-MM-DDTHH:MM") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return moment.timestamp()


def format_when(at: float | None, tz: ZoneInfo) -> str:
    if at is None:
        return ""
    return datetime.fromtimestamp(at, tz).isoformat(timespec="minutes")


# --- entries -----------------------------------------------------------------------

@dataclass(slots=True)
class Entry:
    list: str
    ref: str
    plate: str | None = None
    id_hash: bytes | None = None
    id_masked: str | None = None
    badge: str | None = None
    name: str | None = None
    valid_from: float | None = None
    valid_to: float | None = None
    days: str = ""
    hours: str = ""
    lanes: str = ""
    single_use: bool = False
    invited_by: str | None = None
    note: str | None = None

    def row(self) -> tuple:
        return (self.list, self.ref, self.plate, self.id_hash, self.id_masked, self.badge, self.name,
                self.valid_from, self.valid_to, self.days, self.hours, self.lanes, int(self.single_use),
                self.invited_by, self.note)

    @property
    def lane_set(self) -> frozenset[str] | None:
        return _lane_set(self.lanes)

    def public(self, tz: ZoneInfo) -> dict:
        """What `lists show` prints: ID numbers masked, names masked."""
        from agent.identity import mask_name
        out = {"list": self.list, "ref": self.ref}
        if self.plate:
            out["plate"] = self.plate
        if self.id_hash:
            out["id_number"] = self.id_masked or ""
            out["id_hmac"] = self.id_hash.hex()[:12]
        if self.badge:
            out["badge"] = self.badge
        if self.name:
            out["name"] = mask_name(self.name)
        for key in ("valid_from", "valid_to"):
            if getattr(self, key) is not None:
                out[key] = format_when(getattr(self, key), tz)
        for key in ("days", "hours", "lanes"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.list == "visitors":
            out["uses"] = "single" if self.single_use else "multiple"
            if self.invited_by:
                out["invited_by"] = mask_name(self.invited_by)
        if self.note:
            out["note"] = self.note
        return out


@lru_cache(maxsize=4096)
def _lane_set(text: str) -> frozenset[str] | None:
    names = [n for n in re.split(r"[,\s]+", text.strip()) if n]
    return frozenset(names) if names else None


def make_entry(list_name: str, fields: dict, key: bytes, tz: ZoneInfo) -> Entry:
    """An Entry from CSV or JSON fields; ListError naming the field if one is wrong."""
    if list_name not in LIST_NAMES:
        raise ListError(f"unknown list {list_name!r}; expected one of {', '.join(LIST_NAMES)}")
    allowed = COLUMNS[list_name]
    values: dict[str, str] = {}
    for name, value in fields.items():
        if name in ("id_hash", "id_masked") and list_name != "staff_vehicles":
            continue
        if name not in allowed:
            raise ListError(f"column {name!r}: not a field of {list_name}; allowed: {', '.join(allowed)}")
        if value is not None:
            value = str(value).strip()
            if value:
                values[name] = value
    entry = Entry(list=list_name, ref=values.get("ref", ""))
    try:
        _fill(entry, values, fields, key, tz)
    except _FieldError as exc:
        raise ListError(f"column {exc.args[0]!r}: {exc.args[1]}") from None
    if not any((entry.plate, entry.id_hash, entry.badge)):
        names = " or ".join(repr(n) for n in IDENTIFIERS[list_name])
        raise ListError(f"column {IDENTIFIERS[list_name][0]!r}: empty; a {list_name} entry needs {names}")
    if not entry.ref:
        entry.ref = default_ref(entry)
    return entry


class _FieldError(Exception):
    pass


def _parse(name: str, parse, value):
    try:
        return parse(value)
    except ValueError as exc:
        raise _FieldError(name, str(exc)) from None


def _fill(entry: Entry, values: dict, fields: dict, key: bytes, tz: ZoneInfo) -> None:
    get = values.get
    if "plate" in values:
        entry.plate = _parse("plate", _plate, values["plate"])
    if "id_number" in values:
        number = _parse("id_number", normalise_id, values["id_number"])
        entry.id_hash = hmac.digest(key, number.encode(), "sha256")
        entry.id_masked = mask_id_number(number)
    elif fields.get("id_hash") and entry.list != "staff_vehicles":
        raw = fields["id_hash"]
        entry.id_hash = _parse("id_hash", _hash_hex, raw) if isinstance(raw, str) else bytes(raw)
        entry.id_masked = str(fields.get("id_masked") or "")
    if "badge" in values:
        entry.badge = normalise_badge(values["badge"])
    entry.name = get("name")
    entry.note = get("note")
    if "valid_from" in values:
        entry.valid_from = _parse("valid_from", lambda v: parse_when(v, tz, False), values["valid_from"])
    if "valid_to" in values:
        entry.valid_to = _parse("valid_to", lambda v: parse_when(v, tz, True), values["valid_to"])
    if entry.valid_from is not None and entry.valid_to is not None and entry.valid_to <= entry.valid_from:
        raise _FieldError("valid_to", f"{values['valid_to']!r} is not after valid_from {values['valid_from']!r}")
    if entry.list == "visitors":
        for name in ("valid_from", "valid_to"):
            if name not in values:
                raise _FieldError(name, "empty; a visitor pass needs a time window")
        uses = (get("uses") or "single").lower()
        if uses not in ("single", "multiple"):
            raise _FieldError("uses", f"{values['uses']!r}; expected single or multiple")
        entry.single_use = uses == "single"
        entry.invited_by = get("invited_by")
    if "days" in values:
        entry.days = _parse("days", _canonical_days, values["days"])
    if "hours" in values:
        entry.hours = _parse("hours", _canonical_hours, values["hours"])
    if "lanes" in values:
        entry.lanes = ",".join(sorted(_lane_set(values["lanes"]) or ()))


def _plate(text: str) -> str:
    plate = normalise_plate(text)
    if not 5 <= len(plate) <= 10 or any(c.isspace() for c in plate):
        raise ValueError(f"{text!r} is not a plate number")
    return plate


def _hash_hex(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise ValueError("expected 64 hex digits") from None
    if len(raw) != 32:
        raise ValueError("expected 64 hex digits")
    return raw


@lru_cache(maxsize=1024)
def _canonical_days(text: str) -> str:
    parse_days(text)
    return " ".join(text.strip().lower().split())


@lru_cache(maxsize=1024)
def _canonical_hours(text: str) -> str:
    parse_hours(text)
    return " ".join(text.strip().split())


def default_ref(entry: Entry) -> str:
    """A stable key for an entry without one: its plate, badge or the start of its ID hash."""
    parts = []
    if entry.plate:
        parts.append(entry.plate)
    if entry.badge:
        parts.append("badge:" + entry.badge)
    if entry.id_hash:
        parts.append("id:" + entry.id_hash.hex()[:16])
    return "|".join(parts)


# --- the in-memory index --------------------------------------------------------------

def _wildcards(plate: str) -> Iterable[int]:
    """The hashes of `plate` with each position in turn replaced by a wildcard."""
    for i in range(len(plate)):
        yield hash(plate[:i] + "\x00" + plate[i + 1:])


def one_apart(a: str, b: str) -> bool:
    return len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1


class NearIndex:
    """Plates by each position wildcarded, for one-character tolerance in O(len) lookups.

    Stored as two numpy arrays (sorted wildcard hashes, the plate each came from)
    rather than a dict: 100,000 plates make 700,000 keys, about 11 MB this way
    instead of a few hundred MB of Python strings. A hash collision can only add
    a candidate, and every candidate is checked to be exactly one character apart.
    """

    def __init__(self, plates: list[str]):
        self.plates = plates
        total = sum(map(len, plates))
        keys = np.fromiter((h for p in plates for h in _wildcards(p)), dtype=np.int64, count=total)
        owners = np.repeat(np.arange(len(plates), dtype=np.int32),
                           np.fromiter(map(len, plates), dtype=np.int64, count=len(plates)))
        order = np.argsort(keys, kind="stable")
        self.keys, self.owners = keys[order], owners[order]

    def lookup(self, plate: str) -> set[str]:
        if not self.plates:
            return set()
        wanted = np.fromiter(_wildcards(plate), dtype=np.int64, count=len(plate))
        lo = np.searchsorted(self.keys, wanted, "left")
        hi = np.searchsorted(self.keys, wanted, "right")
        found = set()
        for start, stop in zip(lo.tolist(), hi.tolist()):
            for owner in self.owners[start:stop].tolist():
                candidate = self.plates[owner]
                if one_apart(candidate, plate):
                    found.add(candidate)
        return found


def _add(index: dict, key, value) -> None:
    """Values are one item or a tuple of them: most keys have exactly one entry."""
    found = index.get(key)
    if found is None:
        index[key] = value
    elif isinstance(found, tuple):
        index[key] = found + (value,)
    else:
        index[key] = (found, value)


def _items(found) -> tuple:
    if found is None:
        return ()
    return found if isinstance(found, tuple) else (found,)


class ListIndex:
    """One list's entries, indexed. Never modified after it is built."""

    def __init__(self, name: str, entries: list[Entry], near: bool):
        self.name = name
        self.entries = entries
        self.by_plate: dict[str, object] = {}
        self.by_id: dict[bytes, object] = {}
        self.by_badge: dict[str, object] = {}
        for entry in entries:
            if entry.plate:
                _add(self.by_plate, entry.plate, entry)
            if entry.id_hash:
                _add(self.by_id, entry.id_hash, entry)
            if entry.badge:
                _add(self.by_badge, entry.badge, entry)
        self.near = NearIndex(list(self.by_plate)) if near else None

    def __len__(self) -> int:
        return len(self.entries)

    def plate(self, plate: str) -> tuple[Entry, ...]:
        return _items(self.by_plate.get(plate))

    def near_plates(self, plate: str) -> set[str]:
        """Plates in this list with exactly one character different from `plate`."""
        if self.near is None:
            raise RuntimeError(f"{self.name} has no near-match index")
        return self.near.lookup(plate)

    def id_hash(self, digest: bytes) -> tuple[Entry, ...]:
        return _items(self.by_id.get(digest))

    def badge(self, badge: str) -> tuple[Entry, ...]:
        return _items(self.by_badge.get(badge))


NEAR_LISTS = ("staff_vehicles", "visitors", "watchlist")


class Index:
    """All four lists at one version."""

    def __init__(self, lists: dict[str, ListIndex], version: int, revision: int):
        self.version = version
        self.revision = revision
        self.lists = lists

    @classmethod
    def build(cls, entries: dict[str, list[Entry]], version: int, revision: int,
              reuse: "Index | None" = None) -> "Index":
        """An index of `entries` by list; lists not in `entries` are shared from `reuse`."""
        lists = {}
        for name in LIST_NAMES:
            if name in entries or reuse is None:
                lists[name] = ListIndex(name, entries.get(name, []), name in NEAR_LISTS)
            else:
                lists[name] = reuse.lists[name]
        return cls(lists, version, revision)

    def __getitem__(self, name: str) -> ListIndex:
        return self.lists[name]

    def counts(self) -> dict[str, int]:
        return {name: len(index) for name, index in self.lists.items()}


# --- the lists database ----------------------------------------------------------------

class Lists:
    """The lists a device holds: lists.db, the list key, and the current Index.

    Each thread has its own SQLite connections (WAL: a decision reading never
    waits for an update writing). Writers in this process take one lock.
    """

    def __init__(self, data_dir: str | os.PathLike, key: bytes, tz: str = "Asia/Shanghai"):
        self.dir = Path(data_dir)
        self.path = self.dir / "lists.db"
        self.state_path = self.dir / "lists-state.db"
        self.key = key
        self.tz = ZoneInfo(tz)
        self._lock = threading.RLock()
        self._lists_db, self._state_db = ThreadConnections(self.path), ThreadConnections(self.state_path)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ListError(f"cannot create the lists folder {self.dir}: {exc.strerror}") from None
        for path in (self.path, self.state_path):
            damage = damage_before_opening(path)
            if damage:
                raise DamagedLists(path, f"cannot open the lists database {path}: {damage}")
        try:
            self._migrate(self._conn, self.path, MIGRATIONS)
            self._migrate(self._state, self.state_path, STATE_MIGRATIONS)
        except ListError:
            self.close()
            raise
        self.index: Index = self._load()
        """The current lists; read this reference once per decision."""
        self.listeners: list = []
        """Called with the new Index after every change (in the changing thread: be quick)."""

    @classmethod
    def from_config(cls, config) -> "Lists":
        return cls(config.storage.data_dir, load_list_key(config.decisions.list_key_file),
                   config.device.timezone)

    @property
    def _conn(self) -> sqlite3.Connection:
        return self._connection(self._lists_db)

    @property
    def _state(self) -> sqlite3.Connection:
        return self._connection(self._state_db)

    @staticmethod
    def _connection(database: ThreadConnections) -> sqlite3.Connection:
        try:
            return database.get()
        except sqlite3.Error as exc:
            message = f"cannot open the lists database {database.path}: {exc}"
            raise (DamagedLists(database.path, message) if is_damage(exc) else ListError(message)) from None

    @staticmethod
    def _migrate(conn: sqlite3.Connection, path: Path, migrations: list[str]) -> None:
        try:
            Lists._migrate_schema(conn, path, migrations)
        except sqlite3.DatabaseError as exc:
            if not is_damage(exc):
                raise
            raise DamagedLists(path, f"cannot read the lists database {path}: {exc}") from None

    @staticmethod
    def _migrate_schema(conn: sqlite3.Connection, path: Path, migrations: list[str]) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(migrations):
            raise ListError(f"{path} has schema version {version}, newer than this agent knows "
                            f"({len(migrations)}); upgrade gate-agent")
        for number, script in enumerate(migrations[version:], start=version + 1):
            conn.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")

    def close(self) -> None:
        self._lists_db.close()
        self._state_db.close()

    # reading

    def meta(self, key: str, default=None):
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return json.loads(row[0]) if row else default

    def revision(self) -> int:
        """Bumped by every change; another process (the CLI) changing the lists shows here."""
        return self.meta("revision", 0)

    def _load(self) -> Index:
        """Every list from lists.db (at start, or after another process changed it)."""
        entries: dict[str, list[Entry]] = {name: [] for name in LIST_NAMES}
        shared: dict[str, str] = {}
        intern = lambda text: shared.setdefault(text, text) if text else ""  # noqa: E731
        conn = self._conn
        conn.execute("BEGIN")  # one read snapshot: the version and the rows agree
        try:
            version, revision = self.meta("version", 0), self.revision()
            rows = conn.execute(f"SELECT {', '.join(_MEMORY_FIELDS)} FROM entries")
            for (list_name, ref, plate, digest, badge, name, valid_from, valid_to, days, hours, lanes,
                 single_use, invited_by, note) in rows:
                entries[list_name].append(Entry(
                    intern(list_name), ref, plate, digest, None, badge, name, valid_from, valid_to,
                    intern(days), intern(hours), intern(lanes), bool(single_use), invited_by, note))
        finally:
            conn.execute("COMMIT")
        return Index.build(entries, version, revision)

    def reload_if_changed(self) -> bool:
        if self.revision() == self.index.revision:
            return False
        with self._lock:
            self._swap(self._load())
        log.info("lists reloaded: version %s, %s", self.index.version, self.index.counts())
        return True

    def _swap(self, index: Index) -> None:
        self.index = index
        for listener in list(self.listeners):
            try:
                listener(index)
            except Exception:
                log.exception("lists listener failed")

    def entries(self, list_name: str | None = None) -> list[Entry]:
        """Entries as stored, with their masked ID numbers (for screens; decisions use the index)."""
        sql, args = f"SELECT {', '.join(_FIELDS)} FROM entries", []
        if list_name:
            sql, args = sql + " WHERE list = ?", [list_name]
        rows = self._conn.execute(sql + " ORDER BY list, ref", args).fetchall()
        out = []
        for row in rows:
            entry = Entry(*row)
            entry.single_use = bool(entry.single_use)
            entry.days, entry.hours, entry.lanes = entry.days or "", entry.hours or "", entry.lanes or ""
            out.append(entry)
        return out

    def describe(self) -> dict:
        return {"version": self.index.version, "revision": self.index.revision,
                "source": self.meta("source", ""), "updated": self.meta("updated"),
                "counts": self.index.counts()}

    # writing

    def _write(self, change, meta: dict, changed) -> Index:
        """Build the new index, then run change(conn) and the meta update in one short
        transaction, then swap the index in. `changed` gives the rebuilt lists
        (a dict, or a function of the current index); other lists are shared."""
        with self._lock:
            self.reload_if_changed()
            base = self.index
            revision = base.revision + 1
            version = meta.get("version", base.version)
            new_index = Index.build(changed(base) if callable(changed) else changed, version, revision,
                                    reuse=base)
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                if self.revision() != base.revision:
                    raise ListError(f"{self.path} was changed by another process during this update; "
                                    "try again")
                change(conn)
                meta = dict(meta, revision=revision, updated=time.time())
                conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) "
                                 "DO UPDATE SET value = excluded.value",
                                 [(k, json.dumps(v)) for k, v in meta.items()])
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self._swap(new_index)
            return new_index

    def replace(self, list_names: Iterable[str], entries: list[Entry], meta: dict) -> Index:
        """Replace whole lists with `entries`, atomically."""
        names = list(list_names)
        by_list: dict[str, list[Entry]] = {name: [] for name in names}
        for entry in entries:
            by_list[entry.list].append(entry)

        def change(conn):
            conn.executemany("DELETE FROM entries WHERE list = ?", [(n,) for n in names])
            _insert(conn, entries)
        return self._write(change, meta, by_list)

    def upsert(self, entries: list[Entry], removals: dict[str, list[str]], meta: dict) -> Index:
        """Add or update entries by ref and remove refs, atomically."""
        touched = {e.list for e in entries} | {name for name, refs in removals.items() if refs}

        def merged(base: Index) -> dict[str, list[Entry]]:
            out = {}
            for name in touched:
                gone = set(removals.get(name, ())) | {e.ref for e in entries if e.list == name}
                out[name] = [e for e in base[name].entries if e.ref not in gone] + \
                    [e for e in entries if e.list == name]
            return out

        def change(conn):
            for list_name, refs in removals.items():
                conn.executemany("DELETE FROM entries WHERE list = ? AND ref = ?",
                                 [(list_name, ref) for ref in refs])
            _insert(conn, entries, upsert=True)
        return self._write(change, meta, merged)

    # single-use passes and anti-passback (state that outlives list updates)

    def pass_used(self, list_name: str, ref: str) -> bool:
        return self._state.execute("SELECT 1 FROM pass_uses WHERE list = ? AND ref = ?",
                                   [list_name, ref]).fetchone() is not None

    def use_pass(self, list_name: str, ref: str, lane: str, at: float | None = None) -> bool:
        """Mark a single-use pass used; False if it already was (the second use is refused)."""
        cur = self._state.execute("INSERT INTO pass_uses (list, ref, used_at, lane) VALUES (?,?,?,?) "
                                  "ON CONFLICT DO NOTHING", [list_name, ref, at or time.time(), lane])
        return cur.rowcount == 1

    def is_inside(self, subject: str) -> bool:
        row = self._state.execute("SELECT inside FROM passback WHERE subject = ?", [subject]).fetchone()
        return bool(row and row[0])

    def set_inside(self, subject: str, inside: bool, lane: str, at: float | None = None) -> None:
        self._state.execute("INSERT INTO passback (subject, inside, lane, at) VALUES (?,?,?,?) "
                            "ON CONFLICT(subject) DO UPDATE SET inside = excluded.inside, "
                            "lane = excluded.lane, at = excluded.at",
                            [subject, int(inside), lane, at or time.time()])

    # CSV

    def read_csv(self, path: str | os.PathLike, list_name: str) -> list[Entry]:
        """Every entry of a CSV file, or ListError naming each bad line and column (up to 20)."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ListError(f"cannot read {path}: {exc.strerror}") from None
        text = _decode(raw, path)
        reader = csv.DictReader(io.StringIO(text))
        header = [h.strip() for h in (reader.fieldnames or [])]
        if not header:
            raise ListError(f"{path}: empty file; the first line must name the columns "
                            f"({', '.join(COLUMNS.get(list_name, ()))})")
        reader.fieldnames = header
        unknown = [h for h in header if h not in COLUMNS[list_name]]
        if unknown:
            raise ListError(f"{path} line 1: column {unknown[0]!r} is not a field of {list_name}; "
                            f"allowed: {', '.join(COLUMNS[list_name])}")
        entries, problems, refs = [], [], {}
        for row in reader:
            line = reader.line_num
            if None in row:
                problems.append(f"{path} line {line}: more values than the {len(header)} columns")
                continue
            if not any((v or "").strip() for v in row.values()):
                continue
            try:
                entry = make_entry(list_name, row, self.key, self.tz)
            except ListError as exc:
                problems.append(f"{path} line {line}: {exc}")
                continue
            if entry.ref in refs:
                problems.append(f"{path} line {line}: column 'ref': {entry.ref!r} repeats line "
                                f"{refs[entry.ref]} (same plate, badge or ID number twice?)")
                continue
            refs[entry.ref] = line
            entries.append(entry)
            if len(problems) >= 20:
                break
        if problems:
            more = " (first 20 shown)" if len(problems) >= 20 else ""
            raise ListError(f"nothing imported: {len(problems)} bad line(s){more}:\n" + "\n".join(problems))
        return entries

    def import_csv(self, path: str | os.PathLike, list_name: str, replace: bool = False) -> int:
        """Load a CSV file into one list (merged by ref, or replacing the list); all or nothing."""
        entries = self.read_csv(path, list_name)
        meta = {"source": f"local import {Path(path).name}"}
        if replace:
            self.replace([list_name], entries, meta)
        else:
            self.upsert(entries, {}, meta)
        return len(entries)


def _decode(raw: bytes, path: Path) -> str:
    """UTF-8 (with or without Excel's BOM), else GB18030 as Chinese Excel saves it."""
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise ListError(f"{path}: neither UTF-8 nor GB18030 text; save the file as CSV UTF-8")


def _insert(conn: sqlite3.Connection, entries: list[Entry], upsert: bool = False) -> None:
    sql = f"INSERT {'OR REPLACE ' if upsert else ''}INTO entries ({', '.join(_FIELDS)}) " \
          f"VALUES ({', '.join('?' * len(_FIELDS))})"
    try:
        conn.executemany(sql, (e.row() for e in entries))
    except sqlite3.IntegrityError:
        seen = set()
        for e in entries:
            if (e.list, e.ref) in seen:
                raise ListError(f"{e.list}: ref {e.ref!r} appears twice") from None
            seen.add((e.list, e.ref))
        raise


# --- updates from the platform -------------------------------------------------------

def apply_update(store_or_lists, payload: dict) -> int:
    """Apply an ALREADY VERIFIED list update (the sync checks its signature); return the new version.

    Snapshot: {"mode": "snapshot", "version": N, "lists": {LIST: [ENTRY, ...], ...}};
    every list is replaced, a list not named becomes empty.
    Delta: {"mode": "delta", "base_version": N, "version": M, "upsert": {LIST: [ENTRY...]},
    "remove": {LIST: [REF, ...]}}.
    An ENTRY has the CSV columns as keys (docs/decisions.md). Raises UpdateRefused for a
    version out of order, ListError for a bad entry; nothing is applied then.
    """
    lists = lists_for(store_or_lists)
    if not isinstance(payload, dict):
        raise ListError("list update: expected a JSON object")
    mode, version = payload.get("mode"), payload.get("version")
    if mode not in ("snapshot", "delta"):
        raise ListError(f"list update: mode = {mode!r}; expected 'snapshot' or 'delta'")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ListError(f"list update: version = {version!r}; expected a positive integer")
    with lists._lock:
        current = lists.meta("version", 0)
        if version <= current:
            raise UpdateRefused(f"list update version {version} refused: the device holds version "
                                f"{current} (an update must be newer)")
        meta = {"version": version, "source": f"platform {mode}"}
        if mode == "snapshot":
            named = payload.get("lists")
            if not isinstance(named, dict):
                raise ListError("list update: 'lists' must be an object of list name -> entries")
            entries = _payload_entries(lists, named, "lists")
            lists.replace(LIST_NAMES, entries, meta)
        else:
            base = payload.get("base_version")
            if base != current:
                raise UpdateRefused(f"list delta on version {base!r} refused: the device holds version "
                                    f"{current}; a snapshot is needed")
            entries = _payload_entries(lists, payload.get("upsert") or {}, "upsert")
            removals = payload.get("remove") or {}
            if not isinstance(removals, dict) or any(
                    name not in LIST_NAMES or not isinstance(refs, list) for name, refs in removals.items()):
                raise ListError("list update: 'remove' must be an object of list name -> [ref, ...]")
            lists.upsert(entries, {n: [str(r) for r in refs] for n, refs in removals.items()}, meta)
    log.info("lists at version %d (%s): %s", version, mode, lists.index.counts())
    return version


def _payload_entries(lists: Lists, named: dict, where: str) -> list[Entry]:
    entries = []
    for list_name, items in named.items():
        if list_name not in LIST_NAMES:
            raise ListError(f"list update: {where}.{list_name}: unknown list; expected one of "
                            f"{', '.join(LIST_NAMES)}")
        if not isinstance(items, list):
            raise ListError(f"list update: {where}.{list_name}: expected a list of entries")
        refs = set()
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise ListError(f"list update: {where}.{list_name}[{i}]: expected an object")
            try:
                entry = make_entry(list_name, item, lists.key, lists.tz)
            except ListError as exc:
                raise ListError(f"list update: {where}.{list_name}[{i}]: {exc}") from None
            if entry.ref in refs:
                raise ListError(f"list update: {where}.{list_name}[{i}]: ref {entry.ref!r} appears twice")
            refs.add(entry.ref)
            entries.append(entry)
    return entries


_OPEN: dict[Path, Lists] = {}
_OPEN_LOCK = threading.Lock()


def register(lists: Lists) -> Lists:
    """Make `lists` the one that apply_update(store) finds for its data dir (the running decisions')."""
    with _OPEN_LOCK:
        _OPEN[lists.dir.resolve()] = lists
    return lists


def unregister(lists: Lists) -> None:
    with _OPEN_LOCK:
        if _OPEN.get(lists.dir.resolve()) is lists:
            del _OPEN[lists.dir.resolve()]


def running_lists(data_dir) -> Lists | None:
    """The running decisions' Lists for this data dir, or None while decisions is not running."""
    with _OPEN_LOCK:
        return _OPEN.get(Path(data_dir).resolve())


def lists_for(store_or_lists) -> Lists:
    """The Lists of a Store's data dir: the running decisions' instance if there is one."""
    if isinstance(store_or_lists, Lists):
        return store_or_lists
    directory = Path(store_or_lists.dir).resolve()
    with _OPEN_LOCK:
        found = _OPEN.get(directory)
    if found is None:
        raise ListError(f"no lists open for {directory}: the decisions subsystem is not running")
    return found
