"""The systemd units: systemd-analyze verify, what they promise, and install-service into a root."""
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli import cli
from provisioning import service
from provisioning.install import Layout

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"


def need(tool):
    path = shutil.which(tool)
    if not path:
        pytest.skip(f"{tool} is not installed (apt-get install systemd)")
    return path


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result


def provisioned_root(tmp_path) -> Path:
    root = tmp_path / "root"
    result = invoke("provision", "init", "--yes", "--root", root, "--site", "s1", "--device-id",
                    "21010200001210000001", "--broker", "mqtts://platform.example:8883")
    assert result.exit_code == 0, result.output
    return root


def verify(folder: Path, names) -> subprocess.CompletedProcess:
    need("systemd-analyze")
    return subprocess.run(["systemd-analyze", "verify", *[str(folder / n) for n in names]],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def rendered(tmp_path):
    """The units as install-service writes them, running an executable that exists here
    (verify insists on it); everything else exactly as shipped."""
    program = tmp_path / "bin" / "gate-agent"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    folder = tmp_path / "units"
    folder.mkdir()
    for name in service.UNITS:
        text = service.render(name, executable=str(program), config="/etc/gate-agent/config.toml")
        (folder / name).write_text(text)
    return folder


def test_units_pass_systemd_analyze_verify(rendered):
    result = verify(rendered, service.UNITS)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # verify only warns: any output is a problem


def test_verify_would_catch_a_broken_unit(rendered):
    unit = rendered / "gate-agent.service"
    unit.write_text(unit.read_text().replace("ProtectHome=yes", "ProtectHom=yes")
                    .replace("WatchdogSec=30s", "WatchdogSec=soon"))
    result = verify(rendered, ["gate-agent.service"])
    assert "Unknown key 'ProtectHom'" in result.stderr
    assert "Failed to parse sec value" in result.stderr


def test_shipped_unit_names_the_missing_program_only(tmp_path):
    """Unrendered, the only complaint is the venv that isn't installed on this machine."""
    if Path(service.DEFAULT_EXEC).exists():
        pytest.skip("gate-agent is installed at /opt/gate-agent here")
    result = verify(UNITS, ["gate-agent.service"])
    problems = [line for line in result.stderr.splitlines() if line.strip()]
    assert problems and all(service.DEFAULT_EXEC in line for line in problems), result.stderr


def _settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_service_unit_promises():
    unit = _settings((UNITS / "gate-agent.service").read_text())
    assert unit["Type"] == ["notify"]
    assert unit["WatchdogSec"] == ["30s"]
    assert unit["Restart"] == ["on-failure"]
    assert "StartLimitIntervalSec" in unit and "StartLimitBurst" in unit
    assert unit["User"] == ["gate-agent"]
    assert unit["StateDirectory"] == ["gate-agent"] and unit["ConfigurationDirectory"] == ["gate-agent"]
    assert unit["ExecStart"] == [f"{service.DEFAULT_EXEC} --config /etc/gate-agent/config.toml run"]
    for setting in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert unit[setting] == ["yes"], setting
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["ReadWritePaths"] == ["/var/lib/gate-agent"]
    allowed = {v.split()[0] for v in unit["DeviceAllow"]}
    assert allowed >= {"char-ttyUSB", "char-ttyACM", "char-ttyAMA", "char-gpiochip", "char-video4linux",
                       "char-media", "char-dma_heap"}
    # the credential id matches what agent.config looks for ($CREDENTIALS_DIRECTORY/keys_<name>)
    assert unit["LoadCredential"] == ["keys:/etc/gate-agent/keys"]
    assert "PrivateDevices" not in unit  # it would hide /dev/gpiochip* and the cameras


def test_sysusers_makes_the_service_user_with_its_groups(tmp_path):
    need("systemd-sysusers")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    result = subprocess.run(["systemd-sysusers", f"--root={root}", str(UNITS / "gate-agent.sysusers")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    passwd = (root / "etc/passwd").read_text()
    assert "gate-agent:x:" in passwd and "/usr/sbin/nologin" in passwd
    groups = {line.split(":")[0]: line.split(":")[3] for line in (root / "etc/group").read_text().splitlines()}
    for group in ("dialout", "gpio", "video"):
        assert "gate-agent" in groups[group].split(","), group


def test_install_service_into_a_root_enables_the_units(tmp_path):
    need("systemctl")
    root = provisioned_root(tmp_path)
    result = invoke("provision", "install-service", "--root", root)
    assert result.exit_code == 0, result.output
    system = root / "etc/systemd/system"
    unit = (system / "gate-agent.service").read_text()
    assert f"ExecStart={service.DEFAULT_EXEC} --config /etc/gate-agent/config.toml run" in unit
    assert "does not exist" in result.output  # the venv isn't in this staged root yet
    assert (system / "multi-user.target.wants/gate-agent.service").is_symlink()
    assert (system / "timers.target.wants/gate-agent-retry.timer").is_symlink()
    assert "gate-agent:x:" in (root / "etc/passwd").read_text()
    assert (root / "etc/tmpfiles.d/gate-agent.conf").is_file()
    assert oct((system / "gate-agent.service").stat().st_mode & 0o777) == "0o644"

    removed = invoke("provision", "uninstall-service", "--root", root)
    assert removed.exit_code == 0, removed.output
    assert not (system / "gate-agent.service").exists()
    assert not (system / "multi-user.target.wants/gate-agent.service").exists()
    assert (root / "etc/gate-agent/keys/data.key").exists()  # keys and config stay


def test_install_service_follows_a_config_elsewhere(tmp_path):
    layout = Layout(config=tmp_path / "root/srv/gate/config.toml", root=tmp_path / "root")
    files = service.planned_files(layout, executable="/srv/venv/bin/gate-agent")
    unit = files[tmp_path / "root/etc/systemd/system/gate-agent.service"]
    assert "ExecStart=/srv/venv/bin/gate-agent --config /srv/gate/config.toml run" in unit
    assert "LoadCredential=keys:/srv/gate/keys" in unit
    assert "/etc/gate-agent" not in unit.replace("/etc/gate-agent/config.toml", "")
    tmpfiles = files[tmp_path / "root/etc/tmpfiles.d/gate-agent.conf"]
    assert "z /srv/gate/config.toml 0640 root gate-agent" in tmpfiles


def test_install_service_dry_run_changes_nothing(tmp_path):
    result = invoke("--config", tmp_path / "etc/config.toml", "provision", "install-service", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "would write /etc/systemd/system/gate-agent.service" in result.output
    assert "would run: systemctl enable gate-agent.service gate-agent-retry.timer" in result.output
    assert "would run: systemctl daemon-reload" in result.output


def test_install_service_without_systemd_says_what_to_run(tmp_path, monkeypatch):
    """As if on the device but with systemd not running: files written, commands printed."""
    monkeypatch.setattr(service, "systemd_running", lambda: False)
    layout = Layout(config=tmp_path / "etc/gate-agent/config.toml")
    monkeypatch.setattr(service, "planned_files", lambda layout, executable=None: {
        tmp_path / "gate-agent.service": "[Unit]\n"})
    steps = service.install(layout, executable="/bin/true")
    assert any("systemd is not running here" in s for s in steps)
    assert any(s.strip() == "sudo systemctl enable gate-agent.service gate-agent-retry.timer" for s in steps)
    assert (tmp_path / "gate-agent.service").is_file()


def test_install_and_uninstall_need_root_for_etc(tmp_path, monkeypatch):
    monkeypatch.setattr(service.os, "geteuid", lambda: 1000)
    for command in ("install-service", "uninstall-service"):
        result = invoke("--config", tmp_path / "config.toml", "provision", command)
        assert result.exit_code == 2 and "sudo" in result.output, command


def test_tmpfiles_sets_the_modes_of_config_keys_and_data(tmp_path):
    need("systemd-sysusers")
    need("systemd-tmpfiles")
    root = tmp_path / "root"
    (root / "etc/gate-agent/keys").mkdir(parents=True)
    subprocess.run(["systemd-sysusers", f"--root={root}", str(UNITS / "gate-agent.sysusers")],
                   check=True, capture_output=True, timeout=60)
    config = root / "etc/gate-agent/config.toml"
    key = root / "etc/gate-agent/keys/data.key"
    for path in (config, key):
        path.write_text("x")
        path.chmod(0o644)
    result = subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create", str(UNITS / "gate-agent.tmpfiles")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    gid = next(int(line.split(":")[2]) for line in (root / "etc/group").read_text().splitlines()
               if line.startswith("gate-agent:"))

    def mode_and_group(path):
        info = path.stat()
        return oct(info.st_mode & 0o777), info.st_gid
    assert mode_and_group(config) == ("0o640", gid)
    assert mode_and_group(root / "etc/gate-agent") == ("0o750", gid)
    assert mode_and_group(key) == ("0o600", 0)
    assert mode_and_group(root / "etc/gate-agent/keys") == ("0o700", 0)
    assert mode_and_group(root / "var/lib/gate-agent") == ("0o750", gid)
