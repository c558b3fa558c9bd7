"""`gate-agent sync requeue`: the unsent records of a damaged store back into the outbox."""
from __future__ import annotations

import os
import shutil
import threading
import sqlite3
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent.config import load
from agent.gate import AREAS, Gate
from agent.privacy import Sealer, create_key, load_key
import agent.salvage as salvage_module
from agent.salvage import SalvageRetry, describe_read, read_unsent
from agent.sqlite_threads import damage_before_opening, set_aside
from agent.store import Store, open_store
from agent.sync import SyncEngine
from conftest import run_cli
from damage import PAGE, garble_page_holding
from gpio_rig import subsystem
from hil.broker import Mosquitto, Subscriber

CARD = {"reader": "id1", "card_kind": "resident", "id_number": "210102199001011234", "name": "张三"}


def fault(n: int) -> dict:
    return {"subsystem": "test", "condition": "filler", "detail": f"marker-{n:05d} " + "x" * 200}


@pytest.fixture
def config(config_file):
    return load(config_file())


@pytest.fixture
def old_store(config):
    """A store of 3,000 faults (the first 1,000 confirmed by the platform), an alarm, a card read
    with personal fields and an image, closed and set aside as the agent does: its name."""
    store = open_store(config, Sealer(load_key(config.privacy.key_file)))
    store.db.conn.execute("BEGIN")
    faults = [store.add("fault", fault(n)) for n in range(3000)]
    store.db.conn.execute("COMMIT")
    store.mark_sent([r.uuid for r in faults[:1000]])
    alarm = store.add("alarm", {"button": "b1", "location": "desk", "drill": False,
                                "pressed_at": "2026-11-25T10:00:00.000+08:00"})
    card = store.add("card_read", CARD)
    sha = store.add_image(b"\xff\xd8 a scene \xff\xd9", "scene", card.uuid)
    store.close()
    moved = set_aside(store.path)
    return {"name": moved.name, "path": moved, "alarm": alarm, "card": card, "faults": faults, "sha": sha}


def requeue(config_path, *args):
    return run_cli("--config", config_path, "sync", "requeue", *args)


def test_requeue_puts_the_unsent_records_back_with_their_uuids(config, config_file, old_store):
    done = requeue(config.path, old_store["name"])      # a bare name: looked for in data_dir
    assert done.returncode == 0, done.stderr
    assert "2002 unsent record(s) (alarm 1, card_read 1, fault 2000), 1 unsent image(s); " \
           "1000 already confirmed by the platform (left)" in done.stdout
    assert "queued 2002 record(s)" in done.stdout and "1 image(s)" in done.stdout
    assert "DAMAGED" not in done.stdout and "Traceback" not in done.stderr
    store = open_store(config, Sealer(load_key(config.privacy.key_file)))
    try:
        assert store.pending(1)[0].uuid == old_store["alarm"].uuid    # first in line again
        assert store.get(old_store["card"].uuid).data["id_number"] == CARD["id_number"]  # opens
        assert store.depth()["by_kind"] == {"alarm": 1, "card_read": 1, "fault": 2000}
        assert store.pending_images(5) == []                       # after its record
        store.mark_sent([old_store["card"].uuid])
        assert [i["sha256"] for i in store.pending_images(5)] == [old_store["sha"]]
    finally:
        store.close()
    assert old_store["path"].is_file()                              # only read

    again = requeue(config.path, old_store["path"])
    assert again.returncode == 0
    assert "queued 0 record(s); 2002 already in the outbox" in again.stdout


def test_rows_on_a_damaged_page_are_skipped_and_counted(config, old_store):
    page = garble_page_holding(old_store["path"], "marker-02000")
    salvage = read_unsent(old_store["path"])
    [(first, last)] = salvage.unreadable
    lost = last - first + 1
    assert first <= 2001 <= last and 1 <= lost < 40, (page, salvage.unreadable)
    assert len(salvage.records) == 2002 - lost
    assert salvage.records[-2][0] == old_store["alarm"].uuid       # the rows after it are read

    done = requeue(config.path, old_store["path"])
    assert done.returncode == 0, done.stderr
    assert f"DAMAGED: {lost} row(s) unreadable, sequence numbers {first}-{last}" in done.stdout
    assert f"queued {2002 - lost} record(s)" in done.stdout


def test_requeued_records_reach_the_platform(config_file, old_store, tmp_path):
    with Mosquitto() as broker, Subscriber(broker.port, "gate/#") as platform:
        path = config_file()
        path.write_text(path.read_text().replace("127.0.0.1:1883", f"127.0.0.1:{broker.port}"))
        assert requeue(path, old_store["name"]).returncode == 0
        done = run_cli("--config", path, "sync", "now", "--timeout", "60", timeout=90)
        assert done.returncode == 0, done.stderr
        assert "sent 2002 record(s) and 1 image(s)" in done.stdout
        got = {r["uuid"]: r for r in platform.records()}
        assert old_store["alarm"].uuid in got and old_store["card"].uuid in got
        assert got[old_store["card"].uuid]["data"]["id_number"] == CARD["id_number"]
        assert not {r.uuid for r in old_store["faults"][:1000]} & set(got)   # confirmed before


def test_a_store_whose_first_page_is_gone_is_read_page_by_page(config, old_store):
    """The damage the agent meets when it opens a store (page 1: the header and the schema)
    leaves SQLite nothing to read; the pages themselves still hold the rows."""
    data = bytearray(old_store["path"].read_bytes())
    data[:PAGE] = os.urandom(PAGE)
    old_store["path"].write_bytes(data)
    done = requeue(config.path, old_store["path"])
    assert done.returncode == 0, done.stderr
    assert "SQLite could read nothing (SQLite cannot read the records table: file is not a database): " \
           "read page by page" in done.stdout
    assert "2002 unsent record(s) (alarm 1, card_read 1, fault 2000), 1 unsent image(s); " \
           "1000 already confirmed by the platform (left)" in done.stdout
    assert "queued 2002 record(s)" in done.stdout and "1 image(s)" in done.stdout
    store = open_store(config, Sealer(load_key(config.privacy.key_file)))
    try:
        assert store.pending(1)[0].uuid == old_store["alarm"].uuid
        assert store.get(old_store["card"].uuid).data["id_number"] == CARD["id_number"]
        queued = [r.uuid for r in store.records("fault", limit=3000)][::-1]
        assert queued == [r.uuid for r in old_store["faults"][1000:]]    # in their order
    finally:
        store.close()
    assert old_store["path"].read_bytes() == data


def test_the_wal_of_a_store_killed_with_page_one_gone_is_read_too(config):
    """A power cut: the recent commits are only in the WAL; then page 1 and the WAL's start
    are damaged. What the WAL's later frames hold comes back."""
    store = open_store(config, Sealer(load_key(config.privacy.key_file)))
    alarm = store.add("alarm", {"button": "b1", "location": "desk", "drill": False,
                                "pressed_at": "2026-11-25T10:00:00.000+08:00"})
    reads = [store.add("badge_read", {"reader": "badge1", "format": "wiegand26", "badge": str(n)})
             for n in range(50)]
    data = Path(config.storage.data_dir)
    for suffix in ("", "-wal"):                 # as the card held them when the power went
        shutil.copy(data / f"gate.db{suffix}", data / f"cut.db{suffix}")
    store.close()
    for name in ("cut.db", "cut.db-wal"):
        with open(data / name, "r+b") as f:
            f.write(os.urandom(PAGE))
    salvage = read_unsent(data / "cut.db")
    uuids = [row[0] for row in salvage.records]
    assert salvage.scanned and uuids[0] == alarm.uuid and uuids[1:] == [r.uuid for r in reads]


def test_a_file_with_no_rows_of_a_store_is_named_and_kept(config, tmp_path):
    junk = tmp_path / "gate.db.damaged-20261125T000000Z"
    junk.write_bytes(os.urandom(8 * PAGE))
    done = requeue(config.path, junk)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"nothing can be read from {junk}" in done.stderr and "none of its 8 page(s) holds a row" in done.stderr
    assert "nothing requeued (keep the file" in done.stderr


def test_the_live_store_and_a_missing_file_are_refused(config):
    Store(config.storage.data_dir, device_id=config.device.id, site=config.device.site).close()
    live = requeue(config.path, Path(config.storage.data_dir) / "gate.db")
    assert live.returncode == 2 and "is the live store" in live.stderr
    missing = requeue(config.path, "gate.db.damaged-nothing")
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_dry_run_changes_nothing(config, old_store):
    done = requeue(config.path, old_store["name"], "--dry-run")
    assert done.returncode == 0 and "dry run: nothing queued" in done.stdout
    store = open_store(config)
    try:
        assert store.depth()["total"] == 0
    finally:
        store.close()


def test_records_sealed_under_another_key_are_left_out_and_named(config, old_store, tmp_path):
    shutil.copy(config.privacy.key_file, tmp_path / "old.key")
    os.unlink(config.privacy.key_file)
    create_key(config.privacy.key_file)                            # the device was re-provisioned
    done = requeue(config.path, old_store["name"])
    assert done.returncode == 0, done.stderr
    assert "queued 2001 record(s) (alarm 1, fault 2000)" in done.stdout
    assert f"not queued: {old_store['card'].uuid}: personal fields sealed under another data key" \
           in done.stdout


def agent_requeues(config) -> list:
    """Start a gate with the housekeeping area until it has looked at the files set aside;
    the `requeued` faults it recorded."""
    gate = Gate(config).build([area for area in AREAS if area[0] == "agent.housekeeping"])
    before = {r.uuid for r in gate.store.records("fault")}
    gate.start()
    try:
        assert subsystem(gate, "housekeeping").set_aside_looked_at.wait(30)
        return [r.data for r in gate.store.records("fault")
                if r.data["condition"] == "requeued" and r.uuid not in before]
    finally:
        gate.stop()


def test_the_agent_requeues_a_store_set_aside_once(config, old_store):
    page = garble_page_holding(old_store["path"], "marker-02000")
    [(first, last)] = read_unsent(old_store["path"]).unreadable     # read-only: the agent's read is the same
    [fault] = agent_requeues(config)
    assert fault["subsystem"] == "store"
    assert f"{old_store['name']}: " in fault["detail"] and "DAMAGED: " in fault["detail"], page
    assert "queued " in fault["detail"] and "is kept: delete it once the outbox has drained" in fault["detail"]
    store = open_store(config, Sealer(load_key(config.privacy.key_file)))
    try:
        queued = store.depth()["by_kind"]
        assert queued["alarm"] == 1 and queued["fault"] - 1 == 2000 - (last - first + 1)   # one fault: the report
    finally:
        store.close()
    status = run_cli("--config", config.path, "status")
    assert f"DAMAGED DATABASE SET ASIDE: {old_store['name']} ({queued['fault'] - 1 + 2} unsent record(s) " \
           "back in the outbox, " in status.stdout
    assert agent_requeues(config) == []                            # once per file


def test_the_agent_names_a_set_aside_store_nothing_can_be_read_from(config, old_store):
    old_store["path"].write_bytes(os.urandom(old_store["path"].stat().st_size))
    [fault] = agent_requeues(config)
    assert f"nothing can be read from {old_store['path']}" in fault["detail"]
    status = run_cli("--config", config.path, "status")
    assert "nothing could be read from it: keep it for the platform's operators" in status.stdout
    assert agent_requeues(config) == []


def test_requeue_has_help():
    done = run_cli("sync", "requeue", "--help")
    assert done.returncode == 0 and "gate.db.damaged-" in done.stdout and "Example" in done.stdout


def power_cut_copy(config, name: str = "cut.db") -> Path:
    """gate.db and its WAL copied as the card holds them while the store is open (a power cut)."""
    data = Path(config.storage.data_dir)
    for suffix in ("", "-wal"):
        shutil.copy(data / f"gate.db{suffix}", data / f"{name}{suffix}")
    return data / name


def garble_first_page(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(os.urandom(PAGE))


def garble_wal_header(path: Path) -> None:
    """Flip a byte of the WAL header's checksum: SQLite then takes the WAL as empty."""
    with open(path.with_name(path.name + "-wal"), "r+b") as f:
        f.seek(31)
        last = f.read(1)
        f.seek(31)
        f.write(bytes([last[0] ^ 0xFF]))


def faults_in_one_transaction(store, n: int) -> list:
    store.db.conn.execute("BEGIN")
    faults = [store.add("fault", fault(i)) for i in range(n)]
    store.db.conn.execute("COMMIT")
    return faults


def test_the_wal_of_a_store_set_aside_for_its_damaged_wal_header_is_read_too(config):
    """SQLite takes a WAL whose header does not check as empty: the records only in it (the
    recent ones, not yet checkpointed) come back page by page, and its copies are newer."""
    store = open_store(config, Sealer(load_key(config.privacy.key_file)))
    checkpointed = faults_in_one_transaction(store, 300)
    store.mark_sent([r.uuid for r in checkpointed[:100]])
    store.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.mark_sent([r.uuid for r in checkpointed[100:150]])          # confirmed: only the WAL says so
    recent = [store.add("badge_read", {"reader": "badge1", "format": "wiegand26", "badge": str(n)})
              for n in range(50)]
    cut = power_cut_copy(config)
    store.close()
    garble_wal_header(cut)
    assert damage_before_opening(cut) == "its write-ahead log cut.db-wal is damaged (header)"
    salvage = read_unsent(set_aside(cut))
    assert [row[0] for row in salvage.records] == [r.uuid for r in checkpointed[150:] + recent]
    assert salvage.already_sent == 150 and not salvage.unreadable and not salvage.scanned
    assert "its WAL's header is damaged" in salvage.wal_scanned
    assert any("its WAL's header is damaged" in line for line in describe_read(salvage))


def test_a_damaged_wal_header_and_page_one_gone_read_the_wal_once(config, monkeypatch):
    """SQLite can read neither: the file goes page by page, and the WAL, already read page by
    page for its header, is not read again; every unsent record comes back."""
    import agent.sqlite_pages as pages
    store = open_store(config, Sealer(load_key(config.privacy.key_file)))
    checkpointed = faults_in_one_transaction(store, 300)
    store.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    recent = [store.add("badge_read", {"reader": "badge1", "format": "wiegand26", "badge": str(n)})
              for n in range(50)]
    cut = power_cut_copy(config)
    store.close()
    garble_wal_header(cut)
    garble_first_page(cut)
    wal_reads = []
    real_read = pages._Wal.read
    monkeypatch.setattr(pages._Wal, "read", staticmethod(lambda *a: wal_reads.append(1) or real_read(*a)))
    salvage = read_unsent(cut)
    assert "read page by page" in salvage.scanned and "its header is damaged" in salvage.scanned
    assert [row[0] for row in salvage.records] == [r.uuid for r in checkpointed + recent]
    assert len(wal_reads) == 1


def test_records_put_back_in_the_outbox_after_a_checkpoint_are_unsent(config):
    """The platform's resend sets sent_at back to NULL: the WAL's newer copy says unsent,
    though the file's own pages say confirmed."""
    store = open_store(config, Sealer(load_key(config.privacy.key_file)))
    faults = faults_in_one_transaction(store, 200)
    store.mark_sent([r.uuid for r in faults])
    store.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert SyncEngine(config, store, persistent=False, downlink=False).resend_since(0) == 200
    cut = power_cut_copy(config)
    store.close()
    garble_first_page(cut)
    salvage = read_unsent(cut)
    assert salvage.scanned and salvage.already_sent == 0
    assert [row[0] for row in salvage.records] == [r.uuid for r in faults]


def test_frames_of_an_earlier_wal_generation_are_left_out(config):
    """After a checkpoint the next write starts the WAL again from its first frame with new
    salts; the longer earlier generation's frames behind it (saying confirmed) are stale."""
    store = open_store(config, Sealer(load_key(config.privacy.key_file)))
    faults = faults_in_one_transaction(store, 300)
    for start in range(0, 300, 10):
        store.mark_sent([r.uuid for r in faults[start:start + 10]])
    assert store.db.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0] == 0
    SyncEngine(config, store, persistent=False, downlink=False).resend_since(0)
    cut = power_cut_copy(config)
    store.close()
    garble_first_page(cut)
    salvage = read_unsent(cut)
    assert salvage.already_sent == 0 and [row[0] for row in salvage.records] == [r.uuid for r in faults]
    assert "of an earlier generation left out" in salvage.scanned


def test_frames_after_the_last_commit_are_left_out(config):
    """A transaction too big for the page cache writes frames before it commits; cut there,
    it never committed: the records it marked confirmed are still unsent."""
    store = open_store(config, Sealer(load_key(config.privacy.key_file)))
    faults = faults_in_one_transaction(store, 300)
    conn = store.db.conn
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA cache_size=2")
    conn.execute("BEGIN")
    conn.execute("UPDATE records SET sent_at = 1")
    cut = power_cut_copy(config)
    conn.execute("ROLLBACK")
    store.close()
    garble_first_page(cut)
    salvage = read_unsent(cut)
    assert salvage.already_sent == 0 and [row[0] for row in salvage.records] == [r.uuid for r in faults]
    assert "after its last commit left out" in salvage.scanned


@contextmanager
def locked(path: Path):
    """Another process's exclusive lock on the database at `path`."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_locked_store_is_read_again_later_not_counted_lost(old_store):
    with locked(old_store["path"]):
        with pytest.raises(SalvageRetry, match="database is locked"):
            read_unsent(old_store["path"])
    assert len(read_unsent(old_store["path"]).records) == 2002


def test_a_lock_is_no_damage_to_halve_around(old_store):
    conn = sqlite3.connect(f"file:{old_store['path']}?mode=ro", uri=True, isolation_level=None, timeout=0)
    bad: list[int] = []
    try:
        with locked(old_store["path"]), pytest.raises(SalvageRetry):
            list(salvage_module._readable(conn, "SELECT uuid FROM records WHERE seq BETWEEN ? AND ?",
                                          3002, bad))
    finally:
        conn.close()
    assert bad == []


def test_requeue_names_a_file_it_cannot_read_now(config, old_store):
    with locked(old_store["path"]):
        done = requeue(config.path, old_store["path"])
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"SQLite cannot read {old_store['path']} just now (database is locked)" in done.stderr
    assert "nothing requeued" in done.stderr
    os.mkdir(old_store["path"].with_name(old_store["name"] + "-wal"))      # no WAL SQLite can open
    done = requeue(config.path, old_store["path"])
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert str(old_store["path"]) in done.stderr and "nothing requeued" in done.stderr


def test_a_set_aside_store_locked_just_now_is_read_once_it_is_free(config, old_store, caplog):
    from agent.housekeeping import Housekeeping
    store = open_store(config, Sealer(load_key(config.privacy.key_file)))
    housekeeping = Housekeeping(store, health_interval_s=60)
    try:
        with locked(old_store["path"]):
            housekeeping.requeue_set_aside()
        assert housekeeping.health()["state"] == "degraded"
        assert "requeue waits" in housekeeping.health()["detail"] and "locked" in housekeeping.health()["detail"]
        assert store.requeued() == {} and "Traceback" not in caplog.text
        housekeeping.requeue_set_aside()
        assert store.requeued()[old_store["name"]]["queued"] == 2002
    finally:
        store.close()


def test_a_set_aside_store_locked_just_now_keeps_no_other_waiting(config, old_store):
    from agent.housekeeping import Housekeeping
    other = old_store["path"].with_name("gate.db.damaged-20991231T000000Z")   # read after the locked one
    shutil.copy(old_store["path"], other)
    store = open_store(config, Sealer(load_key(config.privacy.key_file)))
    housekeeping = Housekeeping(store, health_interval_s=60)
    try:
        with locked(old_store["path"]):
            housekeeping.requeue_set_aside()
        assert set(store.requeued()) == {other.name}
        assert "requeue waits" in housekeeping.health()["detail"]
    finally:
        store.close()


def test_a_set_aside_store_whose_reading_never_finished_is_left_alone(config, old_store):
    """Three starts that stopped while reading it (the card failing under the read): the fourth
    leaves it for the operators instead of reading it, and the agent stopping, again."""
    from agent.housekeeping import REQUEUE_ATTEMPTS_KEY
    store = open_store(config, Sealer(load_key(config.privacy.key_file)))
    try:
        store.state_set(REQUEUE_ATTEMPTS_KEY, {old_store["name"]: 3})
    finally:
        store.close()
    [fault] = agent_requeues(config)
    assert "reading it was begun 3 times and never finished" in fault["detail"]
    assert "nothing requeued, the file is kept" in fault["detail"]
    assert agent_requeues(config) == []
    status = run_cli("--config", config.path, "status")
    assert f"DAMAGED DATABASE SET ASIDE: {old_store['name']} (its reading never finished, begun at 3 starts" in status.stdout


def test_a_stop_in_the_middle_of_a_slow_reading_does_not_count_it(config, old_store, monkeypatch):
    """Stopping the agent while a failing card makes the reading slow is no sign the reading
    kills the agent: three such stops must not give the file up."""
    import agent.housekeeping as housekeeping_module
    from agent.housekeeping import REQUEUE_ATTEMPTS_KEY, Housekeeping
    reading, release = threading.Event(), threading.Event()

    def slow_read(path):
        reading.set()
        release.wait(10)
        raise housekeeping_module.SalvageRetry("released by the test")
    monkeypatch.setattr(housekeeping_module, "read_unsent", slow_read)
    monkeypatch.setattr(housekeeping_module, "STOP_JOIN_S", 0.2)
    store = open_store(config, Sealer(load_key(config.privacy.key_file)))
    housekeeping = Housekeeping(store, health_interval_s=60)
    try:
        housekeeping.start()
        assert reading.wait(5)
        assert store.state_get(REQUEUE_ATTEMPTS_KEY, {}) == {old_store["name"]: 1}
        housekeeping.stop()
        assert store.state_get(REQUEUE_ATTEMPTS_KEY, {}) == {}
    finally:
        release.set()
        housekeeping._thread.join(5)
        store.close()


def test_a_requeue_the_live_store_cannot_take_now_waits_and_is_not_counted_as_a_crash(config, old_store,
                                                                                      monkeypatch):
    """A full disk while requeueing is not the agent dying mid-read: the file is tried again at
    the next purge, the housekeeping says why meanwhile, and no reading is left counted."""
    from agent.housekeeping import REQUEUE_ATTEMPTS_KEY, Housekeeping
    from agent.store import DiskFull
    store = open_store(config, Sealer(load_key(config.privacy.key_file)))
    housekeeping = Housekeeping(store, health_interval_s=60)
    real_requeue = store.requeue

    def full(salvage, **kw):
        raise DiskFull("disk full writing to gate.db (simulated)")
    try:
        monkeypatch.setattr(store, "requeue", full)
        for _ in range(4):
            housekeeping.requeue_set_aside()
        housekeeping.produce_health()
        assert housekeeping.health() == {"state": "degraded", "detail": "requeue waits: disk full writing to "
                                                                           "gate.db (simulated)"}
        assert store.state_get(REQUEUE_ATTEMPTS_KEY, {}) == {} and store.requeued() == {}
        monkeypatch.setattr(store, "requeue", real_requeue)
        housekeeping.requeue_set_aside()
        assert store.requeued()[old_store["name"]]["queued"] == 2002
        assert "requeue waits" not in housekeeping.health()["detail"]
    finally:
        store.close()


def test_a_store_the_card_cannot_read_at_open_is_read_page_by_page(old_store, monkeypatch):
    """An I/O error reading the file is the card, not a lock: waiting for the next purge would
    never end; the pages that can be read are."""
    def failing_card(*args, **kwargs):
        exc = sqlite3.OperationalError("disk I/O error")
        exc.sqlite_errorname = "SQLITE_IOERR_READ"
        raise exc
    monkeypatch.setattr(salvage_module.sqlite3, "connect", failing_card)
    salvage = read_unsent(old_store["path"])
    assert "disk I/O error" in salvage.scanned and len(salvage.records) == 2002
