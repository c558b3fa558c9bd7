"""`gate-agent hil`: run the hardware-in-the-loop scenarios and report."""
from __future__ import annotations

import click

from agent.cli import UserError


@click.group("hil")
def hil():
    """Hardware-in-the-loop rig: the real agent process against simulated hardware
    and a real broker, driven by scenario files (hil/scenarios/*.toml).

    \b
    Example:
      gate-agent hil list
      gate-agent hil run --fast --junit hil-report.xml
    """


@hil.command("list")
def list_scenarios():
    """List the scenarios, the parts each needs, and which of those are not built yet.

    \b
    Example:
      gate-agent hil list
    """
    from hil.scenario import ScenarioError, discover
    try:
        scenarios = discover()
    except ScenarioError as exc:
        raise UserError(str(exc)) from None
    for s in scenarios:
        missing = s.missing_parts()
        state = f"not built yet: {', '.join(missing)}" if missing else "ready"
        fast = "fast" if s.fast else "slow"
        click.echo(f"{s.path.stem:28} {fast:4}  needs {', '.join(s.needs) or 'nothing':34} {state}")


@hil.command("run")
@click.argument("scenario", nargs=-1)
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False), help="Also write JUnit XML here.")
@click.option("--fast", is_flag=True, help="Only the scenarios marked fast = true (what `make test` runs).")
@click.option("--wiring", type=click.Path(exists=True, dir_okay=False),
              help="Real Pi mode: loopback wiring file (see hil/wiring.example.toml); no --simulate.")
@click.option("--keep", is_flag=True, help="Keep every scenario's temp folder (config, database, agent.log).")
@click.option("-v", "--verbose", is_flag=True, help="Show every check's detail and the agent log of failures.")
def run(scenario, junit_path, fast, wiring, keep, verbose):
    """Run scenarios (all, or those named) and print a table of verdicts and timings.

    A scenario whose parts are not built yet is reported SKIPPED with the reason.
    Exits 1 if any scenario failed or could not be played.

    \b
    Example:
      gate-agent hil run
      gate-agent hil run alarm_broker_down staff_car --junit hil-report.xml
      gate-agent hil run --wiring /etc/gate-agent/wiring.toml alarm_press
    """
    from hil.pins import Wiring
    from hil.report import junit, table
    from hil.rig import ERROR, FAIL, Rig
    from hil.scenario import ScenarioError, discover
    try:
        scenarios = discover(list(scenario))
        loops = Wiring.load(wiring) if wiring else None
    except (ScenarioError, ValueError) as exc:
        raise UserError(str(exc)) from None
    if fast:
        scenarios = [s for s in scenarios if s.fast]
    if not scenarios:
        raise UserError("no scenario to run" + (" (none is marked fast = true)" if fast else ""))
    results = []
    for s in scenarios:
        click.echo(f"== {s.name}", err=True)
        results.append(Rig(s, wiring=loops, keep=keep, say=lambda t: click.echo(t, err=True)).run())
        click.echo(f"   {results[-1].status} {results[-1].reason}", err=True)
    click.echo(table(results, verbose=verbose))
    if junit_path:
        junit(results, junit_path)
        click.echo(f"JUnit XML: {junit_path}")
    if any(r.status in (FAIL, ERROR) for r in results):
        raise SystemExit(1)
