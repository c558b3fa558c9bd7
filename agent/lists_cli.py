"""`gate-agent lists`: import, show and version the access lists (for installers)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from agent.cli import UserError, load_config
from agent.lists import LIST_NAMES, ListError, Lists


def _open(ctx) -> Lists:
    config = load_config(ctx, check_files=False)
    try:
        return Lists.from_config(config)
    except ListError as exc:
        raise UserError(str(exc)) from None


@click.group("lists")
def lists():
    """Staff vehicles, staff, visitor passes and the police watchlist held on this device.

    ID numbers are stored as keyed hashes and never shown in clear.

    \b
    Example:
      gate-agent lists import staff_vehicles.csv
      gate-agent lists show --list staff_vehicles
    """


@lists.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--list", "list_name", type=click.Choice(LIST_NAMES),
              help="Which list; by default the file's name (staff_vehicles.csv -> staff_vehicles).")
@click.option("--replace", is_flag=True, help="Replace the whole list instead of adding to it.")
@click.pass_context
def import_(ctx, file, list_name, replace):
    """Load a CSV file (UTF-8 or GB18030, first line the column names) into a list.

    Entries are added, or updated when their ref (by default the plate, badge or
    ID number) is already there. Any bad line: nothing is imported, and every bad
    line is named with its column. A running agent picks the change up within seconds.

    \b
    Example:
      gate-agent lists import /media/usb/visitors.csv --list visitors
      gate-agent lists import staff.csv --replace
    """
    if list_name is None:
        stem = Path(file).stem.lower()
        if stem not in LIST_NAMES:
            raise UserError(f"{file}: which list? name it with --list ({', '.join(LIST_NAMES)})")
        list_name = stem
    store = _open(ctx)
    try:
        count = store.import_csv(file, list_name, replace=replace)
        total = store.index.counts()[list_name]
    except ListError as exc:
        raise UserError(str(exc)) from None
    finally:
        store.close()
    click.echo(f"{list_name}: {count} entr{'y' if count == 1 else 'ies'} "
               f"{'replaced the list' if replace else 'imported'}; {total} in the list now")


@lists.command("show")
@click.option("--list", "list_name", type=click.Choice(LIST_NAMES), help="Only this list.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--limit", type=int, default=0, help="Show at most this many entries (0: all).")
@click.pass_context
def show(ctx, list_name, as_json, limit):
    """Print list entries. ID numbers are masked (2101**********123X) with the
    start of their keyed hash; names are masked.

    \b
    Example:
      gate-agent lists show --list watchlist --json
    """
    store = _open(ctx)
    try:
        entries = store.entries(list_name)
        if limit:
            entries = entries[:limit]
        for entry in entries:
            public = entry.public(store.tz)
            if as_json:
                click.echo(json.dumps(public, ensure_ascii=False))
            else:
                click.echo("  ".join(f"{k}={v}" for k, v in public.items()))
        if not as_json:
            click.echo(f"({len(entries)} entr{'y' if len(entries) == 1 else 'ies'})")
    finally:
        store.close()


@lists.command("version")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def version(ctx, as_json):
    """Print the lists' version (the platform's), local revision and entry counts.

    \b
    Example:
      gate-agent lists version
    """
    store = _open(ctx)
    try:
        info = store.describe()
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(info, ensure_ascii=False))
        return
    counts = ", ".join(f"{name} {n}" for name, n in info["counts"].items())
    click.echo(f"version {info['version']} (revision {info['revision']}, {info['source'] or 'empty'}): {counts}")
