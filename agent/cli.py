"""The `gate-agent` command: a thin click layer over the agent library."""
from __future__ import annotations

import importlib
import importlib.util
import json
import sqlite3
import sys
from pathlib import Path

import click

from agent import __version__
from agent import config as configmod

EXIT_USAGE = 2


class UserError(click.ClickException):
    """A mistake the user can fix: one line on stderr, exit code 2, no traceback."""

    exit_code = EXIT_USAGE

    def show(self, file=None):
        click.echo(f"gate-agent: {self.message}", err=True)


def load_config(ctx: click.Context, check_files: bool = True) -> configmod.Config:
    try:
        return configmod.load(ctx.obj["config_path"], check_files=check_files)
    except configmod.ConfigError as exc:
        raise UserError(str(exc)) from None


# Each area's commands, by name: their modules import this one (UserError, load_config), so
# they are imported when their command is asked for, not when this module is. A module not
# installed (hil/ on a device built without the rig) leaves its command out.
AREA_COMMANDS = {
    "sync": "agent.sync_cli",
    "reader": "drivers.reader_cli",
    "plates": "agent.plates_cli",
    "lists": "agent.lists_cli",
    "drill": "agent.alarm_cli",
    "provision": "provisioning.cli",
    "selftest": "provisioning.cli",
    "hil": "hil.cli",
    "demo": "hil.demo",
}


class GateAgentGroup(click.Group):
    """The top-level group, with the areas' commands (AREA_COMMANDS) loaded when asked for."""

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | {name for name, module in AREA_COMMANDS.items()
                                                          if _installed(module)})

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is not None or name not in AREA_COMMANDS or not _installed(AREA_COMMANDS[name]):
            return command
        return getattr(importlib.import_module(AREA_COMMANDS[name]), name)


def _installed(module_name: str) -> bool:
    try:
        return importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:   # its package is not installed
        return False


@click.group(cls=GateAgentGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              envvar="GATE_AGENT_CONFIG", default=str(configmod.DEFAULT_PATH), show_default=True,
              help="Config file (TOML).")
@click.version_option(__version__, prog_name="gate-agent")
@click.pass_context
def cli(ctx, config_path):
    """gate-agent: the gate's card readers, plate camera, barrier, one-key alarm,
    and their records, kept locally and sent to the police-side platform.

    \b
    Example:
      gate-agent --config /etc/gate-agent/config.toml status
    """
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path


@cli.group("config")
def config_group():
    """Check or write configuration files.

    \b
    Example:
      gate-agent config example > config.toml && gate-agent config check config.toml
    """


@config_group.command("check")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--no-files", is_flag=True, help="Don't require the key and certificate files to exist.")
@click.pass_context
def config_check(ctx, file, no_files):
    """Validate a config file without starting anything.

    Prints one line per problem (key, bad value, what is allowed) and exits 2,
    or prints a summary and exits 0.

    \b
    Example:
      gate-agent config check /etc/gate-agent/config.toml
    """
    path = file or ctx.obj["config_path"]
    try:
        cfg = configmod.load(path, check_files=not no_files)
    except configmod.ConfigError as exc:
        raise UserError(str(exc)) from None
    click.echo(f"{path}: ok: device {cfg.device.id} at site {cfg.device.site}, "
               f"{len(cfg.lanes)} lane(s), {len(cfg.alarm.buttons)} alarm button(s), "
               f"{len(cfg.readers)} reader(s)")


@config_group.command("example")
def config_example():
    """Print a complete, commented example config.

    \b
    Example:
      gate-agent config example > /etc/gate-agent/config.toml
    """
    click.echo(configmod.example(), nl=False)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx, as_json):
    """Show the outbox depth per priority, the last sync and each subsystem's health.

    Reads the local database; works while the agent runs. Exits 1 when it
    cannot read it.

    \b
    Example:
      gate-agent status --json
    """
    from agent.status import collect, render
    cfg = load_config(ctx, check_files=False)
    report = collect(cfg)
    click.echo(json.dumps(report, ensure_ascii=False, indent=2) if as_json else render(report))
    if "error" in report:
        sys.exit(1)


@cli.command()
@click.option("--simulate", is_flag=True,
              help="Simulated gate hardware: gpiozero MockFactory pins (for the demo and the HIL rig).")
@click.pass_context
def run(ctx, simulate):
    """Run the agent: every subsystem, supervised, until SIGTERM.

    Logs structured lines to stdout (journald keeps them) and speaks sd_notify
    when started by systemd (Type=notify).

    \b
    Example:
      gate-agent --config /etc/gate-agent/config.toml run
    """
    from agent.runner import run_gate
    cfg = load_config(ctx)
    raise SystemExit(run_gate(cfg, simulate=simulate))


def main() -> None:
    try:
        cli(prog_name="gate-agent")
    except KeyboardInterrupt:
        sys.exit(130)
    except sqlite3.DatabaseError as exc:
        from agent.sqlite_threads import is_damage
        if not is_damage(exc):
            raise
        click.echo(f"gate-agent: a database in storage.data_dir is damaged: {exc} (gate-agent status "
                   "says more; docs/records.md, a damaged store)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
