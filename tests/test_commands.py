"""Signed commands: a valid one runs once; replayed, expired, forged, unsigned ones are refused.
Then the same through a real broker, with config and list documents downlink."""
import json
import time
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import bus as busmod
from agent.bus import Bus
from agent.commands import CommandHandler, canonical, public_pem, sign_command, sign_document
from agent.sync import SyncSubsystem
from agent.topics import Topics
from hil.broker import Mosquitto, Subscriber
from tests.test_sync import DEVICE, SITE, setup  # noqa: F401  (fixture)

PLATFORM_KEY = Ed25519PrivateKey.generate()


@pytest.fixture
def handler(store):
    bus = Bus()
    calls = []
    bus.subscribe(busmod.BARRIER_OPEN, lambda **kw: calls.append(("open", kw)))
    bus.subscribe(busmod.DRILL, lambda **kw: calls.append(("drill", kw)))
    bus.subscribe(busmod.RESYNC, lambda **kw: calls.append(("resync", kw)))
    h = CommandHandler(store, bus, device_id=DEVICE, public_key=PLATFORM_KEY.public_key(), lanes=("in1",),
                       resend_since=lambda since: 0)
    h.calls = calls
    return h


def open_barrier(**extra):
    return dict({"command": "open_barrier", "args": {"lane": "in1"}, "device_id": DEVICE}, **extra)


def test_valid_command_executes_once_and_replay_is_refused(handler, store):
    payload = sign_command(PLATFORM_KEY, open_barrier())
    reply = handler.handle(payload)
    assert reply["accepted"] and reply["reason"] == "ok"
    [(what, kw)] = handler.calls
    assert what == "open" and kw["lane"] == "in1" and kw["cause"] == "command" and kw["ref"] == reply["record"]
    again = handler.handle(payload)
    assert not again["accepted"] and again["reason"].startswith("replayed")
    assert len(handler.calls) == 1
    records = {r.uuid: r for r in store.records("command")}
    assert records[reply["record"]].data["accepted"] is True
    assert records[again["record"]].data["accepted"] is False


def test_nonce_survives_a_restart(handler, store):
    payload = sign_command(PLATFORM_KEY, open_barrier())
    assert handler.handle(payload)["accepted"]
    fresh = CommandHandler(store, Bus(), device_id=DEVICE, public_key=PLATFORM_KEY.public_key(), lanes=("in1",))
    assert fresh.handle(payload)["reason"].startswith("replayed")


@pytest.mark.parametrize("case, payload, reason", [
    ("expired", lambda: sign_command(PLATFORM_KEY, open_barrier(expires=time.time() - 5)), "expired"),
    ("forged", lambda: sign_command(Ed25519PrivateKey.generate(), open_barrier()), "bad signature"),
    ("unsigned", lambda: canonical(open_barrier(nonce="n1", expires=time.time() + 60)), "unsigned"),
    ("tampered", lambda: sign_command(PLATFORM_KEY, open_barrier()).replace(b'"in1"', b'"in2"'), "bad signature"),
    ("other device", lambda: sign_command(PLATFORM_KEY, open_barrier(device_id="21010200001210000002")),
     "for device"),
    ("unknown lane", lambda: sign_command(PLATFORM_KEY, open_barrier(args={"lane": "out9"})), "unknown lane"),
    ("unknown command", lambda: sign_command(PLATFORM_KEY, {"command": "self_destruct", "device_id": DEVICE}),
     "unknown command"),
    ("far future", lambda: sign_command(PLATFORM_KEY, open_barrier(), ttl_s=10 * 86400), "too far"),
    ("not json", lambda: b"\xff open sesame", "malformed"),
])
def test_bad_commands_are_refused_and_recorded(handler, store, case, payload, reason):
    reply = handler.handle(payload())
    assert not reply["accepted"] and reason in reply["reason"], case
    assert handler.calls == []
    [record] = store.records("command")
    assert record.data["accepted"] is False and reason in record.data["reason"]


def test_without_a_key_every_command_is_refused(store):
    calls = []
    bus = Bus()
    bus.subscribe(busmod.BARRIER_OPEN, lambda **kw: calls.append(kw))
    h = CommandHandler(store, bus, device_id=DEVICE, public_key=None, lanes=("in1",))
    reply = h.handle(sign_command(PLATFORM_KEY, open_barrier()))
    assert not reply["accepted"] and "no command key" in reply["reason"] and calls == []


def test_drill_and_resync(handler):
    assert handler.handle(sign_command(PLATFORM_KEY, {"command": "drill_start", "device_id": DEVICE,
                                                      "args": {"minutes": 30}}))["accepted"]
    assert handler.handle(sign_command(PLATFORM_KEY, {"command": "drill_end", "device_id": DEVICE}))["accepted"]
    assert handler.handle(sign_command(PLATFORM_KEY, {"command": "resync", "device_id": DEVICE}))["accepted"]
    (k1, start), (k2, end), (k3, _) = handler.calls
    assert (k1, start["on"], start["source"]) == ("drill", True, "command") and start["until"] > time.time()
    assert (k2, end["on"]) == ("drill", False) and k3 == "resync"


def test_downlink_through_the_broker(setup, tmp_path):  # noqa: F811
    key_file = tmp_path / "keys" / "command.pub"
    key_file.parent.mkdir(exist_ok=True)
    key_file.write_bytes(public_pem(PLATFORM_KEY))
    topics = Topics("gate", SITE, DEVICE)
    with Mosquitto() as broker, Subscriber(broker.port, "gate/#") as sub:
        cfg, store = setup(broker.port)
        assert cfg.mqtt.command_key_file == str(key_file)
        # retained before the device connects: applied on connect
        sub.client.publish(topics.config, sign_document(PLATFORM_KEY, {
            "version": 3, "settings": {"mqtt.health_interval_s": 30, "decisions.unknown": "deny"}}),
            qos=1, retain=True)
        sub.client.publish(topics.lists, sign_document(PLATFORM_KEY, {"mode": "snapshot", "version": 5, "lists": {}}),
                           qos=1, retain=True)
        bus = Bus()
        opened = []
        bus.subscribe(busmod.BARRIER_OPEN, lambda **kw: opened.append(kw))
        sync = SyncSubsystem(SimpleNamespace(config=cfg, store=store, bus=bus), backoff_start=0.1, backoff_max=0.4)
        sync.start()
        try:
            command = sign_command(PLATFORM_KEY, open_barrier())
            assert sub.wait_for(lambda m: any(t == topics.availability and p == b"online" for t, p, _ in m))
            sub.client.publish(topics.commands, command, qos=1)
            sub.client.publish(topics.commands, command, qos=1)   # replayed
            sub.client.publish(topics.commands, json.dumps(open_barrier()).encode(), qos=1)   # unsigned
            assert sub.wait_for(lambda m: sum(t == topics.command_reply for t, _, _ in m) == 3)
            replies = [json.loads(p) for t, p, _ in sub.messages if t == topics.command_reply]
            assert [r["accepted"] for r in replies] == [True, False, False]
            assert replies[1]["reason"].startswith("replayed") and replies[2]["reason"] == "unsigned"
            assert len(opened) == 1 and opened[0]["cause"] == "command"
            assert store.state_get("remote_config")["version"] == 3
            assert store.state_get("remote_config")["settings"]["decisions.unknown"] == "deny"
            # an older or badly signed config is not applied
            sub.client.publish(topics.config, sign_document(PLATFORM_KEY, {"version": 2, "settings": {}}),
                               qos=1, retain=True)
            sub.client.publish(topics.config, sign_document(Ed25519PrivateKey.generate(), {
                "version": 9, "settings": {"log.level": "debug"}}), qos=1, retain=True)
            sub.client.publish(topics.config, sign_document(PLATFORM_KEY, {
                "version": 10, "settings": {"mqtt.url": "mqtt://evil:1883"}}), qos=1, retain=True)
            assert sub.wait_for(lambda m: any(t == topics.status and json.loads(p).get("config_refused")
                                              and "not settable" in json.loads(p)["config_refused"]
                                              for t, p, _ in m))
            assert store.state_get("remote_config")["version"] == 3
            status = [json.loads(p) for t, p, _ in sub.messages if t == topics.status][-1]
            assert status["config_version"] == 3
            lists = store.state_get("downlink.lists")
            try:
                import agent.lists  # noqa: F401
            except ImportError:
                assert "not supported" in lists["refused"] and lists.get("version") is None
            else:
                assert lists["version"] == 5
        finally:
            sync.stop()


def test_platform_settings_are_laid_over_the_file_at_start(config_file):
    from agent import config as configmod
    from agent.gate import Gate
    from agent.privacy import Sealer, load_key
    from agent.store import open_store
    config = configmod.load(config_file())
    store = open_store(config, Sealer(load_key(config.privacy.key_file)))
    store.state_set("remote_config", {"version": 7, "settings": {"decisions.unknown": "deny",
                                                                 "alarm.siren_s": 12.5}})
    store.close()
    gate = Gate(configmod.load(config_file()))
    try:
        assert gate.config.decisions.unknown == "deny"
        assert gate.config.alarm.siren_s == 12.5
        assert gate.config.remote_version == 7
    finally:
        gate.store.close()
    assert configmod.load(config_file()).remote_version is None
