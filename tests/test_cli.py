import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from agent.cli import AREA_COMMANDS, cli


def all_commands(group, prefix=()):
    with click.Context(group) as ctx:
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            yield prefix + (name,), command
            if isinstance(command, click.Group):
                yield from all_commands(command, prefix + (name,))


def test_every_command_has_help_with_example():
    runner = CliRunner()
    commands = list(all_commands(cli))
    assert {path[0] for path, _ in commands} >= set(AREA_COMMANDS) | {"config", "run", "status"}
    for path, command in commands:
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, path
        assert "Example" in result.output, f"{' '.join(path)} --help has no example"


@pytest.mark.parametrize("module", sorted(set(AREA_COMMANDS.values())))
def test_an_area_module_imports_before_the_cli(module):
    """The areas' modules import agent.cli: importing one first must not meet a half-made CLI."""
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_status_on_empty_store(config_file):
    result = CliRunner().invoke(cli, ["--config", str(config_file()), "status"])
    assert result.exit_code == 0, result.output
    assert "outbox: alarm 0" in result.output
    assert "last sync: never" in result.output
