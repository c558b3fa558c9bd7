"""`gate-agent sync requeue`: the unsent records of a damaged store back into the outbox."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from agent.config import load
from agent.privacy import Sealer, create_key, load_key
from agent.salvage import read_unsent
from agent.sqlite_threads import set_aside
from agent.store import Store, open_store
from conftest import run_cli
from hil.broker import Mosquitto, Subscriber

CARD = {"reader": "id1", "card_kind": "resident", "id_number": "210102199001011234", "name": "张三"}
PAGE = 4096


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


def garble_page_holding(path, text: str) -> int:
    """Overwrite the b-tree page whose rows hold `text` (a table leaf page); its number."""
    data = bytearray(path.read_bytes())
    page = data.index(text.encode()) // PAGE
    data[page * PAGE:page * PAGE + 64] = os.urandom(64)
    path.write_bytes(data)
    return page


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


def test_a_file_nothing_can_be_read_from_is_named_and_kept(config, old_store):
    data = bytearray(old_store["path"].read_bytes())
    data[:100] = os.urandom(100)
    old_store["path"].write_bytes(data)
    done = requeue(config.path, old_store["path"])
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"nothing can be read from {old_store['path']}" in done.stderr
    assert "nothing requeued (keep the file" in done.stderr
    assert old_store["path"].read_bytes() == data


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


def test_requeue_has_help():
    done = run_cli("sync", "requeue", "--help")
    assert done.returncode == 0 and "gate.db.damaged-" in done.stdout and "Example" in done.stdout
