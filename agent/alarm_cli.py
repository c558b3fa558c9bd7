"""`gate-agent drill`: turn drill mode on or off, or show it.

It works through the store: the command writes a request under "drill_request"
(the same place a signed DRILL command lands), the running agent reads it
within half a second, lights the drill lamp and publishes the effective state
under "drill". The command waits for that to show the agent picked it up.
"""
from __future__ import annotations

import time
from datetime import datetime

import click

from agent.alarm import DRILL_MAX_S, Drill
from agent.cli import UserError, load_config
from agent.store import StoreError, open_store


def _open(ctx):
    config = load_config(ctx, check_files=False)
    try:
        store = open_store(config)
    except StoreError as exc:
        raise UserError(str(exc)) from None
    return config, store


def _when(epoch: float | None, tz: str) -> str:
    if not epoch:
        return "-"
    from zoneinfo import ZoneInfo
    return datetime.fromtimestamp(epoch, ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M:%S")


def _wait_for_agent(store, want_on: bool, since: float, wait_s: float) -> dict | None:
    """The agent's published state once it reflects the request, or None after wait_s."""
    deadline = time.monotonic() + wait_s
    while True:
        shown = store.state_get("drill", {}) or {}
        if shown.get("updated", 0) >= since and bool(shown.get("on")) == want_on:
            return shown
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


@click.group("drill")
def drill():
    """Drill mode: alarms pressed while it is on are marked drill=true end to end.

    Drill mode also comes from drills.schedule windows in the config and from
    signed commands. The drill lamp shows it.

    \b
    Example:
      gate-agent drill on --minutes 30
      gate-agent drill status
      gate-agent drill off
    """


@drill.command("on")
@click.option("--minutes", type=int, default=30, show_default=True,
              help=f"Drill mode ends by itself after this (1 to {DRILL_MAX_S // 60}).")
@click.option("--wait", "wait_s", type=float, default=3.0, show_default=True,
              help="Seconds to wait for the running agent to confirm.")
@click.pass_context
def drill_on(ctx, minutes, wait_s):
    """Turn drill mode on for a while.

    \b
    Example:
      gate-agent drill on --minutes 45
    """
    if not 1 <= minutes <= DRILL_MAX_S // 60:
        raise UserError(f"--minutes {minutes}: expected 1 to {DRILL_MAX_S // 60} "
                        "(a drill always ends by itself, so real alarms are never left marked as drills)")
    _request(ctx, True, minutes, wait_s)


@drill.command("off")
@click.option("--wait", "wait_s", type=float, default=3.0, show_default=True,
              help="Seconds to wait for the running agent to confirm.")
@click.pass_context
def drill_off(ctx, wait_s):
    """Turn drill mode off now (a scheduled drill window stays on until it ends).

    \b
    Example:
      gate-agent drill off
    """
    _request(ctx, False, 0, wait_s)


def _request(ctx, on: bool, minutes: int, wait_s: float) -> None:
    config, store = _open(ctx)
    try:
        now = time.time()
        drill_state = Drill(store, config.drills.schedule, config.device.timezone)
        request = drill_state.set(on, "cli", now + minutes * 60 if on else None, now=now)
        expected = drill_state.state(now)["on"]
        shown = _wait_for_agent(store, expected, now, wait_s)
    finally:
        store.close()
    tz = config.device.timezone
    if on:
        click.echo(f"drill mode ON requested until {_when(request['until'], tz)}")
    else:
        click.echo("drill mode off requested" + (" (a scheduled drill window is still open)"
                                                 if expected else ""))
    if shown is None:
        click.echo("the agent has not picked it up yet (is it running?); "
                   "it applies the request when it starts, until it expires")
    else:
        click.echo(f"the agent confirmed: drill mode {'ON' if shown['on'] else 'off'}"
                   + (f" ({shown['source']})" if shown.get("on") else ""))


@drill.command("status")
@click.pass_context
def drill_status(ctx):
    """Show drill mode: what was asked, what the running agent applies, and the schedule.

    \b
    Example:
      gate-agent drill status
    """
    config, store = _open(ctx)
    try:
        request = store.state_get("drill_request", {}) or {}
        shown = store.state_get("drill", {}) or {}
        drill_state = Drill(store, config.drills.schedule, config.device.timezone)
        drill_state.request = request
        now_state = drill_state.state()
    finally:
        store.close()
    tz = config.device.timezone
    if now_state["on"]:
        click.echo(f"drill mode: ON ({now_state['source']}, until {_when(now_state['until'], tz)})")
    else:
        click.echo("drill mode: off")
    if request:
        click.echo(f"last request: {'on' if request.get('on') else 'off'} from {request.get('source')} "
                   f"at {_when(request.get('set_at'), tz)}"
                   + (f", until {_when(request.get('until'), tz)}" if request.get("on") else ""))
    if shown:
        click.echo(f"agent shows: {'ON' if shown.get('on') else 'off'} "
                   f"(as of {_when(shown.get('updated'), tz)})")
    else:
        click.echo("agent shows: nothing yet (has it run?)")
    for item in config.drills.schedule:
        click.echo(f"scheduled: {item}")
