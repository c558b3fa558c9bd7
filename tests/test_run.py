import json
import os
import signal
import subprocess
import sys
import time

from conftest import ROOT, run_cli


def start_agent(config_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "agent", "--config", str(config_path), "run", "--simulate"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def read_until(proc, needle, timeout=30):
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} not seen; got {lines}")


def test_run_starts_logs_json_and_stops_on_sigterm(config_file):
    proc = start_agent(config_file())
    try:
        lines = read_until(proc, "gate-agent running")
        for line in lines:
            entry = json.loads(line)
            assert {"t", "level", "logger", "msg"} <= set(entry)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "stopped cleanly" in out
    assert "Traceback" not in err


def test_run_with_missing_key_is_one_line_exit_2(config_file, data_key):
    path = config_file()
    data_key.unlink()
    result = run_cli("--config", path, "run", "--simulate")
    assert result.returncode == 2
    assert "privacy.key_file" in result.stderr
    assert "Traceback" not in result.stderr


def test_status_shows_subsystems_after_run(config_file):
    path = config_file()
    proc = start_agent(path)
    try:
        read_until(proc, "gate-agent running")
        time.sleep(1.5)
        status = run_cli("--config", path, "status", "--json")
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    report = json.loads(status.stdout)
    assert report["device_id"] == "21010200001210000001"
    assert report["outbox"]["total"] >= 0
    assert isinstance(report["subsystems"], dict)


def test_a_damaged_store_is_set_aside_and_the_gate_runs(config_file, tmp_path):
    """An SD card that damaged gate.db must not keep the alarm buttons unheard: status
    names the damage (exit 1), the agent sets the file aside, starts and says so."""
    path = config_file()
    data = tmp_path / "data"
    data.mkdir()
    garbage = os.urandom(8192)
    (data / "gate.db").write_bytes(garbage)
    before = run_cli("--config", path, "status")
    assert before.returncode == 1 and "Traceback" not in before.stderr
    assert "gate.db: file is not a database" in before.stdout
    proc = start_agent(path)
    try:
        lines = read_until(proc, "gate-agent running")
        status = run_cli("--config", path, "status")
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    [moved] = data.glob("gate.db.damaged-*")
    assert moved.read_bytes() == garbage
    assert any("set aside as" in json.loads(line)["msg"] for line in lines)
    assert status.returncode == 0
    assert f"DAMAGED DATABASE SET ASIDE: {moved.name}" in status.stdout and "outbox: alarm 0" in status.stdout
