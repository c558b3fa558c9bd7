"""`gate-agent sync status`, `sync now` and `sync requeue`."""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import click

from agent.cli import UserError, load_config


@click.group("sync")
def sync():
    """Store-and-forward to the platform's MQTT broker: look at it, or drain it by hand.

    \b
    Example:
      gate-agent sync status
      gate-agent sync now --timeout 120
      gate-agent sync requeue gate.db.damaged-20261125T123000Z
    """


def _open_store(cfg, need_key: bool):
    from agent.privacy import KeyError_, Sealer, load_key
    from agent.store import StoreError, open_store
    sealer = None
    try:
        if need_key:
            sealer = Sealer(load_key(cfg.privacy.key_file))
        return open_store(cfg, sealer)
    except (KeyError_, StoreError) as exc:
        raise UserError(str(exc)) from None


@sync.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def sync_status(ctx, as_json):
    """Show the outbox depth, the last confirmed send and the connection state.

    The connection state is the one the running agent saved last (with the time
    it changed); it reads the local database and works beside a running agent.

    \b
    Example:
      gate-agent sync status --json
    """
    from agent.sync import STATE_KEY
    cfg = load_config(ctx, check_files=False)
    store = _open_store(cfg, need_key=False)
    try:
        last = store.last_sent()
        report = {"broker": cfg.mqtt.url, "outbox": store.depth(), "last_sync": last,
                  "last_sync_age_s": round(time.time() - last, 1) if last else None,
                  "link": store.state_get(STATE_KEY, None)}
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(report, ensure_ascii=False, indent=2))
        return
    prio = report["outbox"]["by_priority"]
    click.echo(f"broker: {report['broker']}")
    click.echo("outbox: " + ", ".join(f"{k} {v}" for k, v in prio.items())
               + f" (oldest unsent {report['outbox']['oldest_unsent_s']} s)")
    age = report["last_sync_age_s"]
    click.echo("last sync: " + (f"{age} s ago" if age is not None else "never"))
    link = report["link"]
    if not link:
        click.echo("connection: unknown (the agent has not run the sync yet)")
    else:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(link["since"]))
        click.echo(f"connection: {link['state']} ({link['condition']}) since {since}: {link['detail']}")


@sync.command("now")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(min=1),
              help="Give up after this many seconds.")
@click.pass_context
def sync_now(ctx, timeout):
    """Drain the outbox once against the configured broker, then report the counts.

    Uses its own MQTT client id (the device id + '-now') and a clean session, so it
    can run beside the agent; a record both send is de-duplicated by its UUID.

    \b
    Example:
      gate-agent sync now --timeout 120
    """
    import logging
    from agent.sync import SyncEngine, SyncError
    logging.getLogger("gate").addHandler(logging.NullHandler())   # the outcome is the one line below
    cfg = load_config(ctx)
    store = _open_store(cfg, need_key=True)
    try:
        before = store.depth()["total"]
        try:
            engine = SyncEngine(cfg, store, persistent=False, downlink=False, client_suffix="-now",
                                backoff_max=2.0)
            stats = engine.drain(timeout=timeout, connect_timeout=min(timeout, 15.0))
        except SyncError as exc:
            raise UserError(f"sync now: {exc}") from None
        after = store.depth()["total"]
    finally:
        store.close()
    click.echo(f"sent {stats.get('records', 0)} record(s) and {stats.get('images', 0)} image(s) to "
               f"{cfg.mqtt.url}; outbox {before} -> {after}"
               + (f"; {stats['refused']} refused by the broker (kept)" if stats.get("refused") else "")
               + (f"; {stats['images_not_sent']} image(s) too big or unreadable (reported)"
                  if stats.get("images_not_sent") else ""))


@sync.command("requeue")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Only say what would go back into the outbox.")
@click.pass_context
def sync_requeue(ctx, file, dry_run):
    """Put the unsent records of a damaged store back into the outbox.

    FILE is a store the agent set aside (gate.db.damaged-<UTC time>, named by
    `gate-agent status`; a bare name is looked for in storage.data_dir), or a copy
    of an old gate.db. What SQLite can still read of it goes back with its own
    UUIDs (the platform de-duplicates any it did get); rows on damaged pages are
    skipped and counted. The file is only read: delete it yourself once the
    platform has the records. Works beside a running agent. A file another
    process holds locked, or one that cannot be read, is named and nothing is
    queued: run it again later.

    \b
    Example:
      gate-agent sync requeue gate.db.damaged-20261125T123000Z --dry-run
      gate-agent sync requeue /var/lib/gate-agent/gate.db.damaged-20261125T123000Z
    """
    from agent.salvage import describe_read, describe_requeue
    cfg = load_config(ctx)
    data_dir = Path(cfg.storage.data_dir)
    if not file.exists() and not file.is_absolute() and (data_dir / file).exists():
        file = data_dir / file
    if file.resolve() == (data_dir / "gate.db").resolve():
        raise UserError(f"{file} is the live store: requeue reads a store set aside or copied")
    salvage = _read_set_aside(file)
    for line in describe_read(salvage):
        click.echo(line)
    if dry_run:
        click.echo("dry run: nothing queued")
        return
    store = _open_store(cfg, need_key=True)
    try:
        report = _requeue_into(store, salvage)
    finally:
        store.close()
    for line in describe_requeue(report):
        click.echo(line)
    click.echo(f"{file} is left as it was: delete it once `gate-agent sync status` shows the outbox drained")


def _read_set_aside(file: Path):
    from agent.salvage import SalvageError, SalvageRetry, read_unsent
    try:
        return read_unsent(file)
    except SalvageError as exc:
        raise UserError(f"{exc}; nothing requeued (keep the file for the platform's operators)") from None
    except SalvageRetry as exc:
        raise UserError(f"{exc}; nothing requeued") from None
    except OSError as exc:
        raise UserError(f"cannot read {exc.filename or file}: {exc.strerror or exc}; nothing requeued, "
                        "run it again once it can be read") from None
    except sqlite3.Error as exc:
        raise UserError(f"SQLite cannot read {file}: {exc}; nothing requeued, run it again later") from None


def _requeue_into(store, salvage) -> dict:
    from agent.store import StoreError
    try:
        return store.requeue(salvage)
    except StoreError as exc:
        raise UserError(f"requeue stopped: {exc}; what was queued stays queued, run it again "
                        "when there is room") from None
    except (sqlite3.Error, OSError) as exc:
        raise UserError(f"requeue into {store.path} stopped: {exc}; what was queued stays queued, "
                        "run it again") from None
