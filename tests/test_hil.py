"""The HIL rig: its control channel, scenario files, verdicts, and the fast scenarios run for real."""
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hil import rig as rigmod
from hil.broker import find_mosquitto
from hil.control import ControlClient, ControlError
from hil.pins import Wiring
from hil.report import junit, table
from hil.rig import FAIL, PASS, SKIP, Check, Result, Rig, Site, first_at_level, records_in, topic_matches
from hil.scenario import SCENARIOS, ScenarioError, discover, parse

from conftest import ROOT, run_cli

needs_mosquitto = pytest.mark.skipif(not find_mosquitto(), reason="mosquitto is not installed")


@pytest.fixture
def agent(config_file, tmp_path):
    """The real agent process, simulated hardware, with the HIL control channel open."""
    sock = tmp_path / "control.sock"
    config = config_file("""
[alarm]
buttons = [{name = "b1", location = "desk", pin = 23}]
""")
    env = dict(os.environ, PYTHONPATH=str(ROOT), GATE_HIL_CONTROL=str(sock))
    proc = subprocess.Popen([sys.executable, "-m", "agent", "--config", str(config), "run", "--simulate"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    client = ControlClient(sock)
    try:
        client.connect(wait_s=20)
        yield proc, client
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def test_control_channel_drives_and_reads_pins_inside_the_agent(agent):
    proc, client = agent
    assert client.call("ping")["pid"] == proc.pid
    before = client.call("read", pin=12)["level"]
    at = client.call("drive", pin=12, level=1 - before)["at"]
    assert client.call("read", pin=12)["level"] == 1 - before
    changes = client.call("history", pin=12)["changes"]
    assert changes[-1][1] == 1 - before
    assert changes[-1][0] >= at and changes[-1][0] - at < 1.0   # same monotonic clock as ours
    assert abs(client.call("ping")["now"] - time.monotonic()) < 1.0


def test_control_channel_refuses_bad_requests_without_hurting_the_agent(agent):
    proc, client = agent
    with pytest.raises(ControlError, match="unknown op 'fly'"):
        client.call("fly")
    with pytest.raises(ControlError, match="KeyError"):
        client.call("drive", pin=12)
    assert client.call("ping")["pid"] == proc.pid


def test_no_control_channel_without_the_environment_variable(config_file, tmp_path):
    config = config_file()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("GATE_HIL_CONTROL", None)
    proc = subprocess.Popen([sys.executable, "-m", "agent", "--config", str(config), "run", "--simulate"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert b"gate-agent running" in out
    assert b"HIL control" not in out
    assert not list(tmp_path.glob("**/*.sock"))


# --- scenario files -----------------------------------------------------------------

def test_every_shipped_scenario_loads_and_says_what_it_needs():
    scenarios = discover()
    names = {s.path.stem for s in scenarios}
    assert {"staff_car", "unknown_car", "visitor_card_and_plate", "watchlist_plate", "alarm_broker_down",
            "alarm_drill", "killed_mid_drain", "reader_unplugged", "camera_lost", "night_traffic",
            "damaged_store"} <= names
    for s in scenarios:
        assert s.description, s.path
        assert s.expects, s.path


@pytest.mark.parametrize("text, message", [
    ('needs = ["gpoi"]\n[[expect]]\nall_synced = true', "needs = 'gpoi': unknown part; known: gpio"),
    ('[[step]]\nat = 1\ndo = "honk"\n[[expect]]\nall_synced = true', "step[0].do = 'honk': expected one of car"),
    ('[[step]]\nat = 1\ndo = "press"\nbuton = "b1"\n[[expect]]\nall_synced = true',
     "step[0].buton: unknown key; allowed here: at, button, do"),
    ('[[step]]\nat = 1\ndo = "car"\n[[expect]]\nall_synced = true', "step[0].plate: missing"),
    ('[[step]]\nat = 2\ndo = "wait"\n[[step]]\nat = 1\ndo = "wait"\n[[expect]]\nall_synced = true',
     "time order"),
    ('[[expect]]\nrecord = "alarm"\nafter = "press"', "expect[0].after = 'press': no step has that id"),
    ('[[expect]]\nrecord = "alarm"\npin = 17', "give exactly one of pin, record"),
    ('[[expect]]\nrecord = "alarm"\nwithin_ms = "2s"', "expect[0].within_ms = '2s': expected an integer"),
    ("", "a scenario needs at least one [[expect]]"),
    ("needs = [", "not valid TOML"),
])
def test_scenario_mistakes_name_file_key_and_what_is_allowed(text, message):
    with pytest.raises(ScenarioError) as info:
        parse(text, Path("bad.toml"))
    assert str(info.value).startswith("bad.toml: ")
    assert message in str(info.value)


def test_scenario_with_parts_not_built_is_skipped_with_the_reason(tmp_path, monkeypatch):
    import hil.scenario as sc
    scenario = parse('needs = ["gpio", "vision"]\n[[expect]]\nall_synced = true', tmp_path / "x.toml")
    monkeypatch.setattr(sc, "module_exists", lambda name: name not in ("drivers.gpio", "drivers.camera"))
    monkeypatch.setattr(sc, "REPO", tmp_path)              # no trained model files here
    result = Rig(scenario).run()
    assert result.status == SKIP
    assert result.reason == ("not built yet: drivers.gpio, drivers.camera, file:models/manifest.json, "
                             "file:models/plate_ocr.onnx, file:models/second/manifest.json, "
                             "file:models/second/plate_ocr.onnx")
    assert "SKIPPED" in table([result]) and "not built yet: drivers.gpio" in table([result])


def test_hil_list_and_unknown_scenario_from_the_cli():
    listed = run_cli("hil", "list")
    assert listed.returncode == 0, listed.stderr
    assert "rig_selfcheck" in listed.stdout and "staff_car" in listed.stdout
    bad = run_cli("hil", "run", "no_such_scenario")
    assert bad.returncode == 2
    assert bad.stderr.startswith("gate-agent: no scenario 'no_such_scenario'; known:")
    assert "Traceback" not in bad.stderr


# --- verdict helpers ------------------------------------------------------------------

def test_first_at_level_measures_from_the_stimulus():
    changes = [(10.0, 0), (10.3, 1), (10.8, 0), (11.5, 1)]
    assert first_at_level(changes, 1, 10.1) == 10.3
    assert first_at_level(changes, 1, 10.4) == 10.4        # already on at the stimulus
    assert first_at_level(changes, 1, 10.9) == 11.5
    assert first_at_level(changes, 1, 12.0) == 12.0
    assert first_at_level([(1.0, 0)], 1, 2.0) is None


def test_records_are_found_in_any_payload_shape():
    one = {"uuid": "a", "kind": "alarm", "data": {}}
    assert records_in(json.dumps(one).encode()) == [one]
    assert records_in(json.dumps([one, one]).encode()) == [one, one]
    assert records_in(json.dumps({"records": [one]}).encode()) == [one]
    assert records_in(b"online") == []
    assert topic_matches("gate/+/+/records/alert", "gate/s/d/records/alert")
    assert not topic_matches("gate/+/+/records/alert", "gate/s/d/records/alarm")
    assert topic_matches("gate/#", "gate/s/d/status")


def test_count_expectation_filters_by_fields_and_bounds_per_vehicle(tmp_path):
    from types import SimpleNamespace
    scenario = parse('[[expect]]\ncount = "plate_read"\nfields = { has_plate = true }\n'
                     'min_per_vehicle = 0.5\nmax_per_vehicle = 1.0\nwithin_ms = 1000', tmp_path / "x.toml")
    expect = scenario.expects[0]
    rig = Rig(scenario)
    rig.vehicles, rig.t_end = 4, 100.0

    def arrived(*has_plate):
        records = [{"uuid": str(i), "kind": "plate_read", "data": {"has_plate": h}} for i, h in enumerate(has_plate)]
        rig.collector = SimpleNamespace(snapshot=lambda: [SimpleNamespace(records=records)])

    arrived(True, False, False, False)
    assert rig._eval_count(expect, 100.5) is None                      # still time
    assert rig._eval_count(expect, 101.5).status == FAIL               # 1 read of 2 needed
    arrived(True, True, False, True)
    assert rig._eval_count(expect, 100.5) is None                      # more may come: a max waits
    check = rig._eval_count(expect, 101.5)
    assert (check.status, check.detail, check.counted) == (PASS, "3 for 4 vehicles (needed 2..4)", True)
    arrived(*[True] * 5)
    assert rig._eval_count(expect, 100.5).status == FAIL               # 5 records for 4 vehicles
    assert "at least 0.5 per vehicle, at most 1 per vehicle plate_read (has_plate=True)" in \
        scenario.expects[0].name


def test_site_pins_know_their_active_levels():
    site = Site(rigmod.merge(rigmod.DEFAULT_SITE, {"alarm": {"buttons": [
        {"name": "b1", "location": "x", "pin": 23}, {"name": "b2", "location": "y", "pin": 16, "wiring": "nc"}]}}))
    assert site.pin("in1.barrier") == (17, 1, True)
    assert site.pin("in1.presence") == (27, 0, False)      # pull-up, contact to ground
    assert site.pin("b1") == (23, 0, False)                 # normally open: press pulls low
    assert site.pin("alarm.b2") == (16, 1, False)           # normally closed: press opens
    with pytest.raises(rigmod.RigError, match="no pin called 'in9.barrier'"):
        site.pin("in9.barrier")


def test_a_scenario_cannot_change_the_site_of_the_next_one():
    config = rigmod.merge(rigmod.DEFAULT_SITE, {"log": {"level": "debug"}})
    config["lanes"][0]["camera"] = "/tmp/frames-of-an-earlier-scenario"
    assert "camera" not in rigmod.DEFAULT_SITE["lanes"][0]


def test_list_text_gets_dates_around_today():
    import datetime
    text = rigmod.dated("ref,valid_from,valid_to\nv1,{yesterday},{tomorrow}")
    today = datetime.date.today()
    assert text.endswith(f"v1,{today - datetime.timedelta(days=1)},{today + datetime.timedelta(days=1)}")


def test_config_written_by_the_rig_is_valid_for_the_agent(tmp_path):
    from agent import config as configmod
    data = rigmod.merge(rigmod.DEFAULT_SITE, {"storage": {"data_dir": str(tmp_path)},
                                              "mqtt": {"url": "mqtt://127.0.0.1:1"},
                                              "decisions": {"unknown": "deny"}})
    config = configmod.parse(rigmod.to_toml(data), str(tmp_path / "c.toml"), check_files=False)
    assert config.lanes[0].barrier.pin == 17
    assert config.alarm.buttons[0].location == "gatehouse desk"
    assert config.decisions.unknown == "deny"


def test_junit_xml_has_one_case_per_scenario(tmp_path):
    results = [Result("a", PASS, checks=[Check("siren", PASS, 12.0)], duration_s=1.0),
               Result("b", FAIL, "1 of 1 checks failed", checks=[Check("alarm at broker", FAIL, None, "none")]),
               Result("c", SKIP, "not built yet: drivers.gpio")]
    junit(results, tmp_path / "r.xml")
    suite = ET.parse(tmp_path / "r.xml").getroot()
    assert suite.get("tests") == "3" and suite.get("failures") == "1" and suite.get("skipped") == "1"
    cases = {c.get("name"): c for c in suite}
    assert cases["b"].find("failure").text == "alarm at broker: none"
    assert cases["c"].find("skipped").get("message") == "not built yet: drivers.gpio"
    assert "12 ms" in table(results)


def test_wiring_file_mistakes_are_named(tmp_path):
    bad = tmp_path / "w.toml"
    bad.write_text('[[wire]]\npart = "in1.barrier"\nrig_pn = 20\n')
    with pytest.raises(ValueError, match=r"wire\[0\]"):
        Wiring.load(bad)
    example = Wiring.load(ROOT / "hil" / "wiring.example.toml")
    assert example.wires["in1.barrier"] != 17


def test_wired_pins_skip_what_is_not_wired_and_time_what_is():
    """Real Pi mode, with gpiozero's MockFactory standing in for the Pi's pins and a
    MockConnectedPin pair playing each loopback wire."""
    from gpiozero.pins.mock import MockFactory
    from hil.pins import WiredPins
    factory = MockFactory()
    wiring = Wiring({"in1.barrier": 20, "alarm.b1": 21})
    wired = WiredPins(wiring, {17: ("in1.barrier", True), 23: ("alarm.b1", False), 5: ("in1.guard_lamp", True)},
                      pin_factory=factory)
    assert wired.wired(17) is None
    assert "not wired: in1.guard_lamp" in wired.wired(5)
    factory.pin(20).drive_high()              # the agent's relay closing, seen through the wire
    assert wired.changes(17)[-1][1] == 1
    at = wired.drive(23, 0)
    assert factory.pin(21).state == 0 and wired.changes(23)[-1] == (at, 0)
    wired.close()


# --- the fast scenarios, for real -----------------------------------------------------

@pytest.mark.slow
@needs_mosquitto
@pytest.mark.parametrize("scenario", [s for s in discover() if s.fast], ids=lambda s: s.path.stem)
def test_fast_scenario(scenario):
    result = Rig(scenario).run()
    if result.status == SKIP:
        pytest.skip(f"{scenario.path.stem}: {result.reason}")
    assert result.status == PASS, "\n" + table([result], verbose=True)
