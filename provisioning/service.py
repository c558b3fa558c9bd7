"""Install the systemd units: the agent's service, its retry timer, its user and folder modes.

The unit files in systemd/ name the standard places (/opt/gate-agent/.venv,
/etc/gate-agent); `render` rewrites those paths to where this agent and its
config really are. With a root folder (a staged image) everything is written
under it and `systemctl --root` / `systemd-sysusers --root` do the enabling
offline. Where systemd isn't running, the steps it would take are printed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from provisioning.install import Layout

UNIT_DIR = "etc/systemd/system"
SYSUSERS = "etc/sysusers.d/gate-agent.conf"
TMPFILES = "etc/tmpfiles.d/gate-agent.conf"
UNITS = ("gate-agent.service", "gate-agent-retry.service", "gate-agent-retry.timer")
ENABLE = ("gate-agent.service", "gate-agent-retry.timer")
DEFAULT_EXEC = "/opt/gate-agent/.venv/bin/gate-agent"
DEFAULT_CONFIG = "/etc/gate-agent/config.toml"
DEFAULT_KEYS = "/etc/gate-agent/keys"
DEFAULT_DATA = "/var/lib/gate-agent"


class ServiceError(Exception):
    """The units can't be installed; the message says what to do."""


def source_dir() -> Path:
    """systemd/ of a source checkout, or share/gate-agent/systemd of an installed wheel."""
    for candidate in (Path(__file__).resolve().parent.parent / "systemd",
                      Path(sys.prefix) / "share" / "gate-agent" / "systemd"):
        if (candidate / "gate-agent.service").is_file():
            return candidate
    raise ServiceError("the unit files are missing (systemd/gate-agent.service); reinstall gate-agent")


def agent_executable(layout: Layout) -> str:
    """The gate-agent script of the running installation (in a staged image: the standard one)."""
    script = Path(sys.prefix) / "bin" / "gate-agent"
    return str(script) if script.exists() and layout.root is None else DEFAULT_EXEC


def render(name: str, *, executable: str, config: str, data_dir: str = DEFAULT_DATA) -> str:
    """A unit or config file from systemd/, with this installation's paths."""
    text = (source_dir() / _source_name(name)).read_text()
    config_dir = str(Path(config).parent)
    replacements = [(DEFAULT_EXEC, executable), (DEFAULT_CONFIG, config),
                    (DEFAULT_KEYS, config_dir + "/keys"), ("/etc/gate-agent", config_dir)]
    for i, (old, _) in enumerate(replacements):
        text = text.replace(old, f"\0{i}\0")
    for i, (_, new) in enumerate(replacements):
        text = text.replace(f"\0{i}\0", new)
    if data_dir != DEFAULT_DATA and name == "gate-agent.service":
        text = text.replace(f"ReadWritePaths={DEFAULT_DATA}", f"ReadWritePaths={DEFAULT_DATA} {data_dir}")
    return text


def _source_name(name: str) -> str:
    return {"gate-agent.conf@sysusers": "gate-agent.sysusers",
            "gate-agent.conf@tmpfiles": "gate-agent.tmpfiles"}.get(name, name)


def systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir()


def _targets(layout: Layout) -> tuple[Path, str]:
    """(root folder to write under, config path as the target system sees it)."""
    root = layout.root or Path("/")
    config = "/" + str(layout.config.relative_to(root)) if layout.root else str(layout.config)
    return root, config


def planned_files(layout: Layout, executable: str | None = None) -> dict[Path, str]:
    root, config = _targets(layout)
    data_dir = _data_dir(layout, root)
    kwargs = dict(executable=executable or agent_executable(layout), config=config, data_dir=data_dir)
    files = {root / UNIT_DIR / name: render(name, **kwargs) for name in UNITS}
    files[root / SYSUSERS] = render("gate-agent.conf@sysusers", **kwargs)
    files[root / TMPFILES] = render("gate-agent.conf@tmpfiles", **kwargs)
    return files


def _data_dir(layout: Layout, root: Path) -> str:
    try:
        from agent import config as configmod
        value = configmod.load(layout.config, check_files=False).storage.data_dir
    except Exception:
        return DEFAULT_DATA
    path = Path(value)
    if layout.root and path.is_relative_to(root):
        return "/" + str(path.relative_to(root))
    return value


def install(layout: Layout, *, start: bool = False, dry_run: bool = False,
            executable: str | None = None, run=subprocess.run) -> list[str]:
    """Write the files and enable the units; returns what was done (or would be)."""
    root, _ = _targets(layout)
    if layout.root is None and os.geteuid() != 0 and not dry_run:
        raise ServiceError("installing the service changes /etc: run it with sudo "
                           "(or --root DIR for a staged image, --dry-run to see the steps)")
    files = planned_files(layout, executable)
    steps = []
    exec_path = executable or agent_executable(layout)
    if not (root / exec_path.lstrip("/")).exists():
        steps.append(f"warning: {exec_path} does not exist; the service can't start until "
                     "gate-agent is installed there (docs/install.md)")
    for path, text in files.items():
        steps.append(f"{'would write' if dry_run else 'wrote'} {path}")
        if not dry_run:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            os.chmod(path, 0o644)
    commands = _enable_commands(layout, root, start)
    return steps + _run_commands(commands, layout, dry_run, run)


def _enable_commands(layout: Layout, root: Path, start: bool) -> list[list[str]]:
    if layout.root:
        return [["systemd-sysusers", f"--root={root}", str(root / SYSUSERS)],
                ["systemctl", f"--root={root}", "enable", *ENABLE]]
    commands = [["systemd-sysusers", f"/{SYSUSERS}"],
                ["systemd-tmpfiles", "--create", f"/{TMPFILES}"],
                ["systemctl", "daemon-reload"],
                ["systemctl", "enable", *ENABLE]]
    if start:
        commands += [["systemctl", "restart", "gate-agent.service"],
                     ["systemctl", "start", "gate-agent-retry.timer"]]
    return commands


def _run_commands(commands: list[list[str]], layout: Layout, dry_run: bool, run) -> list[str]:
    if dry_run:
        return [f"would run: {' '.join(c)}" for c in commands]
    if layout.root is None and not systemd_running():
        return ["systemd is not running here (a container or a chroot): on the device, run"] + \
               [f"  sudo {' '.join(c)}" for c in commands]
    steps = []
    for command in commands:
        if shutil.which(command[0]) is None:
            steps.append(f"skipped (no {command[0]} here): {' '.join(command)}")
            continue
        result = run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise ServiceError(f"'{' '.join(command)}' failed (exit {result.returncode}): "
                               f"{(result.stderr or result.stdout).strip()[-400:]}")
        steps.append(f"ran: {' '.join(command)}")
    return steps


def uninstall(layout: Layout, *, dry_run: bool = False, run=subprocess.run) -> list[str]:
    """Stop, disable and remove the units. The user, config, keys and records stay."""
    root, _ = _targets(layout)
    if layout.root is None and os.geteuid() != 0 and not dry_run:
        raise ServiceError("removing the service changes /etc: run it with sudo (or --dry-run)")
    if layout.root:
        commands = [["systemctl", f"--root={root}", "disable", *ENABLE]]
    else:
        commands = [["systemctl", "disable", "--now", *ENABLE]]
    steps = _run_commands(commands, layout, dry_run, run) if _installed(root) else []
    for name in UNITS:
        path = root / UNIT_DIR / name
        if path.exists():
            steps.append(f"{'would remove' if dry_run else 'removed'} {path}")
            if not dry_run:
                path.unlink()
    for path in (root / SYSUSERS, root / TMPFILES):
        if path.exists():
            steps.append(f"kept {path} (the user and the folder modes stay with the data)")
    if layout.root is None:
        steps += _run_commands([["systemctl", "daemon-reload"]], layout, dry_run, run)
    steps.append("config, keys and records are kept; remove /etc/gate-agent and /var/lib/gate-agent "
                 "by hand only if this device is being retired")
    return steps


def _installed(root: Path) -> bool:
    return (root / UNIT_DIR / "gate-agent.service").exists()
