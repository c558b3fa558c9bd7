"""selftest on a provisioned temporary root: simulated GPIO, a pty reader speaking the SAM
protocol, real mosquitto (plain and TLS), real plate photos, and the clock answers."""
import json
import os
import select
import subprocess
import threading
import tty
from pathlib import Path

import pytest
from click.testing import CliRunner
from gpiozero.pins.mock import MockFactory, MockPWMPin

from agent.cli import cli
from conftest import need_plates
from hil.broker import Mosquitto, free_port
from provisioning import selftest as st
from provisioning.testca import TestCA

DEVICE_ID = "21010200001210000001"


def invoke(*args, input=None):
    result = CliRunner().invoke(cli, [str(a) for a in args], input=input)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result


def provision(root: Path, *flags) -> Path:
    result = invoke("provision", "init", "--yes", "--root", root, "--site", "s1", "--device-id", DEVICE_ID,
                    *(flags or ("--broker", "mqtts://127.0.0.1:1")))
    assert result.exit_code == 0, result.output
    return root / "etc/gate-agent/config.toml"


def edit(config: Path, old: str, new: str) -> None:
    text = config.read_text()
    assert old in text
    config.write_text(text.replace(old, new))


def by_part(results, needle):
    found = [r for r in results if needle in r.part]
    assert found, f"no result for {needle}: {[r.part for r in results]}"
    return found[0]


@pytest.fixture
def config(tmp_path):
    return provision(tmp_path / "root")


# --- the whole run, as the installer sees it ------------------------------------------------

def test_simulated_selftest_json(config):
    result = invoke("--config", config, "selftest", "--simulate", "--json",
                    "--only", "config", "--only", "relays", "--only", "inputs", "--only", "readers",
                    "--only", "disk")
    assert result.exit_code == 1, result.output  # the reader isn't there
    report = json.loads(result.output)
    assert report["ok"] is False
    status = {c["part"]: c for c in report["checks"]}
    assert status[str(config)]["status"] == "PASS"
    for part in ("in1 barrier relay (BCM 17)", "in1 guard lamp (BCM 5)", "alarm siren (BCM 24)",
                 "alarm ack lamp (BCM 25)", "drill lamp (BCM 6)"):
        assert status[part]["status"] == "PASS", status[part]
    for part in ("in1 presence (BCM 27)", "in1 manual open (BCM 22)", "alarm button b1 (gatehouse) (BCM 23)"):
        assert status[part]["status"] == "PASS", status[part]
    reader = status["reader in1-idcard (idcard on /dev/ttyUSB0)"]
    assert reader["status"] == "FAIL"
    assert "does not exist" in reader["reason"] and "ls -l /dev/serial/by-id" in reader["fix"]
    assert [c["status"] for c in report["checks"] if c["check"] == "disk"] == ["PASS"]


def test_table_output_and_exit_code(config):
    result = invoke("--config", config, "selftest", "--simulate", "--yes", "--only", "readers")
    assert result.exit_code == 1
    assert "FAIL" in result.output and "fix: plug the reader in" in result.output
    assert "1 FAIL: FAILED" in result.output
    ok = invoke("--config", config, "selftest", "--simulate", "--yes", "--only", "relays")
    assert ok.exit_code == 0, ok.output
    assert "5 PASS: ok" in ok.output


def test_broken_config_is_one_fail(tmp_path):
    bad = tmp_path / "config.toml"
    bad.write_text("[device]\nid = 'nope'\n")
    result = invoke("--config", bad, "selftest", "--simulate", "--json")
    report = json.loads(result.output)
    assert result.exit_code == 1
    assert report["checks"][0]["status"] == "FAIL" and "device.id" in report["checks"][0]["reason"]


# --- GPIO with wiring that holds inputs --------------------------------------------------------

def wired_factory(levels: dict[int, int]) -> MockFactory:
    """MockFactory whose inputs are held by outside wiring at `levels` (BCM -> 0/1), whatever the
    pull resistor says, like a closed contact to ground."""
    class WiredPin(MockPWMPin):
        def _set_pull(self, value):
            super()._set_pull(value)
            number = int(self.info.name.removeprefix("GPIO"))
            if number in levels:
                self.drive_high() if levels[number] else self.drive_low()
    return MockFactory(pin_class=WiredPin)


def test_active_inputs_warn_and_a_stuck_alarm_button_fails(config):
    results = st.run_all(config, simulate=True, only={"inputs"}, pin_factory=wired_factory({27: 0, 23: 0}))
    presence = by_part(results, "in1 presence")
    assert presence.status == st.WARN and "ACTIVE" in presence.reason
    button = by_part(results, "alarm button b1")
    assert button.status == st.FAIL and "wiring" in button.fix
    assert by_part(results, "manual open").status == st.PASS


def test_nc_alarm_button_reads_closed_at_rest(tmp_path):
    config = provision(tmp_path / "root", "--broker", "mqtts://127.0.0.1:1",
                       "--alarm-button", "b1:23:nc:desk")
    closed = st.run_all(config, simulate=True, only={"inputs"}, pin_factory=wired_factory({23: 0}))
    assert by_part(closed, "alarm button b1").status == st.PASS
    cut = st.run_all(config, simulate=True, only={"inputs"}, pin_factory=wired_factory({}))
    assert by_part(cut, "alarm button b1").status == st.FAIL  # pull-up reads open: a cut wire


def test_relay_with_inverted_logic_still_checked(config):
    text = config.read_text()
    at = text.index("[lanes.barrier]")
    config.write_text(text[:at] + text[at:].replace("active_high = true", "active_high = false", 1))
    results = st.run_all(config, simulate=True, only={"relays"})
    assert by_part(results, "in1 barrier relay").status == st.PASS


def test_interactive_relays_ask_first(config):
    asked = []

    def confirm(question):
        asked.append(question)
        return "siren" not in question   # the installer skips the siren
    results = st.run_all(config, simulate=True, interactive=True, only={"relays"}, confirm=confirm)
    assert by_part(results, "alarm siren").status == st.SKIP
    assert by_part(results, "in1 barrier relay").status == st.PASS
    assert any("Pulse the in1 barrier relay on BCM 17" in q for q in asked)


def test_no_gpio_is_one_fail_with_the_fix(config, monkeypatch):
    from gpiozero import Device
    monkeypatch.setattr(Device, "pin_factory", None)
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "no-such-factory")
    results = st.run_all(config, only={"relays", "inputs"})
    assert [(r.part, r.status) for r in results] == [("GPIO pin factory", st.FAIL)]
    assert "--simulate" in results[0].fix


def test_no_relays_flag(config):
    results = st.run_all(config, simulate=True, relays=False, only={"relays"})
    assert [r.status for r in results] == [st.SKIP]


# --- the card reader on a pty ---------------------------------------------------------

class FakeSamReader:
    """The reader end of a pty: answers the SAM status request with `sw3` (or stays silent)."""

    def __init__(self, sw3: int | None = 0x90, corrupt: bool = False):
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.sw3, self.corrupt = sw3, corrupt
        self.requests = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def reply(self) -> bytes:
        body = bytes([0x00, 0x04, 0x00, 0x00, self.sw3])
        check = 0
        for b in body:
            check ^= b
        return st.SAM_PREAMBLE + body + bytes([check ^ (0xFF if self.corrupt else 0)])

    def _serve(self):
        buffer = b""
        while not self.stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                buffer += os.read(self.master, 256)
            except OSError:
                return
            if st.SAM_STATUS in buffer:
                self.requests.append(st.SAM_STATUS)
                buffer = b""
                if self.sw3 is not None:
                    os.write(self.master, self.reply())

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=2)
        os.close(self.master)
        os.close(self.slave)


def reader_result(config, reader):
    edit(config, 'port = "/dev/ttyUSB0"\n', f'port = "{reader.path}"\n')
    edit(config, "baud = 0\n", "baud = 115200\n")
    return st.run_all(config, only={"readers"})[0]


def test_reader_answering_sam_status_passes(config):
    with FakeSamReader() as reader:
        result = reader_result(config, reader)
    assert result.status == st.PASS, result
    assert "SAM status OK" in result.reason and reader.requests


@pytest.mark.parametrize("sw3, corrupt, reason", [
    (0x66, False, "SAM answered 66: SAM not authorised"),
    (0x60, False, "SAM self-test failed"),
    (0x90, True, "garbled reply"),
    (None, False, "no answer to the SAM status request at 115200 baud"),
])
def test_reader_problems_fail_with_reason(config, sw3, corrupt, reason):
    with FakeSamReader(sw3, corrupt) as reader:
        result = reader_result(config, reader)
    assert result.status == st.FAIL
    assert reason in result.reason and result.fix


def test_passive_reader_port_opens(tmp_path):
    config = provision(tmp_path / "root", "--broker", "mqtts://127.0.0.1:1", "--reader", "rdm6300:/dev/ttyUSB0")
    with FakeSamReader(None) as reader:
        edit(config, 'port = "/dev/ttyUSB0"\n', f'port = "{reader.path}"\n')
        result = st.run_all(config, only={"readers"})[0]
    assert result.status == st.WARN and "port opens at 9600 baud" in result.reason


# --- the broker -------------------------------------------------------------------------------

def test_plain_broker_reached_and_dead_broker_fails(tmp_path):
    with Mosquitto() as broker:
        config = provision(tmp_path / "root", "--broker", broker.url, "--allow-plaintext")
        up = st.run_all(config, only={"broker"}, broker_timeout_s=5)[0]
        assert up.status == st.WARN and "WITHOUT TLS" in up.reason
        broker.stop()
        down = st.run_all(config, only={"broker"}, broker_timeout_s=5)[0]
    assert down.status == st.FAIL and "connection refused" in down.reason
    assert "mqtt.url" in down.fix


def tls_broker(ca: TestCA) -> Mosquitto:
    """mosquitto with a TLS listener that wants a client certificate. The files live in the
    broker's own folder, readable by the 'mosquitto' user it drops to when started as root."""
    port = free_port()
    broker = Mosquitto(port=port, listener=False)
    ca_file, cert, key = ca.server_files(broker.dir / "tls")
    for path in (broker.dir, broker.dir / "tls"):
        path.chmod(0o755)
    for path in (ca_file, cert, key):
        path.chmod(0o644)
    broker.extra_config = "\n".join([
        f"listener {port} 127.0.0.1", "allow_anonymous true", f"cafile {ca_file}",
        f"certfile {cert}", f"keyfile {key}", "require_certificate true"])
    return broker


def test_tls_broker_with_installed_certificate(tmp_path):
    ca = TestCA.create()
    with tls_broker(ca) as broker:
        root = tmp_path / "root"
        config = provision(root, "--broker", f"mqtts://127.0.0.1:{broker.port}")
        # no certificate yet: the broker wants one, and our CA trust is the system's
        before = st.run_all(config, only={"broker"}, broker_timeout_s=5)[0]
        assert before.status == st.FAIL
        keys = root / "etc/gate-agent/keys"
        (tmp_path / "device.pem").write_bytes(ca.sign_csr((keys / "device.csr").read_bytes()))
        (tmp_path / "ca.pem").write_bytes(ca.pem)
        installed = invoke("provision", "cert", "install", tmp_path / "device.pem", tmp_path / "ca.pem",
                           "--root", root)
        assert installed.exit_code == 0, installed.output
        after = st.run_all(config, only={"broker", "keys"}, broker_timeout_s=5)
        assert by_part(after, "broker").status == st.PASS, by_part(after, "broker")
        assert by_part(after, "device certificate").status == st.PASS


def test_tls_broker_signed_by_another_ca_is_not_trusted(tmp_path):
    with tls_broker(TestCA.create("the broker's CA")) as broker:
        root = tmp_path / "root"
        config = provision(root, "--broker", f"mqtts://127.0.0.1:{broker.port}")
        ours = TestCA.create("our CA")
        keys = root / "etc/gate-agent/keys"
        (tmp_path / "device.pem").write_bytes(ours.sign_csr((keys / "device.csr").read_bytes()))
        (tmp_path / "ca.pem").write_bytes(ours.pem)
        assert invoke("provision", "cert", "install", tmp_path / "device.pem", tmp_path / "ca.pem",
                      "--root", root).exit_code == 0
        result = st.run_all(config, only={"broker"}, broker_timeout_s=5)[0]
    assert result.status == st.FAIL and "not trusted" in result.reason
    assert "mqtt.ca_file" in result.fix


# --- cameras --------------------------------------------------------------------------------

def test_camera_folder_of_real_photos(tmp_path):
    folder = need_plates() / "ccpd_demo_hukai97"
    config = provision(tmp_path / "root", "--broker", "mqtts://127.0.0.1:1", "--camera", str(folder))
    results = st.run_all(config, only={"cameras"}, save_frames=tmp_path / "frames")
    frame = by_part(results, "in1 camera")
    assert frame.status == st.PASS and "frame" in frame.reason
    assert (tmp_path / "frames" / "in1.jpg").stat().st_size > 1000
    plate = by_part(results, "in1 plate read")
    if st.PlateCheck("opencv").missing:
        assert plate.status == st.WARN and "not built yet" in plate.reason
    else:
        assert plate.status in (st.PASS, st.WARN, st.FAIL) and plate.reason


def test_camera_problems(tmp_path):
    folder = need_plates() / "ccpd_demo_hukai97"
    config = provision(tmp_path / "root", "--broker", "mqtts://127.0.0.1:1", "--camera", str(folder),
                       "--roi", "0,0,5000,5000")
    outside = by_part(st.run_all(config, only={"cameras"}), "in1 camera")
    assert outside.status == st.FAIL and "outside" in outside.reason
    edit(config, f'camera = "{folder}"', f'camera = "{tmp_path / "nothing-here"}"')
    missing = by_part(st.run_all(config, only={"cameras"}), "in1 camera")
    assert missing.status == st.FAIL and "not found" in missing.reason
    (tmp_path / "empty").mkdir()
    edit(config, f'camera = "{tmp_path / "nothing-here"}"', f'camera = "{tmp_path / "empty"}"')
    empty = by_part(st.run_all(config, only={"cameras"}), "in1 camera")
    assert empty.status == st.FAIL and "holds no images" in empty.reason


def test_dark_frame_warns(tmp_path):
    import cv2
    import numpy as np
    (tmp_path / "dark").mkdir()
    cv2.imwrite(str(tmp_path / "dark" / "f.png"), np.zeros((480, 640, 3), np.uint8))
    config = provision(tmp_path / "root", "--broker", "mqtts://127.0.0.1:1", "--camera", str(tmp_path / "dark"))
    result = by_part(st.run_all(config, only={"cameras"}), "in1 camera")
    assert result.status == st.WARN and "nearly black" in result.reason


# --- clock and disk ------------------------------------------------------------------------

def fake_run(answers: dict):
    def run(command, **kwargs):
        if command[0] not in answers:
            raise FileNotFoundError(command[0])
        code, out = answers[command[0]]
        return subprocess.CompletedProcess(command, code, out, "")
    return run


@pytest.mark.parametrize("answers, status, words", [
    ({"timedatectl": (0, "yes\n")}, st.PASS, "NTP-synchronised"),
    ({"timedatectl": (0, "no\n")}, st.WARN, "NOT SYNCHRONISED"),
    ({"timedatectl": (1, ""), "chronyc": (0, "Reference ID : 1\nLeap status     : Normal\n")}, st.PASS,
     "NTP-synchronised"),
    ({"chronyc": (0, "Leap status     : Not synchronised\n")}, st.WARN, "NOT SYNCHRONISED"),
    ({}, st.WARN, "cannot tell"),
])
def test_clock(config, answers, status, words):
    result = st.run_all(config, only={"clock"}, run=fake_run(answers))[0]
    assert result.status == status and words in result.reason


def test_disk_missing_data_dir_fails(config):
    edit(config, "var/lib/gate-agent", "var/lib/elsewhere")
    result = st.run_all(config, only={"disk"})
    assert result[0].status == st.FAIL and "does not exist" in result[0].reason


def test_disk_reads_each_database_through_and_names_the_damaged(config):
    from agent.store import Store
    data = config.parent.parent.parent / "var/lib/gate-agent"
    Store(data, device_id=DEVICE_ID, site="s1", reserve_mb=1).close()
    garbage = os.urandom(4096)
    (data / "lists.db").write_bytes(garbage)
    (data / "lists-state.db.damaged-20261125T010203Z").write_bytes(b"x")
    results = st.run_all(config, only={"disk"})
    assert by_part(results, "database gate.db").status == st.PASS
    damaged = by_part(results, "database lists.db")
    assert damaged.status == st.FAIL and "not a database" in damaged.reason and "sets it aside" in damaged.fix
    assert (data / "lists.db").read_bytes() == garbage
    assert by_part(results, "lists-state.db.damaged-20261125T010203Z").status == st.WARN


def test_disk_marks_damage_past_page_one_for_the_agent_to_set_aside(config):
    """quick_check finds what the agent's check at start cannot: the mark makes the next start act."""
    from agent.store import DAMAGE_MARK, Store
    data = config.parent.parent.parent / "var/lib/gate-agent"
    from damage import fill_with_badge_reads, garble_page_holding
    store = Store(data, device_id=DEVICE_ID, site="s1", reserve_mb=1)
    fill_with_badge_reads(store, 2000)
    store.close()
    garble_page_holding(data / "gate.db", '"001000"')
    raw = (data / "gate.db").read_bytes()
    result = by_part(st.run_all(config, only={"disk"}), "database gate.db")
    assert result.status == st.FAIL and "restart the agent: it sets gate.db aside" in result.fix
    assert "selftest:" in (data / DAMAGE_MARK).read_text()
    again = by_part(st.run_all(config, only={"disk"}), "database gate.db")
    assert again.status == st.FAIL and (data / "gate.db").read_bytes() == raw


@pytest.fixture
def held_store(config):
    """gate.db, held locked by another program (an exclusive write transaction) while the test runs."""
    import sqlite3
    from agent.store import Store
    data = config.parent.parent.parent / "var/lib/gate-agent"
    Store(data, device_id=DEVICE_ID, site="s1", reserve_mb=1).close()
    holder = sqlite3.connect(data / "gate.db", isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO state VALUES ('held', '1', 0)")
    yield data
    holder.execute("ROLLBACK")
    holder.close()


def test_disk_names_a_locked_store_and_leaves_no_damage_mark(config, held_store, monkeypatch):
    """Only damage may mark the store: the mark has a sound store set aside at the next start."""
    from agent.store import DAMAGE_MARK
    monkeypatch.setattr(st, "QUICK_CHECK_WAIT_S", 0.0)     # the lock is held throughout anyway
    result = by_part(st.run_all(config, only={"disk"}), "database gate.db")
    assert not (held_store / DAMAGE_MARK).exists()
    assert result.status == st.FAIL and "database is locked" in result.reason and "not for damage" in result.reason
    assert "held it locked" in result.fix and "fuser" in result.fix


def test_disk_names_a_store_it_cannot_open_and_leaves_no_damage_mark(config):
    from agent.store import DAMAGE_MARK
    data = config.parent.parent.parent / "var/lib/gate-agent"
    (data / "gate.db").mkdir()                              # not a file SQLite can open
    result = by_part(st.run_all(config, only={"disk"}), "database gate.db")
    assert not (data / DAMAGE_MARK).exists()
    assert result.status == st.FAIL and "not for damage" in result.reason and "gate-agent user" in result.fix


def test_keys_check_reports_missing_command_key_and_bad_mode(config):
    results = st.run_all(config, only={"keys"})
    assert by_part(results, "data key").status == st.PASS
    assert by_part(results, "command key").status == st.WARN
    assert by_part(results, "device certificate").status == st.WARN
    data_key = config.parent / "keys" / "data.key"
    os.chmod(data_key, 0o644)
    bad = by_part(st.run_all(config, only={"keys"}), "data key")
    assert bad.status == st.FAIL and "chmod 600" in bad.reason


# --- interactive, on (mock) hardware that answers ---------------------------------------------

def test_interactive_inputs_wait_for_the_installer(config):
    factory = wired_factory({})
    prompts = []

    def say(text):
        prompts.append(text)
        if "in1 presence" in text:  # the installer drives onto the loop
            threading.Timer(0.05, factory.pin(27).drive_low).start()
    results = st.run_all(config, interactive=True, only={"inputs"}, pin_factory=factory, say=say,
                         confirm=lambda q: True, input_wait_s=0.5)
    assert by_part(results, "in1 presence").status == st.PASS
    untouched = by_part(results, "in1 manual open")
    assert untouched.status == st.FAIL and "no change in 0.5 s" in untouched.reason
    assert any("no alarm is sent during the selftest" in p for p in prompts if "alarm button" in p)


NO_ALARM_OUTPUTS = ("--pin", "alarm.siren=none", "--pin", "alarm.ack_lamp=none", "--pin", "alarm.drill_lamp=none")


def test_interactive_relays_ask_whether_they_clicked(tmp_path):
    config = provision(tmp_path / "root", "--broker", "mqtts://127.0.0.1:1", *NO_ALARM_OUTPUTS)
    answers = {"in1 barrier relay": False}

    def confirm(question):
        if question.startswith("Did the"):
            return not any(name in question for name in answers)
        return True
    results = st.run_all(config, interactive=True, only={"relays"}, pin_factory=wired_factory({}),
                         confirm=confirm)
    barrier = by_part(results, "in1 barrier relay")
    assert barrier.status == st.FAIL and "active_high" in barrier.fix
    assert by_part(results, "in1 guard lamp").status == st.PASS


def test_barrier_confirm_input_after_the_pulse(tmp_path):
    config = provision(tmp_path / "root", "--broker", "mqtts://127.0.0.1:1", "--pin", "in1.barrier_confirm=4",
                       "--pin", "in1.guard_lamp=none", *NO_ALARM_OUTPUTS)
    edit(config, "confirm_timeout_s = 3.0", "confirm_timeout_s = 0.3")
    edit(config, "pulse_s = 0.5", "pulse_s = 0.05")
    opened = st.run_all(config, only={"relays"}, pin_factory=wired_factory({4: 0}), confirm=lambda q: True)
    assert by_part(opened, "barrier confirm").status == st.PASS
    stuck = st.run_all(config, only={"relays"}, pin_factory=wired_factory({}), confirm=lambda q: True)
    result = by_part(stuck, "barrier confirm")
    assert result.status == st.FAIL and "no open signal within 0.3 s" in result.reason
