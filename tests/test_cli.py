import click
from click.testing import CliRunner

from agent.cli import cli


def all_commands(group, prefix=()):
    for name, command in group.commands.items():
        yield prefix + (name,), command
        if isinstance(command, click.Group):
            yield from all_commands(command, prefix + (name,))


def test_every_command_has_help_with_example():
    runner = CliRunner()
    commands = list(all_commands(cli))
    assert len(commands) >= 4
    for path, command in commands:
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, path
        assert "Example" in result.output, f"{' '.join(path)} --help has no example"


def test_status_on_empty_store(config_file):
    result = CliRunner().invoke(cli, ["--config", str(config_file()), "status"])
    assert result.exit_code == 0, result.output
    assert "outbox: alarm 0" in result.output
    assert "last sync: never" in result.output
