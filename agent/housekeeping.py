"""Housekeeping: a health record every mqtt.health_interval_s, the retention/quota purge, and
the unsent records of a damaged store put back into the outbox.

The health record goes through the outbox like any record (priority 4, last).
The platform's view of a full disk doesn't depend on it: the sync also
publishes a retained status message directly (see agent/sync.py).

A gate.db the agent set aside as damaged (agent/store.py, open_store) still
holds the records the platform had not confirmed. Once per such file, after the
first health record, housekeeping reads what SQLite can of it (agent/salvage.py)
and requeues it, as `gate-agent sync requeue` does, and a `fault` (store,
requeued) says what came back and what did not. The file itself is kept.
A file that cannot be read just now (locked by `gate-agent sync requeue`, say)
is tried again at each purge; one whose reading was begun REQUEUE_MAX_ATTEMPTS
times and never finished is left for the platform's operators.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time

from agent.salvage import SalvageError, SalvageRetry, describe_read, describe_requeue, read_unsent
from agent.sqlite_threads import damaged_files
from agent.store import DiskFull, StoreError
from agent.supervisor import DEGRADED, FAULT, OK, STARTING, STOPPED

log = logging.getLogger("gate.housekeeping")

PURGE_INTERVAL_S = 600.0
STOP_JOIN_S = 5.0
"""How long stop() waits for the housekeeping thread (a purge, a slow read of a set-aside file)."""
REQUEUE_ATTEMPTS_KEY = "requeue_attempts"
REQUEUE_MAX_ATTEMPTS = 3
"""Readings of one set-aside file begun and never finished (the agent stopped while reading
it: killed, a power cut, the card failing under it) before the file is left alone, rather
than read, and the agent stopped, at every start."""


def health_data(store) -> dict:
    """The data of a health record: outbox, subsystems, disk, versions, link."""
    from agent.sync import STATE_KEY, versions
    depth = store.depth()
    sync_state = store.state_get(STATE_KEY, {})
    return {
        "outbox": {"by_priority": depth["by_priority"], "total": depth["total"],
                   "oldest_unsent_s": depth["oldest_unsent_s"]},
        "subsystems": store.state_get("subsystems", {}),
        "disk_free_mb": store.disk_free_mb(),
        "disk_full": bool(store.disk_full),
        "versions": dict(versions(), config=store.state_get("remote_config", {}).get("version"),
                         lists=store.state_get("downlink.lists", {}).get("version")),
        "link": {k: sync_state.get(k) for k in ("state", "condition", "detail", "connected")},
    }


class Housekeeping:
    name = "housekeeping"

    def __init__(self, store, health_interval_s: float, purge_interval_s: float = PURGE_INTERVAL_S,
                 first_purge_s: float = 5.0):
        self.store = store
        self.health_interval_s = health_interval_s
        self.purge_interval_s = purge_interval_s
        self.first_purge_s = first_purge_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = {"state": STARTING, "detail": ""}
        self.set_aside_looked_at = threading.Event()
        """Set once the damaged stores set aside have been requeued (or found done before)."""
        self._requeue_waits = ""
        """Why the requeue of a set-aside store waits for the next purge ("" when it does not)."""
        self._reading: str | None = None
        """The set-aside file being read just now (its reading counted begun)."""

    def start(self) -> None:
        self._stop.clear()
        self.set_aside_looked_at.clear()
        self._thread = threading.Thread(target=self._loop, name="housekeeping", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=STOP_JOIN_S)
            reading = self._reading
            if self._thread.is_alive() and reading:
                # stopped on purpose in the middle of a slow read: no sign the reading kills the
                # agent, so it does not count towards giving the file up
                log.warning("stopping while %s is read: it is read again at the next start", reading)
                self._end_reading(reading)
        self._state = {"state": STOPPED, "detail": ""}

    def health(self) -> dict:
        if self._thread is not None and not self._thread.is_alive() and not self._stop.is_set():
            return {"state": FAULT, "detail": "housekeeping thread died"}
        if self._requeue_waits and self._state["state"] != DEGRADED:   # a disk-full health record says more
            return {"state": DEGRADED, "detail": self._requeue_waits}
        return self._state

    def interval(self) -> float:
        """The health interval: the platform's remote setting wins over the file."""
        remote = self.store.state_get("remote_config", {}).get("settings", {})
        return float(remote.get("mqtt.health_interval_s", self.health_interval_s))

    def _loop(self) -> None:
        next_purge = time.monotonic() + self.first_purge_s
        self.produce_health()
        self.requeue_set_aside()
        self.set_aside_looked_at.set()
        while True:
            if time.monotonic() >= next_purge:
                self.purge()
                if self._requeue_waits:
                    self.requeue_set_aside()
                next_purge = time.monotonic() + self.purge_interval_s
            if self._stop.wait(self.interval()):
                return
            self.produce_health()

    def requeue_set_aside(self) -> None:
        """Once per file: what each gate.db set aside as damaged still holds unsent goes back
        into the outbox, so a damaged card costs only the rows on its damaged pages."""
        waits = []
        try:
            done = self.store.requeued()
            todo = [path for path in damaged_files(self.store.dir)
                    if path.name.startswith("gate.db.") and path.name not in done]
        except (StoreError, OSError, sqlite3.Error) as exc:
            todo, waits = [], [str(exc)]
        for path in todo:          # one that waits keeps no other waiting
            try:
                self._requeue(path)
            except (SalvageRetry, StoreError, OSError, sqlite3.Error) as exc:
                log.warning("requeue of %s waits (tried again at the next purge): %s", path.name, exc)
                waits.append(str(exc))
            except Exception as exc:   # never a reason to stop the health records and the purge
                log.exception("requeue of %s failed (tried again at the next start)", path.name)
                self._state = {"state": DEGRADED, "detail": f"requeue failed: {exc}"}
        self._requeue_waits = f"requeue waits: {'; '.join(waits)}" if waits else ""

    def _requeue(self, path) -> None:
        """Requeue one file, counting the reading begun until it ends, whichever way: only a
        process that dies while reading leaves it counted. What cannot be done just now (the
        file locked, the live store full) raises, for the next purge."""
        begun = self._begin_reading(path.name)
        self._reading = path.name
        try:
            if begun > REQUEUE_MAX_ATTEMPTS:
                problem = (f"reading it was begun {begun - 1} times and never finished (the agent "
                           f"stopped while reading it: the card failing under it?)")
                detail = f"{path.name}: {problem}; nothing requeued, the file is kept for the platform's operators"
                self.store.mark_requeued(path.name, {"queued": 0, "problem": problem, "never_finished": begun - 1})
            else:
                detail = self._read_and_requeue(path)
        finally:
            self._reading = None
            self._end_reading(path.name)
        log.warning("damaged store set aside: %s", detail)
        self.store.add("fault", {"subsystem": "store", "condition": "requeued", "detail": detail})

    def _read_and_requeue(self, path) -> str:
        try:
            salvage = read_unsent(path)
        except SalvageError as exc:
            self.store.mark_requeued(path.name, {"queued": 0, "problem": str(exc)})
            return f"{exc}; nothing requeued, the file is kept for the platform's operators"
        lines = describe_read(salvage) + describe_requeue(self.store.requeue(salvage))
        return "; ".join(lines) + f"; {path.name} is kept: delete it once the outbox has drained"

    def _begin_reading(self, name: str) -> int:
        """Count a reading of `name` begun, before it is: which one this is."""
        attempts = self.store.state_get(REQUEUE_ATTEMPTS_KEY, {})
        attempts[name] = attempts.get(name, 0) + 1
        self.store.state_set(REQUEUE_ATTEMPTS_KEY, attempts)
        return attempts[name]

    def _end_reading(self, name: str) -> None:
        attempts = self.store.state_get(REQUEUE_ATTEMPTS_KEY, {})
        if attempts.pop(name, None) is not None:
            self.store.state_set(REQUEUE_ATTEMPTS_KEY, attempts)

    def produce_health(self):
        try:
            record = self.store.add("health", health_data(self.store))
        except DiskFull as exc:
            log.error("disk full: health record not stored (%s); the status topic still reports it", exc)
            self._state = {"state": DEGRADED, "detail": f"disk full: {exc}"}
            return None
        except StoreError as exc:
            log.error("cannot store a health record: %s", exc)
            self._state = {"state": DEGRADED, "detail": str(exc)}
            return None
        self._state = {"state": OK, "detail": f"last health record at {record.time}"}
        return record

    def purge(self) -> dict:
        try:
            return self.store.purge()
        except Exception as exc:
            log.error("purge failed: %s", exc)
            self._state = {"state": DEGRADED, "detail": f"purge failed: {exc}"}
            return {}


def build(gate) -> list:
    return [Housekeeping(gate.store, gate.config.mqtt.health_interval_s)]
