"""Records: what happened at the gate, one documented JSON shape per kind.

Every record has an envelope (schema version, UUID, kind, device id, site,
per-device sequence number, wall-clock time with zone) and a `data` object
whose keys depend on the kind. docs/records.md documents each shape.
The UUID is the platform's de-duplication key: a record sent twice is the
same record.
"""
from __future__ import annotations

import json
import time as _time
import uuid as uuidlib
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

SCHEMA_VERSION = 1

# Outbox priority: lower goes first.
ALARM, DECISION, READ, IMAGE, HEALTH = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class Kind:
    name: str
    priority: int
    required: tuple[str, ...]
    personal: tuple[str, ...] = ()
    """Fields that are personal information: encrypted at rest, masked on screens."""


KINDS = {k.name: k for k in (
    Kind("alarm", ALARM, ("button", "location", "drill", "pressed_at")),
    Kind("alert", ALARM, ("reason", "lane", "near"), personal=("name", "id_number")),
    Kind("tamper", DECISION, ("source", "condition")),
    Kind("access_decision", DECISION, ("lane", "outcome", "rule", "inputs", "decision_ms"),
         personal=("name", "id_number")),
    Kind("barrier", DECISION, ("lane", "action", "cause")),
    Kind("command", DECISION, ("command", "accepted", "reason")),
    Kind("plate_read", READ, ("lane", "plate_no", "plate_color", "plate_class", "confidence",
                              "pass_time", "motor_vehicle")),
    Kind("card_read", READ, ("reader", "card_kind", "id_number"),
         personal=("name", "id_number", "address", "photo", "fingerprint", "english_name",
                   "chinese_name", "photo_image", "birth_date", "nation_code", "nation",
                   "nation_en", "pass_number", "new_address", "gender", "gender_code", "nationality",
                   "authority", "valid_from", "valid_to")),
    Kind("badge_read", READ, ("reader", "format", "badge")),
    Kind("fault", READ, ("subsystem", "condition", "detail")),
    Kind("health", HEALTH, ("outbox", "subsystems", "disk_free_mb", "versions")),
)}


class RecordError(ValueError):
    pass


@dataclass
class Record:
    kind: str
    data: dict
    uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))
    device_id: str = ""
    site: str = ""
    seq: int | None = None
    time: str = ""
    schema: int = SCHEMA_VERSION
    created: float = field(default_factory=_time.time)

    @property
    def priority(self) -> int:
        return KINDS[self.kind].priority

    @property
    def drill(self) -> bool:
        return bool(self.data.get("drill"))

    def to_dict(self) -> dict:
        return {"schema": self.schema, "uuid": self.uuid, "kind": self.kind,
                "device_id": self.device_id, "site": self.site, "seq": self.seq,
                "time": self.time, "data": self.data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict) -> "Record":
        for key in ("schema", "uuid", "kind", "device_id", "seq", "time", "data"):
            if key not in d:
                raise RecordError(f"record lacks {key!r}")
        rec = cls(kind=d["kind"], data=d["data"], uuid=d["uuid"], device_id=d["device_id"],
                  site=d.get("site", ""), seq=d["seq"], time=d["time"], schema=d["schema"])
        rec.created = parse_time(rec.time)
        return rec


def new_record(kind: str, data: dict, *, device_id: str, site: str, tz: str = "Asia/Shanghai",
               at: float | None = None) -> Record:
    """A new record of `kind`, stamped now (or at `at`), checked against its shape."""
    if kind not in KINDS:
        raise RecordError(f"unknown record kind {kind!r}; known: {', '.join(KINDS)}")
    missing = [k for k in KINDS[kind].required if k not in data]
    if missing:
        raise RecordError(f"{kind} record lacks {', '.join(missing)}")
    at = _time.time() if at is None else at
    return Record(kind=kind, data=data, device_id=device_id, site=site,
                  time=format_time(at, tz), created=at)


def format_time(at: float, tz: str) -> str:
    return datetime.fromtimestamp(at, ZoneInfo(tz)).isoformat(timespec="milliseconds")


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def gat1400_time(at: float, tz: str) -> str:
    """yyyyMMddHHmmss in local time, as GA/T 1400 writes ShotTime and PassTime."""
    return datetime.fromtimestamp(at, ZoneInfo(tz)).strftime("%Y%m%d%H%M%S")


def split_personal(record: Record) -> tuple[dict, dict]:
    """(data without personal fields, the personal fields)."""
    personal_keys = KINDS[record.kind].personal
    public = {k: v for k, v in record.data.items() if k not in personal_keys}
    personal = {k: v for k, v in record.data.items() if k in personal_keys}
    return public, personal
