"""One-key alarm buttons on MockFactory pins, driven from the tests."""
from __future__ import annotations

import contextlib
import sqlite3
import threading
import time

import pytest

from agent import bus as topics
from agent.alarm import Drill, parse_window
from agent.debounce import PressDetector
from agent.config import load
from agent.gate import Gate
from agent.store import Store
from conftest import run_cli
from damage import card_stalled
from gpio_rig import GPIO_ONLY, ClosedContactPin, Recorder, make_gate, release, subsystem, wait_for
from hil.broker import Mosquitto, Subscriber

ALARM = """
[alarm]
siren = { pin = 24 }
ack_lamp = { pin = 25 }
drill_lamp = { pin = 6 }
siren_s = 60

[[alarm.buttons]]
name = "b1"
location = "gatehouse desk"
pin = 23

[[alarm.buttons]]
name = "b2"
location = "1F cashier"
pin = 16
wiring = "nc"
tamper_s = 5
"""
NO_PIN, NC_PIN, SIREN, ACK, DRILL_LAMP = 23, 16, 24, 25, 6


@pytest.fixture
def gate(config_file, factory):
    g = make_gate(config_file(ALARM), factory)
    g.start()
    yield g
    g.stop()


def alarms(gate):
    return gate.store.records("alarm")


def pin_on(factory, pin) -> bool:
    return bool(factory.pin(pin).state)


def press(factory, pin=NO_PIN):
    factory.pin(pin).drive_low()


def release_button(factory, pin=NO_PIN):
    factory.pin(pin).drive_high()


def test_press_sounds_the_siren_then_stores_an_alarm(gate, factory, monkeypatch):
    """The siren does not wait for the write: an fsync on a busy SD card can take a second."""
    real_put, siren_when_written = gate.store.put, []

    def put(record):
        siren_when_written.append(pin_on(factory, SIREN))
        return real_put(record)
    monkeypatch.setattr(gate.store, "put", put)
    assert not pin_on(factory, SIREN)
    press(factory)
    (alarm,) = wait_for(lambda: alarms(gate), what="the alarm record")
    assert siren_when_written == [True]
    assert alarm.data["button"] == "b1"
    assert alarm.data["location"] == "gatehouse desk"
    assert alarm.data["drill"] is False
    assert alarm.data["repeat_of"] is None
    wait_for(lambda: pin_on(factory, SIREN), what="the siren")
    assert subsystem(gate, "alarm").health()["state"] == "ok"


def test_press_while_the_broker_is_down_is_first_in_the_outbox_and_survives_restart(
        config_file, factory, tmp_path):
    gate = make_gate(config_file(ALARM), factory)
    gate.start()
    for i in range(5):
        gate.record("fault", {"subsystem": "test", "condition": "filler", "detail": str(i)})
    gate.record("barrier", {"lane": "in1", "action": "open", "cause": "decision"})
    press(factory)
    uuid = wait_for(lambda: alarms(gate), what="the alarm")[0].uuid
    gate.stop()
    release(factory)
    reopened = Store(tmp_path / "data", device_id=gate.config.device.id, site="test-site")
    try:
        first = reopened.pending(limit=1)[0]
        assert (first.kind, first.uuid) == ("alarm", uuid)
        assert first.priority == 0
    finally:
        reopened.close()


def test_bounces_inside_the_debounce_window_count_once(gate, factory):
    pin = factory.pin(NO_PIN)
    for _ in range(5):
        pin.drive_low()
        pin.drive_high()
    pin.drive_low()
    wait_for(lambda: alarms(gate))
    time.sleep(0.2)
    assert len(alarms(gate)) == 1


def test_each_distinct_press_is_a_new_alarm_marked_as_a_repeat(gate, factory):
    press(factory)
    first = wait_for(lambda: alarms(gate))[0]
    release_button(factory)
    time.sleep(0.1)  # released for longer than debounce_s (0.05)
    press(factory)
    newest = wait_for(lambda: len(alarms(gate)) == 2 and alarms(gate))[0]
    assert newest.uuid != first.uuid
    assert newest.data["repeat_of"] == first.uuid
    assert newest.data["press"] == 2


def test_a_held_button_is_one_alarm_even_with_glitches(gate, factory):
    pin = factory.pin(NO_PIN)
    pin.drive_low()
    wait_for(lambda: alarms(gate))
    time.sleep(0.3)  # the panel's timer thread runs while it is held
    pin.drive_high()  # a glitch of microseconds while held
    pin.drive_low()
    time.sleep(0.1)
    assert len(alarms(gate)) == 1


def test_press_detector_rules():
    detector = PressDetector(0.05)
    assert detector.edge(True, 10.0)          # the first edge counts at once
    assert not detector.edge(False, 10.002)   # bounce on press
    assert not detector.edge(True, 10.003)
    assert not detector.edge(True, 10.004)    # same level twice: not an edge
    assert not detector.edge(False, 12.0)     # release
    assert not detector.edge(True, 12.01)     # released 10 ms: a release bounce
    assert not detector.edge(False, 13.0)
    assert detector.edge(True, 13.2)          # released 200 ms: a new press
    found_pressed = PressDetector(0.05, pressed=True)
    assert not found_pressed.edge(True, 1.0)
    assert not found_pressed.edge(False, 2.0)
    assert found_pressed.edge(True, 3.0)


def test_nc_button_cut_wire_is_tamper_then_restored(gate, factory):
    panel = subsystem(gate, "alarm")
    factory.pin(NC_PIN).drive_high()  # the NC contact opens: a press, or a cut
    (alarm,) = wait_for(lambda: alarms(gate), what="the alarm of the opening")
    assert alarm.data["button"] == "b2" and alarm.data["wiring"] == "nc"
    panel.tick(time.monotonic() + 1)  # open 1 s: still a press, tamper_s is 5
    assert gate.store.records("tamper") == []
    panel.tick(time.monotonic() + 6)
    (cut,) = gate.store.records("tamper")
    assert (cut.data["condition"], cut.data["button"]) == ("cut", "b2")
    assert panel.health()["state"] == "degraded"
    assert "b2 wire cut" in panel.health()["detail"]
    factory.pin(NC_PIN).drive_low()  # repaired
    wait_for(lambda: len(gate.store.records("tamper")) == 2, what="the restored record")
    assert gate.store.records("tamper")[0].data["condition"] == "restored"
    assert panel.health()["state"] == "ok"
    assert len(alarms(gate)) == 1


def test_button_found_pressed_at_start_is_tamper_not_alarm(config_file, factory):
    gate = make_gate(config_file(ALARM), factory)
    factory.pin(NO_PIN, pin_class=ClosedContactPin)
    gate.start()
    try:
        (tamper,) = gate.store.records("tamper")
        assert tamper.data["condition"] == "active_at_start"
        assert tamper.data["button"] == "b1"
        assert alarms(gate) == []
        release_button(factory)
        time.sleep(0.1)
        press(factory)
        wait_for(lambda: alarms(gate), what="the alarm after a release")
    finally:
        gate.stop()


def test_alarm_not_stored_is_kept_retried_and_the_siren_still_sounds(gate, factory, monkeypatch):
    real_put = gate.store.put
    fail = {"left": 1}

    def failing_put(record):
        if record.kind == "alarm" and fail["left"]:
            fail["left"] -= 1
            raise OSError("disk I/O error (simulated)")
        return real_put(record)
    monkeypatch.setattr(gate.store, "put", failing_put)
    press(factory)
    assert pin_on(factory, SIREN)
    (alarm,) = wait_for(lambda: alarms(gate), what="the retried alarm")
    assert alarm.data["button"] == "b1"
    wait_for(lambda: subsystem(gate, "alarm").health()["state"] == "ok")


def test_a_press_is_sent_from_memory_while_a_retried_write_is_stuck(gate, factory, monkeypatch):
    """The retry of a refused alarm hangs on the stalled card; the next press must still be
    handed to the sync at once, not after the retry's busy timeout."""
    real_put, refusals, retrying = gate.store.put, {"left": 1}, threading.Event()

    def put(record):
        if record.kind == "alarm" and refusals["left"]:
            refusals["left"] -= 1
            raise OSError("disk I/O error (simulated)")
        retrying.set()
        return real_put(record)
    monkeypatch.setattr(gate.store, "put", put)
    handed = Recorder(gate.bus, topics.ALARM_UNSTORED)
    with card_stalled(gate.store.path):
        press(factory)                                     # refused: kept in memory, retried
        assert retrying.wait(5), "the refused alarm was not retried"
        factory.pin(NC_PIN).drive_high()     # the edge thread, as on a Pi: it must not be held
        second = wait_for(lambda: [e["record"] for e in handed.events
                                   if e["record"].data["button"] == "b2"], 5,
                          "the second alarm handed to the sync while the retry is stuck")[0]
        assert not alarms(gate)
    stored = wait_for(lambda: len(alarms(gate)) == 2 and alarms(gate), 10,
                      "both alarms stored once the card is back")
    assert {a.data["button"]: a.uuid for a in stored}["b2"] == second.uuid
    wait_for(lambda: subsystem(gate, "alarm").health()["state"] == "ok")


def test_edges_are_seen_while_the_card_stalls_the_alarm_writes(gate, factory):
    """On a Pi one thread sees every contact: an alarm write stuck on a stalled card must not
    keep it from the next button's press, nor either alarm from the sync."""
    handed, pressed = Recorder(gate.bus, topics.ALARM_UNSTORED), threading.Event()

    def edge_thread():
        press(factory)
        factory.pin(NC_PIN).drive_high()
        pressed.set()
    with card_stalled(gate.store.path):
        threading.Thread(target=edge_thread, daemon=True).start()
        assert pressed.wait(3), "the edge thread waited for the store"
        buttons = wait_for(lambda: {e["record"].data["button"] for e in handed.events} >= {"b1", "b2"}
                           and {e["record"].data["button"] for e in handed.events}, 3,
                           "both alarms handed to the sync while their writes wait")
        assert buttons == {"b1", "b2"} and not alarms(gate)
    wait_for(lambda: len(alarms(gate)) == 2, 10, "both alarms stored once the card is back")


def test_a_press_while_the_siren_goes_off_leaves_it_sounding(gate, factory, monkeypatch):
    panel = subsystem(gate, "alarm")
    press(factory)
    wait_for(lambda: alarms(gate), what="the first alarm")
    real_off, pressing = panel.siren.off, []

    def off():  # a second button pressed just as the siren's time runs out
        if not pressing:
            pressing.append(threading.Thread(target=factory.pin(NC_PIN).drive_high, daemon=True))
            pressing[0].start()
            pressing[0].join(0.5)
        real_off()
    monkeypatch.setattr(panel.siren, "off", off)
    panel.send_round(time.monotonic() + gate.config.alarm.siren_s + 1)
    pressing[0].join(5)
    wait_for(lambda: len(alarms(gate)) == 2, what="the second alarm")
    assert pin_on(factory, SIREN), "the siren went off after a press"


@contextlib.contextmanager
def gate_with_platform(config_file, factory):
    """A gate with the GPIO and sync areas, started, against a real broker; (gate, subscriber)."""
    with Mosquitto() as broker, Subscriber(broker.port, "gate/#") as platform:
        config = config_file(ALARM).read_text().replace("127.0.0.1:1883", f"127.0.0.1:{broker.port}")
        (path := config_file()).write_text(config)
        gate = Gate(load(path), pin_factory=factory, simulated=True).build(
            areas=GPIO_ONLY + [("agent.sync", False, "sync")])
        gate.start()
        try:
            wait_for(lambda: subsystem(gate, "sync").health().get("connected"), 10, "the broker")
            yield gate, platform
        finally:
            gate.stop()


def alarms_at(platform) -> list[dict]:
    return [r for r in platform.records() if r["kind"] == "alarm"]


def test_an_alarm_whose_write_stalls_reaches_the_platform_from_memory(config_file, factory, monkeypatch):
    """An SD card can stall a commit for seconds; the platform must have the alarm within 2 s."""
    with gate_with_platform(config_file, factory) as (gate, platform):
        real_put, written = gate.store.put, threading.Event()

        def stalled_put(record):
            time.sleep(3)
            real_put(record)
            written.set()
        monkeypatch.setattr(gate.store, "put", stalled_put)
        threading.Thread(target=press, args=(factory,), daemon=True).start()
        (alarm,) = wait_for(lambda: alarms_at(platform), 2, "the alarm at the broker")
        assert alarm["seq"] is None and not written.is_set()
        wait_for(lambda: pin_on(factory, ACK), what="the ack lamp")
        first, again = wait_for(lambda: alarms_at(platform)[1:] and alarms_at(platform), 5,
                                "the stored alarm sent again")
        assert again["uuid"] == alarm["uuid"] and again["seq"] == alarms(gate)[0].seq
        assert subsystem(gate, "alarm").health()["state"] == "ok"


def test_an_alarm_the_store_refuses_reaches_the_platform_from_memory(config_file, factory, monkeypatch):
    """A failing store (SD card errors, a read-only remount) must not keep the alarm from the
    platform: it goes from memory at once, and again from the outbox once stored."""
    with gate_with_platform(config_file, factory) as (gate, platform):
        broken = sqlite3.OperationalError("disk I/O error")

        def refuse(*args, **kwargs):
            raise broken
        real_put, real_pending = gate.store.put, gate.store.pending
        monkeypatch.setattr(gate.store, "put", refuse)
        monkeypatch.setattr(gate.store, "pending", refuse)
        press(factory)
        assert pin_on(factory, SIREN)
        (alarm,) = wait_for(lambda: alarms_at(platform), 5, "the alarm at the broker")
        assert alarm["seq"] is None and alarm["data"]["button"] == "b1"
        wait_for(lambda: pin_on(factory, ACK), what="the ack lamp")
        health = subsystem(gate, "alarm").health()
        assert health["state"] == "degraded"
        assert "1 alarm(s) not stored yet (1 of them confirmed by the platform" in health["detail"]
        wait_for(lambda: "cannot read the outbox: disk I/O error"
                 in subsystem(gate, "sync").health()["detail"], what="the sync's report")
        assert not alarms(gate)

        monkeypatch.setattr(gate.store, "put", real_put)
        monkeypatch.setattr(gate.store, "pending", real_pending)
        (stored,) = wait_for(lambda: alarms(gate), what="the alarm stored late")
        assert stored.uuid == alarm["uuid"]
        first, again = wait_for(lambda: alarms_at(platform)[1:] and alarms_at(platform), 5,
                                "the stored alarm sent again")
        assert again["uuid"] == alarm["uuid"] and again["seq"] == stored.seq
        wait_for(lambda: subsystem(gate, "alarm").health()["state"] == "ok")
        wait_for(lambda: not gate.store.has_unsent(0), what="the alarm marked sent in the outbox")


def test_ack_lamp_lights_when_the_platform_confirms_the_alarm(gate, factory):
    other = gate.record("fault", {"subsystem": "x", "condition": "y", "detail": "z"})
    press(factory)
    alarm = wait_for(lambda: alarms(gate))[0]
    gate.store.mark_sent([other.uuid])
    assert not pin_on(factory, ACK)
    gate.store.mark_sent([alarm.uuid])
    assert pin_on(factory, ACK)
    panel = subsystem(gate, "alarm")
    panel.send_round(time.monotonic() + gate.config.alarm.ack_lamp_s + 1)
    assert not pin_on(factory, ACK)


def test_ack_lamp_for_an_alarm_stored_before_a_restart(config_file, factory):
    gate = make_gate(config_file(ALARM), factory)
    uuid = gate.record("alarm", {"button": "b1", "location": "x", "drill": False,
                                 "pressed_at": "2026-01-01T00:00:00+08:00"}).uuid
    gate.start()
    try:
        gate.store.mark_sent([uuid])
        assert pin_on(factory, ACK)
    finally:
        gate.stop()


def test_drill_from_the_bus_marks_alarms_and_lights_the_lamp(gate, factory):
    assert not pin_on(factory, DRILL_LAMP)
    gate.bus.publish(topics.DRILL, on=True, source="command", until=time.time() + 600)
    assert pin_on(factory, DRILL_LAMP)
    press(factory)
    alarm = wait_for(lambda: alarms(gate))[0]
    assert alarm.data["drill"] is True
    assert alarm.data["drill_source"] == "command"
    assert gate.store.state_get("drill")["on"] is True
    gate.bus.publish(topics.DRILL, on=False, source="command", until=None)
    assert not pin_on(factory, DRILL_LAMP)
    release_button(factory)
    time.sleep(0.1)
    press(factory)
    assert wait_for(lambda: len(alarms(gate)) == 2 and alarms(gate))[0].data["drill"] is False


def test_drill_from_the_cli_is_picked_up_by_the_running_agent(gate, factory, config_file):
    path = config_file(ALARM)
    result = run_cli("--config", path, "drill", "on", "--minutes", "5", "--wait", "3")
    assert result.returncode == 0, result.stderr
    assert "drill mode ON" in result.stdout
    assert pin_on(factory, DRILL_LAMP)
    press(factory)
    assert wait_for(lambda: alarms(gate))[0].data["drill"] is True
    status = run_cli("--config", path, "drill", "status")
    assert "drill mode: ON (cli" in status.stdout
    result = run_cli("--config", path, "drill", "off", "--wait", "3")
    assert result.returncode == 0, result.stderr
    assert not pin_on(factory, DRILL_LAMP)
    again = run_cli("--config", path, "drill", "off", "--wait", "3")  # already off
    assert "the agent confirmed: drill mode off" in again.stdout


def test_drill_cli_without_a_running_agent_says_so(config_file):
    path = config_file(ALARM)
    result = run_cli("--config", path, "drill", "on", "--wait", "0.3")
    assert result.returncode == 0, result.stderr
    assert "has not picked it up" in result.stdout
    bad = run_cli("--config", path, "drill", "on", "--minutes", "0")
    assert bad.returncode == 2
    assert "--minutes" in bad.stderr


def test_drill_schedule_window_marks_alarms(config_file, factory):
    # the window is in the device's zone (Asia/Shanghai)
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo
    start = (datetime.now(ZoneInfo("Asia/Shanghai")) - timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M")
    gate = make_gate(config_file(ALARM.replace("[alarm]", f'[drills]\nschedule = ["{start}/10"]\n\n[alarm]')),
                     factory)
    gate.start()
    try:
        assert pin_on(factory, DRILL_LAMP)
        press(factory)
        alarm = wait_for(lambda: alarms(gate))[0]
        assert alarm.data["drill"] is True and alarm.data["drill_source"] == "schedule"
    finally:
        gate.stop()


def test_drill_requests_expire_and_are_capped(store):
    drill = Drill(store)
    drill.set(True, "cli", until=1000.0, now=900.0)
    assert drill.state(now=999.0)["on"]
    assert not drill.state(now=1000.0)["on"]
    request = drill.set(True, "command", until=None, now=0.0)
    assert request["until"] == 8 * 3600
    assert parse_window("2026-03-15T10:00/30", "Asia/Shanghai")[1] - \
        parse_window("2026-03-15T10:00/30", "Asia/Shanghai")[0] == 1800
    with pytest.raises(ValueError, match="YYYY-MM-DDTHH:MM/MINUTES"):
        parse_window("2026-03-15 10:00")


def test_the_alarm_path_does_not_wait_for_a_stuck_subscriber(config_file, factory):
    """A camera pipeline stuck in its PRESENCE handler holds up neither GPIO edges nor alarms."""
    import threading
    gate = make_gate(config_file(ALARM + '\n[[lanes]]\nname = "in2"\npresence = { pin = 27 }\n'), factory)
    stuck, entered = threading.Event(), threading.Event()

    def slow_camera(**_):
        entered.set()
        stuck.wait(10)
    gate.bus.subscribe(topics.PRESENCE, slow_camera)
    gate.start()
    try:
        factory.pin(27).drive_low()  # a vehicle: the lane's worker calls the stuck handler
        assert entered.wait(3)
        press(factory)
        wait_for(lambda: alarms(gate), 3, "the alarm, while the presence handler is stuck")
        assert not stuck.is_set()
    finally:
        stuck.set()
        gate.stop()


def test_a_failing_timer_round_degrades_but_keeps_the_buttons(gate, factory, monkeypatch):
    panel = subsystem(gate, "alarm")
    real_add = gate.store.add

    def refusing_add(kind, data, at=None):
        if kind == "tamper":
            raise OSError("database is locked (simulated)")
        return real_add(kind, data, at)
    monkeypatch.setattr(gate.store, "add", refusing_add)
    factory.pin(NC_PIN).drive_high()
    with pytest.raises(OSError):
        panel.tick(time.monotonic() + 6)  # the cut-wire record can't be written
    press(factory)
    wait_for(lambda: {a.data["button"] for a in alarms(gate)} == {"b1", "b2"}, what="both alarms")
    monkeypatch.setattr(gate.store, "add", real_add)
    panel.tick(time.monotonic() + 6)
    assert gate.store.records("tamper")[0].data["condition"] == "cut"


def test_the_timer_thread_survives_a_failing_round(gate, factory, monkeypatch):
    panel = subsystem(gate, "alarm")

    def broken_tick(now):
        raise RuntimeError("boom")
    monkeypatch.setattr(panel, "tick", broken_tick)
    health = wait_for(lambda: panel.health()["state"] == "degraded" and panel.health())
    assert "timer round failed: boom" in health["detail"]
    monkeypatch.undo()
    wait_for(lambda: panel.health()["state"] == "ok", what="recovery")
    press(factory)
    wait_for(lambda: alarms(gate), what="the alarm")


from hypothesis import given, strategies as st  # noqa: E402


@given(st.lists(st.floats(min_value=0.0001, max_value=0.049), min_size=1, max_size=40))
def test_any_chatter_shorter_than_debounce_is_one_press(gaps):
    """However a contact chatters, releases shorter than debounce_s never make a second press."""
    detector, t, pressed, presses = PressDetector(0.05), 0.0, True, 0
    presses += detector.edge(True, t)
    for gap in gaps:
        t += gap
        pressed = not pressed
        presses += detector.edge(pressed, t)
    assert presses == 1


@given(st.lists(st.tuples(st.floats(min_value=0.0, max_value=1.0),
                          st.floats(min_value=0.051, max_value=1.0)), max_size=40))
def test_distinct_presses_are_counted_exactly(holds_and_releases):
    """Clean presses separated by releases longer than debounce_s each count once."""
    detector, t, counted = PressDetector(0.05), 0.0, 0
    for hold, released in holds_and_releases:
        counted += detector.edge(True, t)
        t += hold
        detector.edge(False, t)
        t += released
    assert counted == len(holds_and_releases)


def test_a_press_while_the_buttons_are_being_attached_is_stored(config_file, factory, monkeypatch):
    """Attaching reads and writes the drill state, seconds on a stalled card: a press meanwhile
    must reach the store worker of this start, not a queue no worker reads."""
    real_refresh, pressed = Drill.refresh, []

    def refresh_with_a_press(drill, *args, **kwargs):
        if not pressed:
            pressed.append(True)
            press(factory)
        return real_refresh(drill, *args, **kwargs)
    monkeypatch.setattr(Drill, "refresh", refresh_with_a_press)
    gate = make_gate(config_file(ALARM), factory)
    gate.start()
    try:
        assert pressed
        (alarm,) = wait_for(lambda: alarms(gate), what="the alarm pressed while attaching")
        assert alarm.data["button"] == "b1"
        wait_for(lambda: subsystem(gate, "alarm").health()["state"] == "ok")
    finally:
        gate.stop()


def test_a_press_after_the_store_worker_ended_is_stored_by_stop(config_file, factory):
    """The buttons stay attached until stop() lets them go: a press after the worker emptied
    its queue is written by stop itself, not left in memory as the process ends."""
    gate = make_gate(config_file(ALARM), factory)
    gate.start()
    panel = subsystem(gate, "alarm")
    panel._stop.set()
    panel._to_store.put(None)
    panel._thread.join(5)
    press(factory)                       # its worker is gone
    path = gate.store.path
    gate.stop()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*) FROM records WHERE kind = 'alarm'").fetchone() == (1,)


def test_an_alarm_write_held_up_shows_in_health(gate, factory):
    with card_stalled(gate.store.path):
        press(factory)
        health = wait_for(lambda: "held up" in subsystem(gate, "alarm").health()["detail"]
                          and subsystem(gate, "alarm").health(), 3, "the held-up write in health")
        assert health["state"] == "degraded"
    wait_for(lambda: subsystem(gate, "alarm").health()["state"] == "ok", 10)
