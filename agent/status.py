"""What `gate-agent status` shows: read from the store, so it works beside a running agent."""
from __future__ import annotations

import time

from agent.store import StoreError, open_store


def collect(config) -> dict:
    try:
        store = open_store(config)
    except StoreError as exc:
        return {"error": str(exc)}
    try:
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
        }
    finally:
        store.close()


def render(report: dict) -> str:
    if "error" in report:
        return f"store: {report['error']}"
    lines = [f"device {report['device_id']} at {report['site']}"]
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
