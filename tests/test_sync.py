"""Store-and-forward against a real mosquitto: shapes, outages, TLS, ACL, full disk, CLI."""
import hashlib
import json
import logging
import subprocess
import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from agent import config as configmod
from agent.bus import Bus
from agent.housekeeping import Housekeeping
from agent.privacy import Sealer, load_key
from agent.records import new_record
from agent.store import DiskFull, open_store
from agent.supervisor import FAULT
from agent.sync import SyncEngine, SyncSubsystem
from agent.topics import Topics
from hil.broker import PKI, Mosquitto, Subscriber, tls_listener
from tests.conftest import MINIMAL, run_cli
from tests.damage import card_stalled

DEVICE, SITE = "21010200001210000001", "test-site"
TOPICS = Topics("gate", SITE, DEVICE)

EXAMPLES = {
    "alarm": {"button": "b1", "location": "gatehouse desk", "drill": False, "pressed_at": "2026-11-24T10:00:00+08:00"},
    "alert": {"reason": "watchlist", "lane": "in1", "near": False, "plate_no": "京A00001"},
    "tamper": {"source": "b1", "condition": "wire cut"},
    "access_decision": {"lane": "in1", "outcome": "allow", "rule": "staff",
                        "inputs": {"card": {"read": "r1", "id_number": "2101**********1234"}},
                        "decision_ms": 3.1, "name": "张三", "id_number": "210102199001011234"},
    "barrier": {"lane": "in1", "action": "open", "cause": "decision"},
    "command": {"command": "open_barrier", "accepted": True, "reason": "ok"},
    "plate_read": {"lane": "in1", "plate_no": "辽A12345", "plate_color": 5, "plate_class": "02",
                   "confidence": 0.97, "pass_time": "2026-11-24T10:00:00.000+08:00",
                   "motor_vehicle": {"PlateNo": "辽A12345", "HasPlate": True, "PlateColor": "5"}},
    "card_read": {"reader": "id1", "card_kind": "resident", "id_number": "210102199001011234", "name": "张三"},
    "badge_read": {"reader": "badge1", "format": "wiegand26", "badge": "12345"},
    "fault": {"subsystem": "vision", "condition": "camera lost", "detail": "no frames for 5 s"},
}


def make_config(tmp_path, port, mqtt_extra="", url=None, storage_extra="reserve_mb = 1\n", data_dir=None):
    base = MINIMAL.replace('url = "mqtt://127.0.0.1:1883"', f'url = "{url or f"mqtt://127.0.0.1:{port}"}"')
    base = base.replace("[mqtt]\n", "[mqtt]\n" + mqtt_extra)
    base = base.replace("[storage]\n", "[storage]\n" + storage_extra)
    path = tmp_path / "config.toml"
    path.write_text(base.format(data_dir=data_dir or tmp_path / "data"))
    return configmod.load(path)


@pytest.fixture
def setup(tmp_path, data_key):
    """(config, store) for a broker on `port`; the store closes at the end."""
    opened = []

    def make(port, **kw):
        cfg = make_config(tmp_path, port, **kw)
        store = open_store(cfg, Sealer(load_key(cfg.privacy.key_file)))
        opened.append(store)
        return cfg, store
    yield make
    for store in opened:
        store.close()


def gate_of(cfg, store):
    return SimpleNamespace(config=cfg, store=store, bus=Bus())


def fast_engine(cfg, store, **kw):
    kw.setdefault("backoff_start", 0.1)
    kw.setdefault("backoff_max", 0.4)
    return SyncEngine(cfg, store, Bus(), **kw)


def bulk_add(store, kind, n):
    """n records in one transaction (a quick backlog); their UUIDs."""
    store.db.conn.execute("BEGIN")
    uuids = {store.put(new_record(kind, EXAMPLES[kind], device_id=DEVICE, site=SITE)).uuid for _ in range(n)}
    store.db.conn.execute("COMMIT")
    return uuids


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_every_kind_arrives_on_its_topic_with_its_shape(setup):
    with Mosquitto() as broker, Subscriber(broker.port, "gate/#") as sub:
        cfg, store = setup(broker.port)
        made = {kind: store.add(kind, data) for kind, data in EXAMPLES.items()}
        jpeg = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8 + b"\xff\xd9"
        sha = store.add_image(jpeg, "scene", made["plate_read"].uuid)
        health = Housekeeping(store, 60).produce_health()
        stats = fast_engine(cfg, store, downlink=False).drain(timeout=20)
        assert stats["records"] == len(EXAMPLES) + 1 and stats["images"] == 1
        assert sub.wait_for(lambda m: any("/images/" in t for t, _, _ in m))
        by_uuid = {r["uuid"]: r for r in sub.records()}
        topics = {json.loads(p)["uuid"]: t for t, p, _ in sub.messages if "/records/" in t}
        for kind, record in list(made.items()) + [("health", health)]:
            got = by_uuid[record.uuid]
            assert topics[record.uuid] == f"gate/{SITE}/{DEVICE}/records/{kind}"
            assert set(got) == {"schema", "uuid", "kind", "device_id", "site", "seq", "time", "data"}
            assert (got["kind"], got["device_id"], got["site"]) == (kind, DEVICE, SITE)
            if kind != "health":
                assert got["data"] == EXAMPLES[kind]   # personal fields unsealed for the platform
        assert set(by_uuid["%s" % health.uuid]["data"]) >= {"outbox", "subsystems", "disk_free_mb", "versions"}
        [(topic, payload, props)] = [m for m in sub.messages if "/images/" in m[0]]
        assert topic == TOPICS.image(sha) and hashlib.sha256(payload).hexdigest() == sha
        assert props == {"record_uuid": made["plate_read"].uuid, "role": "scene"}
        assert (f"gate/{SITE}/{DEVICE}/availability", b"online", {}) in sub.messages
        assert store.depth()["total"] == 0 and store.pending_images() == []


def test_a_record_that_cannot_be_read_back_is_kept_and_the_rest_go(setup):
    with Mosquitto() as broker, Subscriber(broker.port, "gate/#") as sub:
        cfg, store = setup(broker.port)
        damaged = store.add("card_read", EXAMPLES["card_read"])
        store.db.execute("UPDATE records SET body = '{' WHERE uuid = ?", [damaged.uuid])
        behind = bulk_add(store, "badge_read", 20)
        sync = SyncSubsystem(gate_of(cfg, store), backoff_start=0.1, backoff_max=0.4)
        sync.start()
        try:
            assert sub.wait_for(lambda m: behind <= {r["uuid"] for r in sub.records()}, 10)
            assert wait_until(lambda: "1 record(s) in the outbox cannot be read back" in sync.health()["detail"])
            assert sync.health()["state"] == "degraded"
            assert sub.wait_for(lambda m: any(r["kind"] == "fault" for r in sub.records()), 10)
            fault = next(r for r in sub.records() if r["kind"] == "fault")
            assert fault["data"]["condition"] == "unreadable_record" and damaged.uuid in fault["data"]["detail"]
            assert damaged.uuid not in {r["uuid"] for r in sub.records()}
            assert wait_until(lambda: store.depth()["by_kind"] == {"card_read": 1})   # kept, unsent
        finally:
            sync.stop()


def test_a_store_that_fails_the_status_message_does_not_stop_the_pump(setup):
    """Damage on two overflow pages: one under a record's body (the outbox read fails, so the pump
    sends a status message) and one under a state value the status reads. That second error
    once killed the pump: no alarm went after it."""
    from damage import garble_page_holding
    with Mosquitto() as broker, Subscriber(broker.port, "gate/#") as sub:
        cfg, store = setup(broker.port, mqtt_extra="inflight = 1\n")   # the outbox read one at a time
        store.add("fault", dict(EXAMPLES["fault"], detail="a" * 5000 + "BODY-HERE" + "b" * 7000))
        store.state_set("downlink.config", {"refused": "c" * 5000 + "STATE-HERE" + "d" * 7000})
        store.close()
        for marker in ("BODY-HERE", "STATE-HERE"):
            garble_page_holding(store.path, marker)
        store = open_store(cfg, Sealer(load_key(cfg.privacy.key_file)))
        engine = fast_engine(cfg, store, downlink=False)
        engine.start()
        try:
            def status_says_unreadable(messages):
                return any(t.endswith("/status") and "store_unreadable" in json.loads(p) for t, p, _ in messages)
            assert sub.wait_for(status_says_unreadable), "the pump never told the platform"
            alarm = store.add("alarm", EXAMPLES["alarm"])
            assert sub.wait_for(lambda m: any(r["uuid"] == alarm.uuid for r in sub.records())), \
                "the pump stopped"
            assert engine.alive
            status = json.loads([p for t, p, _ in sub.messages if t.endswith("/status")][-1])
            assert "malformed" in status["store_unreadable"] and "malformed" in status["store_damaged"]
        finally:
            engine.stop()
            store.close()


def test_outage_then_alarms_first_and_nothing_lost(setup, caplog):
    caplog.set_level(logging.WARNING, "gate.sync")
    broker = Mosquitto(persistent=True)
    with broker, Subscriber(broker.port, "gate/+/+/records/#", session="platform") as sub:
        cfg, store = setup(broker.port)
        gate = gate_of(cfg, store)
        sync = SyncSubsystem(gate, backoff_start=0.1, backoff_max=0.4)
        broker.stop()
        sync.start()
        try:
            assert wait_until(lambda: sync.health()["condition"] == "unreachable")
            health = sync.health()
            assert health["state"] == "degraded" and "broker unreachable" in health["detail"]
            assert "broker unreachable" in caplog.text
            reads = [store.add("plate_read", EXAMPLES["plate_read"]) for _ in range(300)]
            alarms = [store.add("alarm", EXAMPLES["alarm"]) for _ in range(5)]
            assert store.depth()["total"] == 305
            broker.start()
            assert wait_until(lambda: store.depth()["total"] == 0, 20)
            assert sub.wait_for(lambda m: len({json.loads(p)["uuid"] for _, p, _ in m}) >= 305, 20)
            order = [r["uuid"] for r in sub.records()]
            alarm_ids = {a.uuid for a in alarms}
            assert set(order) == alarm_ids | {r.uuid for r in reads}
            assert set(order[:5]) == alarm_ids, "alarms created last must be delivered first"
            assert sync.health()["state"] == "ok"
        finally:
            sync.stop()


def test_broker_restart_mid_drain_loses_nothing(setup):
    broker = Mosquitto(persistent=True)
    with broker, Subscriber(broker.port, "gate/+/+/records/#", session="platform") as sub:
        cfg, store = setup(broker.port, mqtt_extra="inflight = 8\n")
        made = bulk_add(store, "badge_read", 3000)
        engine = fast_engine(cfg, store, downlink=False)
        engine.start()
        try:
            assert wait_until(lambda: engine.stats["records"] > 200, 20)
            broker.stop()
            assert store.depth()["total"] > 0, "the drain finished before the restart: make it bigger"
            broker.start()
            assert wait_until(lambda: store.depth()["total"] == 0, 30)
            assert sub.wait_for(lambda m: {r["uuid"] for r in sub.records()} >= made, 20)
        finally:
            engine.stop()


@pytest.fixture
def tls_broker(tmp_path):
    pki = PKI(tmp_path / "pki")
    port = __import__("hil.broker", fromlist=["free_port"]).free_port()
    with Mosquitto(extra_config=tls_listener(port, pki)) as broker:
        broker.tls_port = port
        yield broker, pki


def tls_mqtt(pki, ca=None, cert=None, key=None):
    return (f'ca_file = "{ca or pki.ca_file}"\ncert_file = "{cert or pki.client_cert_file}"\n'
            f'key_file = "{key or pki.client_key_file}"\n')


def test_mutual_tls_delivers(setup, tls_broker):
    broker, pki = tls_broker
    with Subscriber(broker.port, "gate/#") as sub:
        cfg, store = setup(broker.tls_port, url=f"mqtts://127.0.0.1:{broker.tls_port}",
                           mqtt_extra=tls_mqtt(pki))
        alarm = store.add("alarm", EXAMPLES["alarm"])
        assert fast_engine(cfg, store, downlink=False).drain(timeout=20)["records"] == 1
        assert sub.wait_for(lambda m: any(alarm.uuid in r["uuid"] for r in sub.records()))


@pytest.mark.parametrize("who", ["device certificate from another CA", "broker certificate not trusted"])
def test_tls_refusal_is_reported_and_nothing_dropped(setup, tls_broker, tmp_path, caplog, who):
    caplog.set_level(logging.WARNING, "gate.sync")
    broker, pki = tls_broker
    rogue = PKI(tmp_path / "rogue", name="rogue")
    files = tls_mqtt(pki, cert=rogue.client_cert_file, key=rogue.client_key_file) \
        if who.startswith("device") else tls_mqtt(pki, ca=rogue.ca_file)
    cfg, store = setup(broker.tls_port, url=f"mqtts://127.0.0.1:{broker.tls_port}", mqtt_extra=files)
    store.add("alarm", EXAMPLES["alarm"])
    sync = SyncSubsystem(gate_of(cfg, store), backoff_start=0.1, backoff_max=0.4)
    sync.start()
    try:
        assert wait_until(lambda: sync.health().get("condition") == "tls_refused")
        health = sync.health()
        assert health["state"] == "degraded" and "TLS refused" in health["detail"]
        assert "TLS refused" in caplog.text
        assert store.depth()["by_priority"]["alarm"] == 1
        assert wait_until(lambda: (store.state_get("sync") or {}).get("condition") == "tls_refused")
    finally:
        sync.stop()


def test_acl_denied_publish_stays_in_outbox_until_allowed(setup, caplog):
    caplog.set_level(logging.WARNING, "gate.sync")
    base = f"gate/{SITE}/{DEVICE}"
    deny_alarms = f"topic readwrite {base}/availability\ntopic readwrite {base}/records/plate_read\n"
    broker = Mosquitto(acl=deny_alarms)
    with broker:
        cfg, store = setup(broker.port)
        alarm = store.add("alarm", EXAMPLES["alarm"])
        read = store.add("plate_read", EXAMPLES["plate_read"])
        engine = fast_engine(cfg, store, downlink=False, refused_retry_s=0.3)
        gate = gate_of(cfg, store)
        sync = SyncSubsystem(gate)
        sync.engine = engine
        engine.start()
        try:
            assert wait_until(lambda: store.pending(10)[0].uuid == alarm.uuid and len(store.pending(10)) == 1)
            assert wait_until(lambda: sync.health()["condition"] == "publish_refused")
            assert "Not authorized" in sync.health()["detail"] and "refused" in caplog.text
            time.sleep(0.8)   # retried and refused again: still kept
            assert [r.uuid for r in store.pending(10)] == [alarm.uuid]
            broker.set_acl(deny_alarms + f"topic readwrite {base}/records/alarm\n")
            assert wait_until(lambda: store.depth()["total"] == 0)
            assert wait_until(lambda: sync.health()["state"] == "ok")
            assert store.get(read.uuid) is not None
        finally:
            engine.stop()


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_alarms_still_stored_sent_and_condition_reported(setup, tiny_disk):
    with Mosquitto() as broker, Subscriber(broker.port, "gate/#") as sub:
        cfg, store = setup(broker.port, data_dir=tiny_disk / "data")
        big = dict(EXAMPLES["fault"], detail="x" * 4000)
        with pytest.raises(DiskFull):
            for _ in range(5000):
                store.add("fault", big)
        assert store.disk_full
        alarm = store.add("alarm", EXAMPLES["alarm"])   # from the reserve
        sync = SyncSubsystem(gate_of(cfg, store), backoff_start=0.1, backoff_max=0.4)
        sync.start()
        try:
            assert sub.wait_for(lambda m: any(r["uuid"] == alarm.uuid for r in sub.records()), 20)
            assert sub.wait_for(lambda m: any(t.endswith("/status") for t, _, _ in m))
            status = json.loads([p for t, p, _ in sub.messages if t.endswith("/status")][-1])
            assert status["disk_full"] is True
            health = sync.health()
            assert health["state"] == "degraded" and "disk full" in health["detail"]
        finally:
            sync.stop()


def test_too_big_image_is_reported_not_retried(setup, caplog):
    with Mosquitto() as broker, Subscriber(broker.port, "gate/#") as sub:
        cfg, store = setup(broker.port, mqtt_extra="max_message_kb = 16\n")
        read = store.add("plate_read", EXAMPLES["plate_read"])
        sha = store.add_image(b"\xff\xd8" + b"\0" * 40_000, "scene", read.uuid)
        stats = fast_engine(cfg, store, downlink=False).drain(timeout=20)
        assert stats["images_not_sent"] == 1 and store.pending_images() == []
        assert sub.wait_for(lambda m: any(r["kind"] == "fault" and r["data"]["sha256"] == sha
                                          for r in sub.records()))
        assert not any("/images/" in t for t, _, _ in sub.messages)
        assert store.image_path(sha).exists()   # kept locally


def test_cli_sync_now_and_status(setup, tmp_path):
    with Mosquitto() as broker:
        cfg, store = setup(broker.port)
        for _ in range(20):
            store.add("plate_read", EXAMPLES["plate_read"])
        store.state_set("sync", {"state": "degraded", "condition": "unreachable", "connected": False,
                                 "detail": "broker unreachable: connection refused", "since": time.time()})
        done = run_cli("--config", cfg.path, "sync", "status")
        assert done.returncode == 0, done.stderr
        assert "read 20" in done.stdout and "broker unreachable" in done.stdout
        done = run_cli("--config", cfg.path, "sync", "now", "--timeout", "20")
        assert done.returncode == 0, done.stderr
        assert "sent 20 record(s)" in done.stdout and "outbox 20 -> 0" in done.stdout
        status = json.loads(run_cli("--config", cfg.path, "sync", "status", "--json").stdout)
        assert status["outbox"]["total"] == 0 and status["last_sync"] is not None
    done = run_cli("--config", cfg.path, "sync", "now", "--timeout", "2")   # broker gone
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("gate-agent: sync now:") and len(done.stderr.strip().splitlines()) == 1


def test_sync_help_has_examples():
    for args in (["sync", "--help"], ["sync", "now", "--help"], ["sync", "status", "--help"]):
        done = run_cli(*args)
        assert done.returncode == 0 and "Example:" in done.stdout


def test_gate_builds_sync_and_housekeeping(tmp_path, data_key):
    from agent.gate import AREAS, Gate
    with Mosquitto() as broker, Subscriber(broker.port, "gate/#") as sub:
        cfg = make_config(tmp_path, broker.port, mqtt_extra="health_interval_s = 1\n")
        gate = Gate(cfg).build([area for area in AREAS if area[0] in ("agent.sync", "agent.housekeeping")])
        names = [slot.subsystem.name for slot in gate.supervisor.slots]
        assert names == ["sync", "housekeeping"]
        gate.start()
        try:
            assert sub.wait_for(lambda m: sum(t.endswith("/records/health") for t, _, _ in m) >= 2, 10)
            gate.supervisor.check()
            states = gate.store.state_get("subsystems")
            assert states["sync"]["state"] == "ok" and states["housekeeping"]["state"] == "ok"
            health = [r for r in sub.records() if r["kind"] == "health"][-1]["data"]
            assert set(health["outbox"]["by_priority"]) == {"alarm", "decision", "read", "image", "health"}
            assert health["versions"]["agent"] and health["disk_free_mb"] > 0
            assert "oldest_unsent_s" in health["outbox"]
        finally:
            gate.stop()
        assert sub.wait_for(lambda m: any(t.endswith("/availability") and p == b"offline" for t, p, _ in m))


def test_housekeeping_purges_and_follows_the_remote_interval(store):
    hk = Housekeeping(store, health_interval_s=60, purge_interval_s=0, first_purge_s=0)
    store.retention = {"plate_read": 90}
    store.state_set("remote_config", {"version": 2, "settings": {"mqtt.health_interval_s": 0.05}})
    assert hk.interval() == 0.05
    old = store.add("plate_read", EXAMPLES["plate_read"], at=time.time() - 200 * 86400)
    store.mark_sent([old.uuid])
    hk.start()
    try:
        assert wait_until(lambda: len(store.records("health")) >= 3)
        assert wait_until(lambda: store.get(old.uuid) is None)   # 90-day retention applied
    finally:
        hk.stop()
    assert hk.health()["state"] == "stopped"


def test_connection_refused_by_the_broker_is_reported(setup, tmp_path, caplog):
    caplog.set_level(logging.WARNING, "gate.sync")
    (tmp_path / "password").write_text("not-the-password\n")
    with Mosquitto(extra_config="allow_anonymous false\n") as broker:
        cfg, store = setup(broker.port, mqtt_extra=f'username = "gate"\npassword_file = "{tmp_path / "password"}"\n')
        store.add("alarm", EXAMPLES["alarm"])
        sync = SyncSubsystem(gate_of(cfg, store), backoff_start=0.1, backoff_max=0.4)
        sync.start()
        try:
            assert wait_until(lambda: sync.health().get("condition") == "refused")
            assert "broker refused the connection" in sync.health()["detail"]
            assert "broker refused the connection" in caplog.text
            assert store.depth()["by_priority"]["alarm"] == 1
        finally:
            sync.stop()


def alarm_held_in_memory(bus):
    """An alarm the store refused, handed to the sync from memory as the alarm panel does."""
    from agent.bus import ALARM_UNSTORED
    record = new_record("alarm", EXAMPLES["alarm"], device_id=DEVICE, site=SITE)
    bus.publish(ALARM_UNSTORED, record=record)
    return record


def platform_has(sub, uuid, timeout):
    return sub.wait_for(lambda m: any(json.loads(p)["uuid"] == uuid for t, p, _ in m if "/records/" in t), timeout)


@contextmanager
def platform_and_engine(setup, **backoff):
    """A broker that keeps the platform's session over its restarts, the platform subscribed,
    and a started engine with a bus of its own: (broker, subscriber, store, bus, engine)."""
    broker = Mosquitto(persistent=True)
    with broker, Subscriber(broker.port, "gate/+/+/records/#", session="platform") as sub:
        cfg, store = setup(broker.port)
        bus = Bus()
        engine = SyncEngine(cfg, store, bus, downlink=False, **backoff)
        engine.start()
        try:
            yield broker, sub, store, bus, engine
        finally:
            engine.stop()


def test_an_alarm_held_in_memory_reaches_a_returning_broker_without_waiting_out_the_backoff(setup):
    """Not in the outbox, so the outbox says no alarm waits: the link must ask the sync's memory
    too, or it reconnects only when its backoff (here 10-20 s) is over."""
    with platform_and_engine(setup, backoff_start=20, backoff_max=20) as (broker, sub, store, bus, engine):
        assert wait_until(lambda: engine.link.connected)
        broker.stop()
        assert wait_until(lambda: engine.link.condition == "unreachable")
        alarm = alarm_held_in_memory(bus)
        time.sleep(1.0)
        broker.start()
        assert platform_has(sub, alarm.uuid, 3), "the alarm waited for the backoff"


def test_the_link_never_waits_for_a_stalled_card_to_save_its_state(setup):
    """The link's state goes into the store when the link changes; on a stalled card that write
    waits seconds. The link thread (paho's network loop: it carries the alarms sent from memory)
    must not wait with it."""
    with platform_and_engine(setup, backoff_start=0.1, backoff_max=0.4) as (broker, sub, store, bus, engine):
        assert wait_until(lambda: engine.link.connected)
        with card_stalled(store.path):
            broker.stop()
            assert wait_until(lambda: engine.link.condition == "unreachable")
            alarm = alarm_held_in_memory(bus)
            broker.start()
            assert platform_has(sub, alarm.uuid, 3), "the link waited for the store"
    assert store.state_get("sync", {}).get("state") == "stopped"


def test_a_dying_thread_is_seen_dead_at_once_while_the_card_stalls(setup):
    """The supervisor restarts a sync whose threads are not all alive: a dying thread must not
    first wait out a stalled card (busy timeout 30 s) to write its fault; the committer writes it."""
    broker = Mosquitto()
    with broker:
        cfg, store = setup(broker.port)
        engine = SyncEngine(cfg, store, Bus(), downlink=False)
        die = threading.Event()

        def pump_with_a_bug():
            die.wait()
            raise RuntimeError("a bug in the pump")
        engine._pump_loop = pump_with_a_bug
        engine.start()
        try:
            assert wait_until(lambda: engine.link.connected)
            with card_stalled(store.path):
                die.set()
                assert wait_until(lambda: not engine.alive, 3), "the dying pump waited for the card"
                assert (engine.link.state, engine.link.condition) == (FAULT, "crashed")
            assert wait_until(lambda: store.state_get("sync", {}).get("condition") == "crashed", 40)
        finally:
            engine.stop()
