import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from agent.records import Record
from agent.sqlite_threads import damaged_files
from agent.store import DamagedStore, Store, StoreError, open_store
from conftest import MINIMAL as MINIMAL_CONFIG
from damage import fill_with_badge_reads, garble_page_holding
from conftest import ROOT, run_cli

ALARM = {"button": "b1", "location": "desk", "drill": False, "pressed_at": "2026-11-24T10:00:00+08:00"}
HEALTH = {"outbox": {}, "subsystems": {}, "disk_free_mb": 1, "versions": {}}
BADGE = {"reader": "r1", "format": "wiegand26", "badge": "90:324"}


def test_record_roundtrip_through_store(store):
    rec = store.add("card_read", {"reader": "id1", "card_kind": "resident", "name": "张三",
                                  "id_number": "360426199101010071"})
    again = store.get(rec.uuid)
    assert again.to_dict() == rec.to_dict()
    assert Record.from_dict(rec.to_dict()).to_dict() == rec.to_dict()
    assert rec.time.endswith("+08:00")
    assert rec.device_id == "21010200001210000001"


def test_sequence_is_monotonic_and_never_reused(store):
    seqs = [store.add("badge_read", BADGE).seq for _ in range(5)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    store.mark_sent([r.uuid for r in store.pending()])
    store.retention = {"badge_read": 1}
    store.purge(now=time.time() + 2 * 86400)
    assert store.add("badge_read", BADGE).seq == seqs[-1] + 1


def test_outbox_order_priority_then_creation(store):
    store.add("health", HEALTH)
    first_read = store.add("badge_read", BADGE)
    store.add("badge_read", BADGE)
    alarm = store.add("alarm", ALARM)
    kinds = [r.kind for r in store.pending()]
    assert kinds == ["alarm", "badge_read", "badge_read", "health"]
    assert store.pending()[0].uuid == alarm.uuid
    assert store.pending()[1].uuid == first_read.uuid


def test_mark_sent_empties_outbox(store):
    for _ in range(3):
        store.add("badge_read", BADGE)
    store.mark_sent(r.uuid for r in store.pending())
    assert store.pending() == []
    assert store.depth()["total"] == 0


def test_same_uuid_stored_once(store):
    rec = store.add("badge_read", BADGE)
    store.put(Record(kind="badge_read", data=BADGE, uuid=rec.uuid, time=rec.time))
    assert len(store.pending()) == 1


def test_personal_fields_encrypted_at_rest(store):
    store.add("card_read", {"reader": "id1", "card_kind": "resident", "name": "李四",
                            "id_number": "360426199101010071"})
    raw = sqlite3.connect(store.path).execute("SELECT body, sealed FROM records").fetchone()
    assert "360426199101010071" not in raw[0] and "李四" not in raw[0]
    assert b"360426199101010071" not in raw[1]
    blob = store.path.read_bytes() + (store.path.parent / "gate.db-wal").read_bytes()
    assert "360426199101010071".encode() not in blob
    assert "李四".encode() not in blob


def test_records_without_key_stay_sealed(store, tmp_path):
    store.add("card_read", {"reader": "id1", "card_kind": "resident", "id_number": "360426199101010071"})
    keyless = Store(store.dir, device_id=store.device_id, site=store.site)
    data = keyless.pending()[0].data
    assert data["sealed"] is True and "id_number" not in data
    keyless.close()


def test_a_record_that_cannot_be_read_back_does_not_stop_the_outbox(store):
    """A bit flipped on the SD card inside a sealed blob or a body (SQLite has no checksums
    on content) used to stop every record behind it."""
    sealed = store.add("card_read", {"reader": "id1", "card_kind": "resident", "id_number": "360426199101010071"})
    garbled = store.add("badge_read", BADGE)
    after = store.add("badge_read", BADGE)
    with sqlite3.connect(store.path) as raw:
        blob = bytearray(raw.execute("SELECT sealed FROM records WHERE uuid = ?", [sealed.uuid]).fetchone()[0])
        blob[20] ^= 0x01
        raw.execute("UPDATE records SET sealed = ? WHERE uuid = ?", [bytes(blob), sealed.uuid])
        raw.execute("UPDATE records SET body = '{\"reader\": \"badge1\", ' WHERE uuid = ?", [garbled.uuid])
    head = store.pending(10)
    assert after.uuid in [r.uuid for r in head]
    assert not {sealed.uuid, garbled.uuid} & {r.uuid for r in head}
    assert "do not open with this device's data key" in store.undecodable[sealed.uuid]
    assert "body is not JSON" in store.undecodable[garbled.uuid]
    faults = [r.data for r in store.records("fault")]
    assert sorted(f["detail"].split()[1] for f in faults) == sorted([sealed.uuid, garbled.uuid])
    assert all(f["condition"] == "unreadable_record" and "kept in" in f["detail"] for f in faults)
    store.pending(10)
    assert len(store.records("fault")) == 2                        # said once
    assert store.depth()["by_kind"]["card_read"] == 1              # kept, not sent


def test_images_named_by_sha256(store):
    digest = store.add_image(b"\xff\xd8fakejpeg", "scene")
    assert store.image_path(digest).read_bytes() == b"\xff\xd8fakejpeg"
    assert store.image_path(digest).name == f"{digest}.jpg"


def test_images_wait_for_their_record(store):
    rec = store.add("badge_read", BADGE)
    digest = store.add_image(b"img", "scene", rec.uuid)
    assert store.pending_images() == []
    store.mark_sent([rec.uuid])
    assert [i["sha256"] for i in store.pending_images()] == [digest]


def test_retention_keeps_unsent(store):
    old = time.time() - 100 * 86400
    sent = store.add("badge_read", BADGE, at=old)
    unsent = store.add("badge_read", BADGE, at=old)
    fresh = store.add("badge_read", BADGE)
    store.mark_sent([sent.uuid, fresh.uuid])
    store.retention = {"badge_read": 90}
    store.purge()
    assert store.get(sent.uuid) is None
    assert store.get(unsent.uuid) is not None
    assert store.get(fresh.uuid) is not None


def test_quota_purge_order_never_drops_unsent_alarm(store):
    payload = "x" * 2000
    alarms = [store.add("alarm", dict(ALARM, location=payload)) for _ in range(200)]
    decisions = [store.add("access_decision", {"lane": "in1", "outcome": "allow", "rule": payload,
                                               "inputs": {}, "decision_ms": 1}) for _ in range(200)]
    health = [store.add("health", dict(HEALTH, versions={"pad": payload})) for _ in range(200)]
    reads = [store.add("badge_read", dict(BADGE, badge=payload)) for _ in range(200)]
    sent_read = reads[:100]
    store.mark_sent(r.uuid for r in sent_read)
    image_rec = sent_read[0]
    digest = store.add_image(os.urandom(300_000), "scene", image_rec.uuid)
    store.quota_bytes = store.used_bytes() - 350_000
    removed = store.purge()
    order = list(removed)
    assert order[0] == "quota:images of synced records"
    assert not store.image_path(digest).exists()
    store.quota_bytes = 1  # impossible: everything purgeable goes
    store.purge()
    assert all(store.get(a.uuid) for a in alarms)
    assert all(store.get(d.uuid) for d in decisions)
    assert not any(store.get(h.uuid) for h in health)
    assert not any(store.get(r.uuid) for r in reads)


def test_health_goes_before_reads_under_quota(store):
    health = [store.add("health", dict(HEALTH, versions={"pad": "x" * 4000})) for _ in range(50)]
    reads = [store.add("badge_read", dict(BADGE, badge="y" * 4000)) for _ in range(50)]
    store.quota_bytes = store.used_bytes() - 100_000
    store.purge()
    assert any(store.get(r.uuid) for r in reads)
    assert sum(1 for h in health if store.get(h.uuid)) < len(health)
    assert all(store.get(r.uuid) for r in reads)


WRITER = textwrap.dedent("""
    import sys, time
    from agent.store import Store
    s = Store(sys.argv[1], device_id="21010200001210000001", site="t", reserve_mb=1)
    for i in range(int(sys.argv[2])):
        r = s.add("badge_read", {"reader": "r", "format": "digits", "badge": str(i)})
        print(r.uuid, flush=True)
    time.sleep(60)
""")


def test_record_survives_sigkill(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "d"), "20"],
                            stdout=subprocess.PIPE, text=True, env=env)
    uuids = [proc.stdout.readline().strip() for _ in range(20)]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reopened = Store(tmp_path / "d", device_id="21010200001210000001", site="t", reserve_mb=1)
    assert {r.uuid for r in reopened.pending(limit=100)} == set(uuids)
    reopened.close()


def test_disk_full_alarm_uses_reserve(store, monkeypatch):
    from agent import store as storemod
    calls = {"n": 0}
    real = store._write

    def full_once(sql, params):
        if sql.startswith("INSERT INTO records") and calls["n"] == 0:
            calls["n"] += 1
            store.disk_full = True
            raise storemod.DiskFull("disk full")
        return real(sql, params)

    monkeypatch.setattr(store, "_write", full_once)
    rec = store.add("alarm", ALARM)
    assert store.get(rec.uuid) is not None
    assert not store.reserve_path.exists()
    assert store.disk_full


def test_disk_full_read_is_reported(store, monkeypatch):
    from agent import store as storemod

    def full(sql, params):
        raise storemod.DiskFull("disk full writing")
    monkeypatch.setattr(store, "_write", full)
    with pytest.raises(storemod.DiskFull):
        store.add("badge_read", BADGE)


def test_newer_schema_refused(tmp_path):
    s = Store(tmp_path / "d", device_id="21010200001210000001", site="t", reserve_mb=1)
    s.db.execute("PRAGMA user_version = 99")
    s.close()
    from agent.store import StoreError
    with pytest.raises(StoreError, match="newer than this agent knows"):
        Store(tmp_path / "d", device_id="21010200001210000001", site="t", reserve_mb=1)


def test_a_file_that_is_not_a_database_is_named_and_left_alone(tmp_path):
    garbage = os.urandom(4096)
    (tmp_path / "gate.db").write_bytes(garbage)
    with pytest.raises(StoreError, match=r"cannot open database .*gate\.db: file is not a database"):
        Store(tmp_path, device_id="21010200001320000001", site="test")
    assert (tmp_path / "gate.db").read_bytes() == garbage


def test_a_malformed_database_is_damage_named_and_left_alone(tmp_path):
    s = Store(tmp_path, device_id="21010200001320000001", site="test", reserve_mb=1)
    s.add("health", HEALTH)
    s.close()
    damaged = bytearray((tmp_path / "gate.db").read_bytes())
    damaged[100:4096] = os.urandom(3996)   # page 1 past the header: the schema
    (tmp_path / "gate.db").write_bytes(damaged)
    with pytest.raises(DamagedStore, match=r"gate\.db: database disk image is malformed"):
        Store(tmp_path, device_id="21010200001320000001", site="test", reserve_mb=1)
    assert (tmp_path / "gate.db").read_bytes() == damaged


def test_a_store_that_cannot_be_opened_for_another_reason_is_not_damage(tmp_path):
    (tmp_path / "gate.db").mkdir()
    with pytest.raises(StoreError) as raised:
        Store(tmp_path, device_id="21010200001320000001", site="test", reserve_mb=1)
    assert not isinstance(raised.value, DamagedStore)


def _config(tmp_path):
    from agent.config import parse
    from conftest import MINIMAL
    return parse(MINIMAL.format(data_dir=tmp_path / "data"), str(tmp_path / "config.toml"), False)


def test_the_agent_sets_a_damaged_store_aside_and_starts_a_new_one(tmp_path):
    config = _config(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    garbage = os.urandom(4096)
    (data / "gate.db").write_bytes(garbage)
    with pytest.raises(DamagedStore):
        open_store(config)   # the tools beside the agent leave it alone
    store = open_store(config, set_aside_damaged=True)
    try:
        [moved] = damaged_files(data)
        assert moved.read_bytes() == garbage
        [fault] = [r for r in store.pending(10) if r.kind == "fault"]
        assert fault.data["subsystem"] == "store" and fault.data["condition"] == "damaged_set_aside"
        assert moved.name in fault.data["detail"] and "file is not a database" in fault.data["detail"]
        store.add("alarm", ALARM)
        assert [r.kind for r in store.pending(10)] == ["alarm", "fault"]
    finally:
        store.close()


def test_a_database_is_set_aside_with_its_wal_and_shm(tmp_path):
    from agent.sqlite_threads import set_aside
    for suffix, content in (("", b"main"), ("-wal", b"wal"), ("-shm", b"shm")):
        (tmp_path / f"gate.db{suffix}").write_bytes(content)
    moved = set_aside(tmp_path / "gate.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == [moved.name, moved.name + "-shm", moved.name + "-wal"]
    assert [(moved.parent / (moved.name + s)).read_bytes() for s in ("", "-wal", "-shm")] == [b"main", b"wal", b"shm"]
    assert damaged_files(tmp_path) == [moved]


def _cut_power(data) -> bytes:
    """A store whose recent commits are only in its WAL, as a power cut leaves it: gate.db and
    gate.db-wal copied while the store is open. The WAL's bytes."""
    import shutil
    live = data / "live"
    store = Store(live, device_id="21010200001320000001", site="test", reserve_mb=1)
    for _ in range(20):
        store.add("alarm", ALARM)
    for suffix in ("", "-wal"):
        shutil.copy(live / f"gate.db{suffix}", data / f"gate.db{suffix}")
    store.close()
    return (data / "gate.db-wal").read_bytes()


def test_a_damaged_first_page_is_set_aside_with_its_wal_whole(tmp_path):
    """A read-write connection to a database SQLite cannot read deletes its WAL when it closes:
    the damage is found read-only first, so the WAL goes aside whole. (Page 1 alone damaged is
    no damage while the WAL holds a newer copy of it: SQLite reads that, and mends the file.)"""
    config = _config(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    _cut_power(data)
    for name in ("gate.db", "gate.db-wal"):
        with open(data / name, "r+b") as f:
            f.write(os.urandom(4096))
    wal = (data / "gate.db-wal").read_bytes()
    store = open_store(config, set_aside_damaged=True)
    store.close()
    [moved] = damaged_files(data)
    assert moved.with_name(moved.name + "-wal").read_bytes() == wal


def test_a_wal_with_a_damaged_header_is_damage_not_an_empty_log(tmp_path):
    """SQLite takes a WAL whose header does not check as empty and deletes it: every commit
    since the last checkpoint would be gone without a word."""
    config = _config(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    wal = bytearray(_cut_power(data))
    wal[12] ^= 0x01
    (data / "gate.db-wal").write_bytes(wal)
    with pytest.raises(DamagedStore, match=r"write-ahead log gate\.db-wal is damaged \(header\)"):
        Store(data, device_id="21010200001320000001", site="test", reserve_mb=1)
    assert (data / "gate.db-wal").read_bytes() == wal
    store = open_store(config, set_aside_damaged=True)
    store.close()
    [moved] = damaged_files(data)
    assert moved.with_name(moved.name + "-wal").read_bytes() == wal


def test_damage_met_while_running_sets_the_store_aside_at_the_next_start(tmp_path):
    """Damage deeper than page 1 is found only where it is read; the store says so, and the
    next start sets the file aside so housekeeping can requeue what it still holds."""
    from agent.housekeeping import Housekeeping
    from agent.store import DAMAGE_MARK
    from agent.status import collect, render
    config = _config(tmp_path)
    data = tmp_path / "data"
    store = open_store(config, set_aside_damaged=True)
    fill_with_badge_reads(store, 3000)
    store.close()
    garble_page_holding(data / "gate.db", '"001500"')

    store = open_store(config, set_aside_damaged=True)      # page 1 is sound: it opens
    try:
        with pytest.raises(sqlite3.DatabaseError, match="malformed"):
            store.pending(3000)
        assert "malformed" in store.damage_found
    finally:
        store.close()
    assert "database disk image is malformed" in (data / DAMAGE_MARK).read_text()
    assert "STORE DAMAGED WHILE RUNNING" in render(collect(config))
    (data / "config.toml").write_text(MINIMAL_CONFIG.format(data_dir=data))
    done = run_cli("--config", data / "config.toml", "sync", "status")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "a database in storage.data_dir is damaged: database disk image is malformed" in done.stderr

    store = open_store(config, set_aside_damaged=True)
    try:
        [moved] = damaged_files(data)
        assert not (data / DAMAGE_MARK).exists()
        [fault] = [r for r in store.pending(10) if r.kind == "fault"]
        assert "damage found while the agent ran" in fault.data["detail"]
        Housekeeping(store, 60).requeue_set_aside()
        back = store.depth()["by_kind"]["badge_read"]
        assert 2900 < back < 3000                               # all but the damaged page's rows
        assert "unsent record(s) back in the outbox" in render(collect(config))
    finally:
        store.close()


# --- requeue: rows salvaged from a damaged store --------------------------------------

def _salvaged(tmp_path, *records) -> "Salvage":
    """The unsent rows of a store holding `records` ((kind, data, at) each), closed and read
    back as agent.salvage reads a store set aside."""
    from agent.salvage import read_unsent
    old = Store(tmp_path / "old", device_id="21010200001320000001", site="test", reserve_mb=1)
    made = [old.add(kind, data, at=at) for kind, data, at in records]
    old.close()
    salvage = read_unsent(old.path)
    assert [row[0] for row in salvage.records] == [r.uuid for r in made]
    return salvage


def _with_column(salvage, index: int, column: int, value):
    row = list(salvage.records[index])
    row[column] = value
    salvage.records[index] = tuple(row)
    return row[0]


def test_a_salvaged_row_the_store_would_refuse_is_left_out_and_the_rest_queued(store, tmp_path):
    """A row read page by page may lack a value the table requires; inserted, it failed its
    whole batch and left the store write-locked: every later write, alarms too, failed."""
    salvage = _salvaged(tmp_path, *[("badge_read", BADGE, None)] * 4)
    no_created = _with_column(salvage, 1, 3, None)
    no_time = _with_column(salvage, 2, 4, None)
    report = store.requeue(salvage)
    assert report["queued"] == {"badge_read": 2}
    assert dict(report["refused"]) == {no_created: "its created is missing (NULL), which the store requires",
                                       no_time: "its time is missing (NULL), which the store requires"}
    assert not store.db.conn.in_transaction
    other = sqlite3.connect(store.path, timeout=0)        # would fail at once if still locked
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    finally:
        other.close()
    alarm = store.add("alarm", ALARM)
    assert store.pending(1)[0].uuid == alarm.uuid


@pytest.mark.parametrize("column, value", [(3, "yesterday"), (5, None), (5, 1.5), (6, b"{}"), (0, None)])
def test_a_salvaged_value_of_the_wrong_type_is_refused_by_name(store, tmp_path, column, value):
    salvage = _salvaged(tmp_path, ("badge_read", BADGE, None), ("badge_read", BADGE, None))
    _with_column(salvage, 0, column, value)
    report = store.requeue(salvage)
    [(_uuid, why)] = report["refused"]
    assert why.startswith(f"its {('uuid', 'kind', 'priority', 'created', 'time', 'schema', 'body')[column]} ")
    assert report["queued"] == {"badge_read": 1}


def test_a_salvaged_image_row_the_store_would_refuse_is_counted(store, tmp_path):
    from agent.salvage import Salvage
    good = store.add_image(b"\xff\xd8 a scene \xff\xd9", "scene")
    store.db.execute("DELETE FROM images")                            # its file is still there
    salvage = Salvage(tmp_path / "old.db", images=[(good, "scene", 12, time.time(), None),
                                                   (None, "scene", 12, time.time(), None),
                                                   (good[::-1], None, 12, time.time(), None)])
    report = store.requeue(salvage)
    assert (report["images_queued"], report["images_refused"], report["images_missing"]) == (1, 2, 0)


@pytest.mark.parametrize("bad_row", [
    ("1", "badge_read", 2, None, "t", 1, "{}", None),                 # NOT NULL
    ("2", "badge_read", 2, 1.0, "t", 1, {"not": "bindable"}, None),    # no SQLite type
])
def test_a_write_that_fails_inside_its_transaction_is_rolled_back(store, bad_row):
    sql = ("INSERT INTO records (uuid, kind, priority, created, time, schema, body, sealed) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
    good = ("0", "badge_read", 2, 1.0, "t", 1, "{}", None)
    with pytest.raises((sqlite3.Error, ValueError, TypeError)):
        store._insert_many(sql, [good, bad_row])
    assert not store.db.conn.in_transaction
    assert store.db.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 0    # all or nothing
    store.add("alarm", ALARM)
    assert store.depth()["by_kind"] == {"alarm": 1}


def test_rows_read_page_by_page_older_than_their_retention_are_not_requeued(tmp_path):
    """Read page by page, a damaged store gives the rows on its freed pages too: records purged
    by retention once the platform had them. Rows SQLite reads are live: none is too old."""
    from agent.salvage import read_unsent
    now = time.time()
    long_ago = now - 100 * 86400
    salvage = _salvaged(tmp_path, ("badge_read", BADGE, long_ago), ("alarm", ALARM, long_ago),
                        ("badge_read", BADGE, now - 80 * 86400), ("badge_read", BADGE, None))
    retention = {"badge_read": 90, "alarm": 180}
    through_sqlite = Store(tmp_path / "a", device_id="21010200001320000001", site="test", reserve_mb=1,
                           retention=retention)
    try:
        report = through_sqlite.requeue(salvage)
        assert report["too_old"] == 0 and report["queued"] == {"alarm": 1, "badge_read": 3}
    finally:
        through_sqlite.close()

    data = bytearray(salvage.path.read_bytes())
    data[:4096] = os.urandom(4096)
    salvage.path.write_bytes(data)
    scanned = read_unsent(salvage.path)
    assert scanned.scanned and len(scanned.records) == 4
    page_by_page = Store(tmp_path / "b", device_id="21010200001320000001", site="test", reserve_mb=1,
                         retention=retention)
    try:
        report = page_by_page.requeue(scanned, now=now)
        assert report["too_old"] == 1 and report["queued"] == {"alarm": 1, "badge_read": 2}
        assert page_by_page.requeued()[scanned.path.name]["too_old"] == 1
        assert {r.uuid for r in page_by_page.pending(10)} == {row[0] for row in scanned.records[1:]}
    finally:
        page_by_page.close()


def test_a_damage_mark_without_its_store_is_removed_not_acted_on(tmp_path, caplog):
    """The installer deleted a damaged gate.db by hand: the mark it left names that file only."""
    from agent.store import DAMAGE_MARK
    config = _config(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / DAMAGE_MARK).write_text("2026-11-25T10:00:00Z database disk image is malformed\n")
    for _ in range(2):                                            # the next start too
        store = open_store(config, set_aside_damaged=True)
        try:
            assert store.pending(10) == []                        # no damaged_set_aside fault
        finally:
            store.close()
        assert damaged_files(data) == [] and not (data / DAMAGE_MARK).exists()
    assert f"{data / DAMAGE_MARK} is there but gate.db is not" in caplog.text
