"""The GPIO driver: outputs across crashes and restarts, input polarity, pin map errors."""
from __future__ import annotations

import pytest

from agent import bus as topics
from agent.config import ConfigError, load
from conftest import MINIMAL
from drivers.gpio import GpioPins, build
from gpio_rig import make_gate, subsystem, wait_for

PINS = """
[alarm]
siren = { pin = 24 }
ack_lamp = { pin = 25 }
drill_lamp = { pin = 6 }

[[alarm.buttons]]
name = "b1"
location = "gatehouse desk"
pin = 23
"""
LANE = """
[[lanes]]
name = "in1"
barrier = { pin = 17 }
barrier_mode = "hold"
guard_lamp = { pin = 5 }
"""
OUTPUTS = (17, 5, 24, 25, 6)
BASE = MINIMAL.replace('[[lanes]]\nname = "in1"\n', "")


def energised(factory, pins=OUTPUTS) -> dict:
    return {pin: bool(factory.pin(pin).state) for pin in pins}


def left_energised(factory, pins) -> None:
    """What a killed agent leaves behind: the pins still driven high, nobody holding them."""
    for number in pins:
        pin = factory.pin(number)
        pin.function = "output"
        pin.state = 1


def test_build_gives_the_alarm_panel_and_the_lanes(config_file, factory):
    gate = make_gate(config_file(LANE + PINS, base=BASE), factory)
    assert [s.name for s in build(gate)] == ["alarm", "lanes"]
    gate.start()
    try:
        assert {name: info["state"] for name, info in gate.supervisor.states().items()} == \
            {"alarm": "starting", "lanes": "starting"}
        gate.supervisor.check()
        assert gate.supervisor.states()["alarm"]["state"] == "ok"
        assert gate.supervisor.states()["lanes"]["state"] == "ok"
    finally:
        gate.stop()


def test_outputs_left_energised_by_a_crash_are_driven_off_at_start_and_recorded(config_file, factory):
    left_energised(factory, (17, 24))
    assert energised(factory)[17] and energised(factory)[24]
    gate = make_gate(config_file(LANE + PINS, base=BASE), factory)
    gate.start()
    try:
        assert not any(energised(factory).values())
        faults = {f.data["subsystem"]: f.data for f in gate.store.records("fault")}
        assert faults["lanes"]["condition"] == "outputs_found_active"
        assert "lanes[0].barrier" in faults["lanes"]["detail"]
        assert "alarm.siren" in faults["alarm"]["detail"]
    finally:
        gate.stop()


def test_clean_start_records_nothing_found(config_file, factory):
    gate = make_gate(config_file(LANE + PINS, base=BASE), factory)
    gate.start()
    try:
        assert gate.store.records("fault") == []
        assert not any(energised(factory).values())
    finally:
        gate.stop()


def test_stop_drives_every_output_off_and_records_the_released_barrier(config_file, factory):
    gate = make_gate(config_file(LANE + PINS, base=BASE), factory)
    gate.start()
    gate.bus.publish(topics.BARRIER_OPEN, lane="in1", cause="decision")
    gate.bus.publish(topics.GUARD_ATTENTION, lane="in1", reason="ask")
    gate.bus.publish(topics.DRILL, on=True, source="command", until=None)
    factory.pin(23).drive_low()  # an alarm: siren on
    wait_for(lambda: all(energised(factory, (17, 5, 24, 6)).values()), what="everything on")
    gate.stop()
    assert not any(energised(factory).values())
    last = gate.store.records("barrier")[0]
    assert (last.data["action"], last.data["cause"]) == ("close", "stop")


def test_a_restart_by_the_supervisor_reopens_the_pins(config_file, factory):
    gate = make_gate(config_file(LANE + PINS, base=BASE), factory)
    gate.start()
    try:
        for name in ("alarm", "lanes"):
            part = subsystem(gate, name)
            part.stop()
            assert part.health()["state"] == "stopped"
            part.start()  # no GPIOPinInUse: the first run released its pins
        factory.pin(23).drive_low()
        wait_for(lambda: gate.store.records("alarm"), what="an alarm after the restart")
    finally:
        gate.stop()


def test_a_pin_that_cannot_be_opened_fails_start_and_releases_the_others(config_file, factory):
    gate = make_gate(config_file(LANE + PINS, base=BASE), factory)
    blocker = GpioPins(factory)
    blocker.output("someone else", type("Spec", (), {"pin": 25, "active_high": True})())
    panel = subsystem(gate, "alarm")
    with pytest.raises(Exception):
        panel.start()
    blocker.close()
    panel.start()  # siren and drill lamp were released by the failed start
    panel.stop()
    gate.store.close()


@pytest.mark.parametrize("pull_up, active_high, level_when_active", [
    (True, False, 0), (True, True, 1), (False, True, 1), (False, False, 0)])
def test_input_polarity_follows_pull_up_and_active_high(factory, pull_up, active_high, level_when_active):
    spec = type("Spec", (), {"pin": 20, "pull_up": pull_up, "active_high": active_high})()
    pins = GpioPins(factory)
    contact = pins.input("probe", spec)
    edges = []
    contact.when_changed = lambda active, at: edges.append(active)
    pin = factory.pin(20)
    to_active, to_inactive = (pin.drive_high, pin.drive_low) if level_when_active else \
        (pin.drive_low, pin.drive_high)
    to_inactive()
    edges.clear()
    to_active()
    assert contact.is_active
    to_inactive()
    assert not contact.is_active
    assert edges == [True, False]
    pins.close()


def test_active_low_output(factory):
    spec = type("Spec", (), {"pin": 21, "active_high": False})()
    left_energised(factory, [21])  # high: an active-low board's relay is off
    pins = GpioPins(factory)
    relay = pins.output("relay", spec)
    assert not relay.found_active
    assert factory.pin(21).state == 1
    relay.on()
    assert factory.pin(21).state == 0
    pins.close()
    # on (0), driven inactive (1) before release; the last 0 is MockPWMPin.close() itself
    assert [s.state for s in factory.pin(21).states][-3:] == [0, 1, 0]
    assert factory.pin(21).function == "input"


# --- the pin map in the config -------------------------------------------------------

def problems(config_file, extra, base=MINIMAL) -> str:
    with pytest.raises(ConfigError) as info:
        load(config_file(extra, base=base))
    return str(info.value)


def test_two_devices_on_one_pin_names_both(config_file):
    text = problems(config_file, '[[lanes]]\nname = "in2"\npresence = { pin = 23 }\n' + PINS)
    assert "alarm.buttons[0].pin = 23: already used by lanes[1].presence (lane 'in2' presence)" in text
    assert "alarm button 'b1'" in text


def test_a_pin_that_does_not_exist(config_file):
    text = problems(config_file, '[[lanes]]\nname = "in2"\nbarrier = { pin = 28 }\n')
    assert "lanes[1].barrier.pin = 28: expected an integer from 0 to 27" in text


def test_button_names_must_be_unique(config_file):
    text = problems(config_file, PINS + '\n[[alarm.buttons]]\nname = "b1"\nlocation = "x"\npin = 26\n')
    assert "alarm.buttons.name = 'b1': used by more than one button" in text


def test_drill_schedule_format_is_checked(config_file):
    text = problems(config_file, '[drills]\nschedule = ["2026-03-15 10:00"]\n')
    assert "drills.schedule" in text and "YYYY-MM-DDTHH:MM/MINUTES" in text
