"""Barrier relays, confirm inputs, presence loops, guard button and lamp, on MockFactory pins."""
from __future__ import annotations

import time

import pytest

from agent import bus as topics
from agent.config import ConfigError, load
from agent.lanes import Lane
from conftest import MINIMAL
from gpio_rig import Recorder, make_gate, mock_factory, release, subsystem, wait_for

IN1_RELAY, IN1_CONFIRM, IN1_PRESENCE, IN1_MANUAL, IN1_LAMP = 17, 4, 27, 22, 5
OUT1_RELAY, OUT1_CONFIRM = 18, 12

LANES = """
[[lanes]]
name = "in1"
barrier = { pin = 17 }
barrier_confirm = { pin = 4 }
confirm_timeout_s = 0.5
presence = { pin = 27, debounce_s = 0.2 }
manual_open = { pin = 22 }
guard_lamp = { pin = 5 }
pulse_s = 0.3

[[lanes]]
name = "out1"
barrier = { pin = 18 }
barrier_confirm = { pin = 12 }
barrier_mode = "hold"
hold_s = 1
"""


@pytest.fixture
def make(config_file, factory):
    """A gate with these lanes instead of the conftest's bare 'in1'."""
    base = MINIMAL.replace('[[lanes]]\nname = "in1"\n', "")
    gates = []

    def build(lanes: str = LANES):
        gate = make_gate(config_file(lanes, base=base), factory)
        gates.append(gate)
        return gate
    yield build
    for gate in gates:
        gate.stop()


def on(factory, pin) -> bool:
    return bool(factory.pin(pin).state)


def barriers(gate):
    return list(reversed(gate.store.records("barrier")))


# --- the state machine, driven with explicit times --------------------------------

class FakeStore:
    def __init__(self):
        self.records = []

    def add(self, kind, data):
        from agent.records import new_record
        record = new_record(kind, data, device_id="d", site="s")
        self.records.append(record)
        return record


def test_pulse_mode_pulses_for_pulse_s_exactly(make, factory):
    gate = make()
    gate.start()
    gate.bus.publish(topics.BARRIER_OPEN, lane="in1", cause="decision", ref="r-1")
    wait_for(lambda: on(factory, IN1_RELAY), what="the relay to pull in")
    (record,) = barriers(gate)
    assert (record.data["action"], record.data["cause"], record.data["ref"]) == ("open", "decision", "r-1")
    assert record.data["relay"] == "energised"
    wait_for(lambda: not on(factory, IN1_RELAY), what="the end of the pulse")
    pulse = factory.pin(IN1_RELAY).states[-1].timestamp  # time spent energised
    assert pulse >= gate.config.lanes[0].pulse_s


class FakeClock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


def test_lane_state_machine_times(tmp_path):
    from agent.config import parse
    cfg = parse('[device]\nid = "21010200001210000001"\nsite = "s"\n[[lanes]]\nname = "in1"\n'
                'pulse_s = 0.5\nconfirm_timeout_s = 2\n[lanes.barrier]\npin = 17\n'
                '[lanes.barrier_confirm]\npin = 4\n', check_files=False)
    factory = mock_factory()
    try:
        from drivers.gpio import GpioPins
        pins = GpioPins(factory)
        spec = cfg.lanes[0]
        store, published, clock = FakeStore(), [], FakeClock(100.0)
        lane = Lane(spec, relay=pins.output("relay", spec.barrier),
                    confirm=pins.input("confirm", spec.barrier_confirm),
                    record=store.add, publish=lambda topic, **p: published.append((topic, p)),
                    clock=clock)
        lane.open("decision")
        assert on(factory, 17)
        lane.tick(100.49)
        assert on(factory, 17)
        lane.tick(100.5)
        assert not on(factory, 17)
        lane.tick(101.99)
        assert lane.fault is None
        lane.tick(102.0)
        assert "did not confirm" in lane.fault
        assert store.records[-1].kind == "fault"
        assert published == [(topics.GUARD_ATTENTION, {"lane": "in1", "reason": "fault",
                                                       "ref": store.records[-1].uuid})]
        # the next opening that confirms clears the fault
        clock.t = 200.0
        lane.open("decision")
        lane.on_confirm(True, 200.4)
        assert lane.fault is None and lane.confirm_by is None
        pins.close()
    finally:
        release(factory)


def test_confirm_timeout_raises_a_fault_and_degrades_health(make, factory):
    gate = make()
    gate.start()
    attention = Recorder(gate.bus, topics.GUARD_ATTENTION)
    gate.bus.publish(topics.BARRIER_OPEN, lane="in1", cause="command", ref=None)
    (fault,) = wait_for(lambda: gate.store.records("fault"), what="the fault record")
    assert fault.data["condition"] == "barrier_not_confirmed"
    assert fault.data["lane"] == "in1"
    assert subsystem(gate, "lanes").health()["state"] == "degraded"
    assert attention.events[0]["reason"] == "fault"
    wait_for(lambda: on(factory, IN1_LAMP), what="the guard lamp for the fault")


def test_confirmed_opening_raises_no_fault(make, factory):
    gate = make()
    gate.start()
    gate.bus.publish(topics.BARRIER_OPEN, lane="in1", cause="decision")
    wait_for(lambda: on(factory, IN1_RELAY))
    factory.pin(IN1_CONFIRM).drive_low()  # the position switch closes: barrier up
    time.sleep(0.8)  # longer than confirm_timeout_s
    assert gate.store.records("fault") == []
    assert subsystem(gate, "lanes").health()["state"] == "ok"


def test_hold_mode_holds_then_releases_after_hold_s(make, factory):
    gate = make()
    gate.start()
    gate.bus.publish(topics.BARRIER_OPEN, lane="out1", cause="decision")
    wait_for(lambda: on(factory, OUT1_RELAY))
    factory.pin(OUT1_CONFIRM).drive_low()
    time.sleep(0.5)
    assert on(factory, OUT1_RELAY), "released before hold_s"
    wait_for(lambda: not on(factory, OUT1_RELAY), timeout=3, what="the hold_s release")
    opened, closed = barriers(gate)
    assert (closed.data["action"], closed.data["cause"]) == ("close", "hold_expired")
    assert closed.data["relay"] == "released"


def test_close_releases_a_held_barrier(make, factory):
    gate = make()
    gate.start()
    gate.bus.publish(topics.BARRIER_OPEN, lane="out1", cause="command")
    wait_for(lambda: on(factory, OUT1_RELAY))
    gate.bus.publish(topics.BARRIER_CLOSE, lane="out1", cause="command")
    wait_for(lambda: not on(factory, OUT1_RELAY))
    assert [r.data["action"] for r in barriers(gate)] == ["open", "close"]


def test_two_lanes_are_independent(make, factory):
    gate = make()
    gate.start()
    gate.bus.publish(topics.BARRIER_OPEN, lane="out1", cause="decision")
    wait_for(lambda: on(factory, OUT1_RELAY))
    assert not on(factory, IN1_RELAY)
    gate.bus.publish(topics.BARRIER_OPEN, lane="in1", cause="decision")
    wait_for(lambda: on(factory, IN1_RELAY))
    wait_for(lambda: not on(factory, IN1_RELAY), what="in1's pulse to end")
    assert on(factory, OUT1_RELAY), "out1's hold ended with in1's pulse"
    factory.pin(OUT1_CONFIRM).drive_low()
    wait_for(lambda: gate.store.records("fault"), what="in1's confirm fault")
    assert [f.data["lane"] for f in gate.store.records("fault")] == ["in1"]
    lanes = subsystem(gate, "lanes").workers
    assert lanes["in1"].lane.fault and not lanes["out1"].lane.fault


def test_manual_open_is_a_guard_override(make, factory):
    gate = make()
    gate.start()
    gate.bus.publish(topics.GUARD_ATTENTION, lane="in1", reason="ask", ref="d-1")
    wait_for(lambda: on(factory, IN1_LAMP), what="the guard lamp")
    pin = factory.pin(IN1_MANUAL)
    pin.drive_low()
    pin.drive_high()
    pin.drive_low()  # bounces: one override
    wait_for(lambda: barriers(gate))
    time.sleep(0.1)
    (record,) = barriers(gate)
    assert (record.data["cause"], record.data["source"]) == ("guard", "manual_open")
    wait_for(lambda: not on(factory, IN1_LAMP), what="the lamp to go out")
    assert any(state.state for state in factory.pin(IN1_RELAY).states), "the barrier never pulsed"


def test_presence_is_published_debounced(make, factory):
    gate = make()
    presence = Recorder(gate.bus, topics.PRESENCE)
    gate.start()
    pin = factory.pin(IN1_PRESENCE)
    pin.drive_low()
    pin.drive_high()
    pin.drive_low()
    wait_for(lambda: presence.events)
    time.sleep(0.3)  # past the 0.2 s window: the chatter settled where it started
    assert presence.events == [{"lane": "in1", "present": True}]
    pin.drive_high()
    wait_for(lambda: len(presence.events) == 2, what="the vehicle leaving")
    assert presence.events[-1] == {"lane": "in1", "present": False}


def test_unknown_lane_on_the_bus_is_ignored(make, factory):
    gate = make()
    gate.start()
    gate.bus.publish(topics.BARRIER_OPEN, lane="nope", cause="decision")
    time.sleep(0.1)
    assert barriers(gate) == []


FAIL_SAFE = """
[[lanes]]
name = "exit"
barrier = { pin = 17 }
barrier_mode = "hold"
fail_mode = "safe"
"""


def test_fail_safe_lane_is_held_closed_while_running_and_opens_on_stop(make, factory):
    gate = make(FAIL_SAFE)
    gate.start()
    wait_for(lambda: on(factory, 17), what="the relay holding the barrier closed")
    (closed,) = barriers(gate)
    assert (closed.data["action"], closed.data["cause"]) == ("close", "start")
    gate.bus.publish(topics.BARRIER_OPEN, lane="exit", cause="decision")
    wait_for(lambda: not on(factory, 17), what="the relay to drop (open)")
    gate.stop()
    assert not on(factory, 17)
    assert barriers(gate)[-1].data["cause"] == "stop"


def test_fail_safe_needs_hold_mode(config_file):
    path = config_file('[[lanes]]\nname = "x"\nbarrier = { pin = 17 }\nfail_mode = "safe"\n')
    with pytest.raises(ConfigError, match=r"lanes\[1\].fail_mode = 'safe': needs barrier_mode = 'hold'"):
        load(path)


from hypothesis import given, strategies as st  # noqa: E402

from agent.debounce import Debounce  # noqa: E402


@given(st.lists(st.tuples(st.booleans(), st.floats(min_value=0.0, max_value=0.5)), max_size=40))
def test_debounce_always_ends_where_the_input_settled(edges):
    """Whatever the chatter, once the input is left alone the reported state is the input's."""
    debounce, t, raw = Debounce(0.2), 0.0, False
    for raw, gap in edges:
        t += gap
        debounce.edge(raw, t)
    while debounce.due is not None:
        t = max(t, debounce.due)
        debounce.settle(t)
    assert debounce.state == raw
