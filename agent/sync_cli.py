"""`gate-agent sync status` and `gate-agent sync now`."""
from __future__ import annotations

import json
import time

import click

from agent.cli import UserError, load_config


@click.group("sync")
def sync():
    """Store-and-forward to the platform's MQTT broker: look at it, or drain it by hand.

    \b
    Example:
      gate-agent sync status
      gate-agent sync now --timeout 120
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
