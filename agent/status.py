"""What `gate-agent status` shows: read from the store, so it works beside a running agent."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from agent.sqlite_threads import damaged_files
from agent.store import DAMAGE_MARK, StoreError, open_store


def collect(config) -> dict:
    set_aside = [p.name for p in damaged_files(config.storage.data_dir)]
    mark = Path(config.storage.data_dir) / DAMAGE_MARK
    damage_found = mark.read_text(errors="replace").strip() if mark.is_file() else None
    try:
        store = open_store(config)
    except StoreError as exc:
        return {"error": str(exc), "damaged_set_aside": set_aside, "damage_found": damage_found}
    try:
        return _read(config, store, set_aside, damage_found)
    except sqlite3.DatabaseError as exc:   # damage deeper in than page 1: status only reports it
        return {"error": f"cannot read database {store.path}: {exc}", "damaged_set_aside": set_aside,
                "damage_found": damage_found}
    finally:
        store.close()


def _read(config, store, set_aside: list[str], damage_found: str | None) -> dict:
    depth = store.depth()
    last = store.last_sent()
    return {
        "device_id": config.device.id,
        "site": config.device.site,
        "outbox": depth,
        "last_sync": last,
        "last_sync_age_s": round(time.time() - last, 1) if last else None,
        "subsystems": store.state_get("subsystems", {}),
        "drill": store.state_get("drill", {"on": False}),
        "disk_free_mb": store.disk_free_mb(),
        "damaged_set_aside": set_aside,
        "damage_found": damage_found,
        "requeued": {name: done for name, done in store.requeued().items() if name in set_aside},
    }


def render(report: dict) -> str:
    if "error" in report:
        return "\n".join([f"store: {report['error']}", *_set_aside_lines(report)])
    lines = [f"device {report['device_id']} at {report['site']}", *_set_aside_lines(report)]
    prio = report["outbox"]["by_priority"]
    lines.append("outbox: " + ", ".join(f"{k} {v}" for k, v in prio.items())
                 + f" (oldest unsent {report['outbox']['oldest_unsent_s']} s)")
    age = report["last_sync_age_s"]
    lines.append("last sync: " + (f"{age} s ago" if age is not None else "never"))
    lines.append(f"drill mode: {'ON' if report['drill'].get('on') else 'off'}")
    lines.append(f"disk free: {report['disk_free_mb']} MB")
    subsystems = report["subsystems"]
    if not subsystems:
        lines.append("subsystems: none reported yet (is the agent running?)")
    for name, info in sorted(subsystems.items()):
        lines.append(f"  {name:<10} {info.get('state', '?'):<10} {info.get('detail', '')}")
    return "\n".join(lines)


def _set_aside_lines(report: dict) -> list[str]:
    requeued = report.get("requeued", {})
    lines = [f"DAMAGED DATABASE SET ASIDE: {name} ({_recovery(name, requeued.get(name))})"
             for name in report.get("damaged_set_aside", [])]
    if report.get("damage_found"):
        lines.append(f"STORE DAMAGED WHILE RUNNING: {report['damage_found']} (restart the agent: it sets "
                     "gate.db aside and requeues what it can read)")
    return lines


def _recovery(name: str, requeued: dict | None) -> str:
    if requeued and requeued.get("never_finished"):
        return (f"its reading never finished, begun at {requeued['never_finished']} starts: keep it for "
                "the platform's operators")
    if requeued and requeued.get("problem"):
        return "nothing could be read from it: keep it for the platform's operators"
    if requeued:
        return (f"{requeued['queued']} unsent record(s) back in the outbox"
                + (f", {requeued['unreadable_rows']} row(s) unreadable" if requeued.get("unreadable_rows") else "")
                + "; delete it once the outbox has drained")
    if name.startswith("gate.db."):
        return f"its unsent records: gate-agent sync requeue {name}; then delete it"
    return "docs/records.md, a damaged store"
