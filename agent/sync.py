"""Store-and-forward to the police-side platform over MQTT (v5, QoS 1).

The SQLite outbox is the only place a message waits: a record leaves it
(`Store.mark_sent`) only once the broker's PUBACK for it is committed. paho
keeps nothing on disk; after a crash or restart the unconfirmed records are
simply read from the outbox again and re-sent with the same UUID (the
platform de-duplicates on it).

Threads around one paho client:
- the link thread connects (TLS, persistent session, last will), runs the
  network loop, and reconnects with capped exponential backoff and jitter;
- the pump thread owns the in-flight window: it re-reads the outbox head each
  time the window has room (so an alarm goes out next, ahead of any backlog;
  a stored alarm wakes it through Store.listeners) and publishes;
- the committer thread marks PUBACKed records sent, many per transaction
  (group commit), while the pump goes on publishing;
- the downlink thread handles commands, config and lists, so a slow command
  never holds the pump.

MQTT v5 is used because its PUBACK carries a reason code: a publish the
broker's ACL refuses is NOT confirmed, it stays in the outbox.

One exception to "only the outbox": an alarm the store refused (a failing SD
card, a file system remounted read-only) or holds up (a commit stalled past
0.5 s) is handed over on the bus
(ALARM_UNSTORED) and sent from memory, ahead of everything, with `seq` null; its
PUBACK is announced on the bus (ALARM_SENT_FROM_MEMORY) instead of committed.
The pump also outlives a store it cannot read, so such an alarm still goes.
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
import platform
import queue
import random
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent import __version__
from agent import bus as busmod
from agent import config as configmod
from agent.commands import CommandHandler, Refused, load_public_key, verify
from agent.records import ALARM, IMAGE
from agent.supervisor import DEGRADED, FAULT, OK, STARTING, STOPPED
from agent.topics import Topics

log = logging.getLogger("gate.sync")

SESSION_EXPIRY_S = 7 * 86400
"""How long the broker keeps our session (subscriptions, queued downlink) while we're away."""
ALARM_EXTRA = 16
"""Alarms may exceed the in-flight window by this many: they never wait for room."""
STATE_KEY = "sync"

# Settings the platform may change through the config topic (anything else is refused:
# the broker address, keys and pins stay under the installer's control).
REMOTE_SETTINGS = (
    "mqtt.health_interval_s", "alarm.siren_s", "alarm.ack_lamp_s",
    "vision.repeat_window_s", "vision.min_confidence",
    "decisions.pair_window_s", "decisions.unknown", "decisions.fuzzy_allow",
    "decisions.fuzzy_visitors", "decisions.fuzzy_min_confidence", "decisions.anti_passback",
    "log.level",
)


class _LastError(logging.Handler):
    """Keeps paho's last error line (paho reports a TLS alert only in its log)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage()


class SyncError(Exception):
    """The broker can't be used (unreachable, TLS or auth refused); str() says why."""


@dataclass
class Link:
    """The connection as the outside sees it: what health() and `sync status` show."""
    state: str = STARTING
    condition: str = "starting"   # connected | unreachable | tls_refused | refused | publish_refused
    detail: str = "not connected yet"
    connected: bool = False
    since: float = field(default_factory=time.time)


def broker_address(url: str) -> tuple[str, int, bool]:
    parts = urlsplit(url)
    tls = parts.scheme == "mqtts"
    return parts.hostname or "127.0.0.1", parts.port or (8883 if tls else 1883), tls


def describe_failure(exc: BaseException) -> tuple[str, str]:
    """(condition, one-line reason) for a failed connection attempt."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "tls_refused", f"TLS refused: broker certificate not accepted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if "CERTIFICATE" in reason.upper() or "ALERT" in reason.upper():
            return "tls_refused", f"TLS refused by the broker ({reason}): check the device certificate"
        return "tls_refused", f"TLS failed: {reason}"
    if isinstance(exc, ConnectionRefusedError):
        return "unreachable", "connection refused"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "unreachable", "timed out"
    if isinstance(exc, socket.gaierror):
        return "unreachable", f"name lookup failed: {exc.strerror}"
    if isinstance(exc, OSError):
        return "unreachable", exc.strerror or str(exc)
    return "unreachable", str(exc)


ALARM_RETRY_S = 0.8
LOST_RETRY_S = 0.5


def backoff(attempt: int, start: float, cap: float) -> float:
    """Capped exponential backoff with jitter (half fixed, half random)."""
    base = min(cap, start * 2 ** attempt)
    return base / 2 + random.uniform(0, base / 2)


class SyncEngine:
    """The MQTT link and the outbox pump; the subsystem runs it forever, `sync now` once."""

    def __init__(self, config, store, bus=None, *, persistent: bool = True, client_suffix: str = "",
                 downlink: bool = True, backoff_start: float = 0.5, backoff_max: float = 60.0,
                 commit_interval_s: float = 0.005, refused_retry_s: float = 30.0):
        self.config, self.store, self.bus = config, store, bus
        m = config.mqtt
        self.topics = Topics.from_config(config)
        self.host, self.port, self.tls = broker_address(m.url)
        self.window = m.inflight
        self.max_bytes = m.max_message_kb * 1024
        self.persistent, self.downlink = persistent, downlink
        self.backoff_start, self.backoff_max = backoff_start, backoff_max
        self.commit_interval_s = commit_interval_s
        self.refused_retry_s = refused_retry_s
        self.client_id = (m.client_id or config.device.id) + client_suffix
        self.link = Link()
        self.stats = collections.Counter()
        self.client = self._make_client()
        # pump-thread state
        self._inflight: dict[int, tuple[str, str, int, float]] = {}   # mid -> (what, key, prio, sent)
        self._held: set[str] = set()              # in flight or confirmed, not yet committed
        self._uncommitted = 0                      # confirmed, handed to the committer
        self._refused: dict[str, float] = {}      # key -> retry time
        self._from_memory: dict[str, object] = {}  # uuid -> alarm the store refused or holds up
        self._store_problem = ""                   # why the outbox cannot be read ("" when it can)
        self._urgent = False                      # an alarm was stored: look at the head now
        self._last_sweep = 0.0
        self._connected_at = 0.0
        # cross-thread
        self._acks: collections.deque = collections.deque()
        self._to_commit: collections.deque = collections.deque()   # (what, key, priority)
        self._committed: collections.deque = collections.deque()   # (ok, batch)
        self._commit_wake = threading.Event()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._idle = threading.Event()
        self._downlink_q: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._attempt = 0
        self._last_state_save = 0.0
        self._state_changed = False
        self.commands = self._make_command_handler() if downlink else None

    # --- the paho client ---------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        m = self.config.mqtt
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5)
        client.max_inflight_messages_set(self.window + ALARM_EXTRA)
        client.max_queued_messages_set(0)
        if self.tls:
            if not m.ca_file:
                raise SyncError(f"mqtt.url = {m.url!r} is TLS but mqtt.ca_file is empty: "
                                "the broker's certificate can't be checked")
            try:
                client.tls_set(ca_certs=m.ca_file, certfile=m.cert_file or None,
                               keyfile=m.key_file or None, cert_reqs=ssl.CERT_REQUIRED,
                               tls_version=ssl.PROTOCOL_TLS_CLIENT)
            except (OSError, ssl.SSLError) as exc:
                raise SyncError(f"cannot load TLS files (mqtt.ca_file / cert_file / key_file): {exc}") \
                    from None
            client.tls_insecure_set(False)   # the broker's hostname must match its certificate
        if m.username:
            password = None
            if m.password_file:
                try:
                    password = Path(m.password_file).read_text().strip()
                except OSError as exc:
                    raise SyncError(f"cannot read mqtt.password_file {m.password_file}: "
                                    f"{exc.strerror}") from None
            client.username_pw_set(m.username, password)
        client.will_set(self.topics.availability, b"offline", qos=1, retain=True)
        self._paho_errors = _LastError()
        paho_log = logging.getLogger("gate.sync.paho")
        paho_log.setLevel(logging.ERROR)
        if not any(isinstance(h, _LastError) for h in paho_log.handlers):
            paho_log.addHandler(self._paho_errors)
        else:
            self._paho_errors = next(h for h in paho_log.handlers if isinstance(h, _LastError))
        client.enable_logger(paho_log)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _make_command_handler(self) -> CommandHandler:
        key = None
        path = self.config.mqtt.command_key_file
        if path and Path(path).is_file():
            try:
                key = load_public_key(path)
            except Refused as exc:
                log.error("%s: every command will be refused", exc)
        else:
            log.warning("no command key at %s (mqtt.command_key_file): every command will be refused",
                        path)
        return CommandHandler(self.store, self.bus, device_id=self.config.device.id, public_key=key,
                              lanes=tuple(lane.name for lane in self.config.lanes),
                              resend_since=self.resend_since)

    # --- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        self._stopping.clear()
        self.store.listeners.append(self._on_record)
        if self.bus is not None:
            self.bus.subscribe(busmod.ALARM_UNSTORED, self._on_unstored_alarm)
        self._threads = [threading.Thread(target=self._guard, args=(self._link_loop,),
                                          name="sync-link", daemon=True),
                         threading.Thread(target=self._guard, args=(self._pump_loop,),
                                          name="sync-pump", daemon=True),
                         threading.Thread(target=self._guard, args=(self._commit_loop,),
                                          name="sync-commit", daemon=True)]
        if self.downlink:
            self._threads.append(threading.Thread(target=self._guard, args=(self._downlink_loop,),
                                                  name="sync-downlink", daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._on_record in self.store.listeners:
            self.store.listeners.remove(self._on_record)
        if self.bus is not None:
            self.bus.unsubscribe(busmod.ALARM_UNSTORED, self._on_unstored_alarm)
        if self._connected.is_set():
            try:
                self.client.publish(self.topics.availability, b"offline", qos=1, retain=True)
            except Exception:
                pass
        self._stopping.set()
        self._wake.set()
        self._commit_wake.set()
        self._downlink_q.put(None)
        for thread in self._threads:
            thread.join(timeout)
        try:
            self.client.disconnect()
        except Exception:
            pass
        self._set_link(STOPPED, "stopped", "stopped", connected=False)
        self._save_state()   # the committer has stopped: said here, where waiting is allowed

    @property
    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads) and bool(self._threads)

    def _guard(self, target) -> None:
        """Run one of the sync's threads; one that dies says so in the link's state. Only a dying
        committer writes that state itself: any other leaves it to the committer, so that it ends
        at once (the supervisor restarts a sync whose threads are not all alive) rather than
        after the write waited out a stalled card."""
        try:
            target()
        except Exception:
            log.exception("sync thread %s died", threading.current_thread().name)
            self._set_link(FAULT, "crashed", f"{threading.current_thread().name} thread died")
            if target == self._commit_loop:
                self._save_state()

    def _set_link(self, state: str, condition: str, detail: str, connected: bool | None = None) -> None:
        changed = (state, condition, detail) != (self.link.state, self.link.condition, self.link.detail)
        self.link.state, self.link.condition, self.link.detail = state, condition, detail
        if connected is not None:
            self.link.connected = connected
        if changed:
            self.link.since = time.time()
            self._state_changed = True
            self._commit_wake.set()

    def _save_changed_state(self) -> None:
        """The link's state into the store, on the committer thread: a write can wait seconds
        on a stalled card, and the link thread (paho's network loop, which carries the alarms
        sent from memory) and the pump must never wait for one."""
        if self._state_changed:
            self._state_changed = False
            self._last_state_save = time.monotonic()
            self._save_state()

    def _save_state(self) -> None:
        try:
            self.store.state_set(STATE_KEY, {
                "state": self.link.state, "condition": self.link.condition, "detail": self.link.detail,
                "connected": self.link.connected, "since": self.link.since,
                "broker": self.config.mqtt.url, "client_id": self.client_id,
                "sent_records": self.stats["records"], "sent_images": self.stats["images"],
                "updated": time.time()})
        except Exception as exc:
            log.warning("cannot save the sync state: %s", exc)

    # --- the link thread -----------------------------------------------------------

    def _link_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._connect()
            except Exception as exc:
                condition, reason = describe_failure(exc)
                self._retry_later(condition, reason)
                continue
            while not self._stopping.is_set():
                try:
                    rc = self.client.loop(timeout=0.05)
                except (OSError, ssl.SSLError) as exc:
                    condition, reason = describe_failure(exc)
                    self._lost(condition, reason)
                    break
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    self._connection_ended(rc)
                    break
            if not self._stopping.is_set():
                self._pause()

    def _connection_ended(self, rc) -> None:
        """Say why the network loop stopped: a TLS alert from the broker (it refused our
        certificate), a refused CONNECT (already reported), or a lost connection."""
        self._connected.clear()
        error, self._paho_errors.last = self._paho_errors.last, ""
        if error and any(word in error.upper() for word in ("SSL", "ALERT", "CERTIFICATE")):
            self._lost("tls_refused", f"TLS refused by the broker ({error}): check mqtt.cert_file "
                                      "and mqtt.key_file")
        elif self.link.condition == "tls_refused" and not error:
            return   # the same refusal, said less clearly this time: keep the clear reason
        elif self.link.condition in ("connected", "starting", "publish_refused", "unreachable"):
            self._lost("unreachable", f"connection lost ({error or mqtt.error_string(rc)})")

    def _connect(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        if self.persistent:
            props.SessionExpiryInterval = SESSION_EXPIRY_S
        self.client.connect(self.host, self.port, keepalive=self.config.mqtt.keepalive_s,
                            clean_start=not self.persistent, properties=props)
        sock = self.client.socket()
        if sock is not None:   # paho leaves Nagle on: small PUBLISHes would wait for ACKs
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _retry_later(self, condition: str, reason: str) -> None:
        self._lost(condition, reason)
        self._pause()

    def _pause(self) -> None:
        """Wait before the next connection attempt: backoff, but never more than
        ALARM_RETRY_S while an alarm waits, so an alarm reaches a returning broker in
        under 2 s (one connection attempt a second costs the network next to nothing)."""
        delay = backoff(self._attempt, self.backoff_start, self.backoff_max)
        self._attempt += 1
        log.debug("reconnecting to %s in %.1f s", self.config.mqtt.url, delay)
        started = time.monotonic()
        while not self._stopping.is_set():
            waited = time.monotonic() - started
            if waited >= delay or (waited >= ALARM_RETRY_S and self._alarm_waiting()):
                return
            self._stopping.wait(min(0.1, delay - waited))

    def _alarm_waiting(self) -> bool:
        """An alarm waits: one held in memory (the store refused or holds it up: asked first, it
        needs no disk), or one unsent in the outbox."""
        if self._from_memory:
            return True
        try:
            return self.store.has_unsent(ALARM)
        except Exception:
            return False

    def _lost(self, condition: str, reason: str) -> None:
        self._connected.clear()
        detail = {"unreachable": f"broker unreachable: {reason} ({self.config.mqtt.url})"}.get(
            condition, reason)
        if detail != self.link.detail:
            log.warning("sync: %s; retrying with backoff, nothing is dropped", detail)
        self._set_link(DEGRADED, condition, detail, connected=False)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            detail = f"broker refused the connection: {reason_code} (check mqtt.username, " \
                     f"password_file or the device certificate)"
            log.error("sync: %s", detail)
            self._set_link(DEGRADED, "refused", detail, connected=False)
            return
        self._attempt = 0
        self._connected_at = time.monotonic()
        client.publish(self.topics.availability, b"online", qos=1, retain=True)
        if self.downlink:
            client.subscribe([(self.topics.config, 1), (self.topics.lists, 1), (self.topics.commands, 1)])
        self._connected.set()
        log.info("sync: connected to %s as %s (session %s)", self.config.mqtt.url, self.client_id,
                 "resumed" if flags.session_present else "new")
        self._set_link(OK, "connected", f"connected to {self.config.mqtt.url}", connected=True)
        self._downlink_q.put(("status", None))
        self._wake.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        if self.link.condition == "connected" and not self._stopping.is_set():
            self._lost("unreachable", f"disconnected ({reason_code})")

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._acks.append((mid, reason_code))
        self._wake.set()

    def _on_message(self, client, userdata, message) -> None:
        self._downlink_q.put((message.topic, message.payload))

    def _on_record(self, record) -> None:
        if record.priority == ALARM:
            self._urgent = True
        self._idle.clear()
        self._wake.set()

    def _on_unstored_alarm(self, record) -> None:
        """An alarm the store refused or holds up (the alarm panel's thread, again every round
        until confirmed): kept here and published from memory by the pump."""
        if record.uuid in self._from_memory:
            return
        self._from_memory[record.uuid] = record
        self._urgent = True
        self._idle.clear()
        self._wake.set()

    # --- the pump thread ------------------------------------------------------------

    def _pump_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            self._take_acks()
            self._take_commits()
            if self._connected.is_set():
                self._sweep_stale()
                found = self._fill()
                if not found and not self._inflight and not self._uncommitted:
                    self._idle.set()
            else:
                self._idle.clear()
        self._take_acks()

    def _take_acks(self) -> None:
        confirmed = []
        while self._acks:
            mid, reason_code = self._acks.popleft()
            entry = self._inflight.pop(mid, None)
            if entry is None:
                continue
            what, key, prio, _sent = entry
            if reason_code.is_failure:
                self._refuse(what, key, reason_code)
                continue
            if what == "memory":
                self._confirmed_from_memory(key)
                continue
            confirmed.append((what, key, prio))
        if confirmed:
            self._uncommitted += len(confirmed)
            self._to_commit.extend(confirmed)
            self._commit_wake.set()

    def _confirmed_from_memory(self, uuid: str) -> None:
        self._from_memory.pop(uuid, None)
        self._held.discard(uuid)
        self.stats["records"] += 1
        log.warning("sync: the platform confirmed alarm %s, sent from memory (not stored yet)", uuid)
        if self.bus is not None:
            self.bus.publish(busmod.ALARM_SENT_FROM_MEMORY, uuid=uuid)

    def _refuse(self, what: str, key: str, reason_code) -> None:
        self._held.discard(key)
        self._refused[key] = time.monotonic() + self.refused_retry_s
        self.stats["refused"] += 1
        topic = self.topics.image(key) if what == "image" else f"{what} {key}"
        detail = f"broker refused a publish ({reason_code}) for {topic}: ACL? kept in the outbox, " \
                 f"retrying in {self.refused_retry_s:.0f} s"
        if self.link.condition != "publish_refused":
            log.error("sync: %s", detail)
        self._set_link(DEGRADED, "publish_refused", detail)

    def _take_commits(self) -> None:
        """Release what the committer thread wrote (or failed to write: then re-sent)."""
        while self._committed:
            ok, batch = self._committed.popleft()
            self._uncommitted -= len(batch)
            self._held.difference_update(key for _, key, _ in batch)
            if ok:
                self.stats["records"] += sum(what == "record" for what, _, _ in batch)
                self.stats["images"] += sum(what == "image" for what, _, _ in batch)
        if self.link.condition == "publish_refused" and not self._refused:
            self._set_link(OK, "connected", f"connected to {self.config.mqtt.url}")

    # --- the committer thread -------------------------------------------------------

    def _commit_loop(self) -> None:
        """Group commit: PUBACKs are marked sent many per transaction, while the pump goes
        on publishing (an fsync costs milliseconds; one per PUBACK would cap the rate)."""
        while True:
            self._commit_wake.wait(0.5)
            self._commit_wake.clear()
            if self._to_commit and not any(p == ALARM for _, _, p in list(self._to_commit)) \
                    and len(self._to_commit) < 1000:
                time.sleep(self.commit_interval_s)   # gather more, unless an alarm waits
            batch = []
            while self._to_commit:
                batch.append(self._to_commit.popleft())
            if batch:
                self._commit(batch)
            self._save_changed_state()
            if not batch and self._stopping.is_set():
                return

    def _commit(self, batch: list) -> None:
        records = [key for what, key, _ in batch if what == "record"]
        images = [key for what, key, _ in batch if what == "image"]
        try:
            for start in range(0, len(records), 500):
                self.store.mark_sent(records[start:start + 500])
            for sha in images:
                self.store.mark_image_sent(sha)
            ok = True
        except Exception as exc:
            # Not committed: they stay unsent and go again, with the same UUID.
            log.error("sync: cannot commit %d confirmation(s): %s", len(batch), exc)
            ok = False
        self._committed.append((ok, batch))
        self._wake.set()
        if ok and time.monotonic() - self._last_state_save > 5:
            self._state_changed = True

    def _excluded(self) -> set[str]:
        now = time.monotonic()
        for key in [k for k, t in self._refused.items() if t <= now]:
            del self._refused[key]
        return self._held | set(self._refused)

    def _fill(self) -> int:
        """Publish unstored alarms, then from the outbox head while the window has room;
        returns how many went."""
        sent = self._publish_from_memory(self._excluded())
        try:
            sent += self._fill_from_outbox()
        except Exception as exc:
            problem = str(exc) or type(exc).__name__
            if problem != self._store_problem:
                log.error("sync: cannot read the outbox (%s): %s; retrying", self.store.path, problem)
                self._store_problem = problem
                self.publish_status()   # the platform hears of it even with the outbox stuck
            return sent
        if self._store_problem:
            log.info("sync: the outbox can be read again")
            self._store_problem = ""
        return sent

    def _fill_from_outbox(self) -> int:
        room = self.window - len(self._inflight)
        urgent, self._urgent = self._urgent, False
        if self._inflight and room < max(1, self.window // 4) and not urgent:
            return 0   # refill in chunks: one outbox query per few PUBACKs, not per PUBACK
        excluded = self._excluded()
        if room <= 0:
            if len(self._inflight) >= self.window + ALARM_EXTRA:
                return 0
            head = self.store.pending(1, exclude=excluded)
            if head and head[0].priority == ALARM:
                self._publish_record(head[0])
                return 1
            return 0
        records = self.store.pending(room, exclude=excluded)
        urgent = [r for r in records if r.priority < IMAGE]
        for record in urgent:
            self._publish_record(record)
        sent = len(urgent)
        if sent < room:
            sent += self._publish_images(room - sent, excluded)
        for record in records[len(urgent):]:
            if sent >= room:
                break
            self._publish_record(record)
            sent += 1
        return sent

    def _publish_from_memory(self, excluded: set[str]) -> int:
        sent = 0
        for record in list(self._from_memory.values()):
            if record.uuid in excluded:
                continue
            self._publish_record(record, what="memory")
            sent += 1
        return sent

    def _publish_record(self, record, what: str = "record") -> None:
        payload = record.to_json().encode()
        if len(payload) > self.max_bytes:
            log.error("sync: record %s (%s) is %d bytes, over mqtt.max_message_kb; sent anyway "
                      "(records are never dropped)", record.uuid, record.kind, len(payload))
        info = self.client.publish(self.topics.record(record.kind), payload, qos=1)
        if self._accepted(info, record.uuid):
            self._inflight[info.mid] = (what, record.uuid, record.priority, time.monotonic())
            self._held.add(record.uuid)

    def _accepted(self, info, key: str) -> bool:
        """Whether paho took the message (queued for a reconnect counts as taken). One that
        met a dying connection goes again from the outbox as soon as the link is back."""
        if info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            return True
        if info.rc == mqtt.MQTT_ERR_CONN_LOST:
            log.warning("sync: %s met a lost connection; it goes again after the reconnect", key)
            self._refused[key] = time.monotonic() + LOST_RETRY_S
            return False
        log.error("sync: paho refused to publish %s: %s; it stays in the outbox", key,
                  mqtt.error_string(info.rc))
        self._refused[key] = time.monotonic() + self.refused_retry_s
        return False

    def _sweep_stale(self, max_age_s: float = 120.0) -> None:
        """A message unconfirmed for minutes while connected is forgotten here and re-sent
        from the outbox (same UUID), so a lost PUBACK can't shrink the window for good."""
        now = time.monotonic()
        if now - self._last_sweep < 5.0:
            return
        self._last_sweep = now
        for mid, (what, key, _prio, sent) in list(self._inflight.items()):
            waited = now - max(sent, self._connected_at)   # paho re-sends its own on a reconnect
            if waited > max_age_s and self.link.connected:
                log.warning("sync: no PUBACK for %s %s in %.0f s; sending it again", what, key, waited)
                del self._inflight[mid]
                self._held.discard(key)

    def _publish_images(self, room: int, excluded: set[str]) -> int:
        sent = 0
        for image in self.store.pending_images(room + len(excluded)):
            if sent >= room:
                break
            sha = image["sha256"]
            if sha in excluded:
                continue
            data = self._image_bytes(image)
            if data is None:
                continue
            props = Properties(PacketTypes.PUBLISH)
            props.ContentType = "image/jpeg"
            props.UserProperty = [("record_uuid", image["record_uuid"] or ""), ("role", image["role"])]
            info = self.client.publish(self.topics.image(sha), data, qos=1, properties=props)
            if self._accepted(info, sha):
                self._inflight[info.mid] = ("image", sha, IMAGE, time.monotonic())
                self._held.add(sha)
                sent += 1
        return sent

    def _image_bytes(self, image: dict) -> bytes | None:
        """The image's bytes, or None after reporting why it can't be sent (then it
        leaves the queue: it would never get better by retrying)."""
        sha, size = image["sha256"], image["size"]
        path = self.store.image_path(sha)
        problem = None
        if size > self.max_bytes:
            problem = ("image_too_big", f"image {sha} ({image['role']}, record {image['record_uuid']}) "
                       f"is {size // 1024} KiB, over mqtt.max_message_kb = {self.max_bytes // 1024}; "
                       "kept locally, not sent")
        else:
            try:
                data = path.read_bytes()
            except OSError as exc:
                problem = ("image_missing", f"image {sha} unreadable at {path}: {exc.strerror}")
            else:
                if hashlib.sha256(data).hexdigest() != sha:
                    problem = ("image_corrupt", f"image {sha} at {path} no longer matches its sha256")
                else:
                    return data
        condition, detail = problem
        log.error("sync: %s", detail)
        try:
            self.store.add("fault", {"subsystem": "sync", "condition": condition, "detail": detail,
                                     "sha256": sha, "record_uuid": image["record_uuid"]})
            self.store.mark_image_sent(sha)
            self.stats["images_not_sent"] += 1
        except Exception as exc:
            log.error("sync: cannot record the unsent image %s: %s", sha, exc)
        return None

    # --- re-sending -----------------------------------------------------------------

    def resend_since(self, since: float) -> int:
        """Put every record created since `since` back in the outbox (platform asked)."""
        cur = self.store.db.execute("UPDATE records SET sent_at = NULL WHERE created >= ? "
                                    "AND sent_at IS NOT NULL", [since])
        self.store.db.execute("UPDATE images SET sent_at = NULL WHERE created >= ? "
                              "AND sent_at IS NOT NULL", [since])
        self._wake.set()
        log.info("sync: %d record(s) since %s queued again", cur.rowcount, since)
        return cur.rowcount

    # --- draining once (`sync now`, tests) ----------------------------------------------

    def drain(self, timeout: float = 60.0, connect_timeout: float = 10.0) -> dict:
        """Connect, send everything in the outbox, commit, disconnect; the counts sent.
        Raises SyncError if the broker can't be used."""
        self.start()
        try:
            deadline = time.monotonic() + connect_timeout
            while not self._connected.wait(0.05):
                if time.monotonic() > deadline or self.link.condition in ("tls_refused", "refused"):
                    raise SyncError(self.link.detail if self.link.condition != "starting"
                                    else f"no connection to {self.config.mqtt.url} in {connect_timeout} s")
            deadline = time.monotonic() + timeout
            self._idle.clear()
            self._wake.set()
            while not self._idle.wait(0.05):
                if time.monotonic() > deadline:
                    raise SyncError(f"outbox not drained in {timeout} s: {self.link.detail}")
        finally:
            self.stop()
        return dict(self.stats)

    # --- downlink -----------------------------------------------------------------------

    def _downlink_loop(self) -> None:
        while True:
            item = self._downlink_q.get()
            if item is None or self._stopping.is_set():
                return
            topic, payload = item
            try:
                if topic == "status":
                    self.publish_status()
                elif topic == self.topics.commands:
                    reply = self.commands.handle(payload)
                    self.client.publish(self.topics.command_reply, json.dumps(reply, ensure_ascii=False),
                                        qos=1)
                elif topic == self.topics.config:
                    self._apply_config(payload)
                elif topic == self.topics.lists:
                    self._apply_lists(payload)
            except Exception:
                log.exception("sync: handling a message on %s failed", topic)

    def _signed_versioned(self, payload: bytes, what: str) -> dict | None:
        if not payload:
            return None   # retained message cleared
        try:
            doc = verify(self.commands.public_key, payload)
        except Refused as exc:
            log.error("sync: %s update refused: %s", what, exc)
            self._note_downlink(what, {"refused": str(exc)})
            return None
        if not isinstance(doc.get("version"), int) or isinstance(doc.get("version"), bool):
            log.error("sync: %s update refused: version must be an integer", what)
            self._note_downlink(what, {"refused": "version must be an integer"})
            return None
        if doc.get("device_id") not in (None, self.config.device.id):
            log.error("sync: %s update for device %s refused", what, doc.get("device_id"))
            return None
        return doc

    def _note_downlink(self, what: str, info: dict) -> None:
        current = self.store.state_get(f"downlink.{what}", {})
        current.update(info, updated=time.time())
        self.store.state_set(f"downlink.{what}", current)
        self.publish_status()

    def _apply_config(self, payload: bytes) -> None:
        doc = self._signed_versioned(payload, "config")
        if doc is None:
            return
        current = self.store.state_get("remote_config", {"version": 0, "settings": {}})
        if doc["version"] <= current["version"]:
            return
        settings = doc.get("settings", {})
        problems = check_remote_settings(settings)
        if problems:
            log.error("sync: config version %d refused: %s", doc["version"], "; ".join(problems))
            self._note_downlink("config", {"refused": "; ".join(problems), "offered": doc["version"]})
            return
        self.store.state_set("remote_config", {"version": doc["version"], "settings": settings,
                                               "applied_at": time.time()})
        log.warning("sync: config version %d stored: %s; mqtt.health_interval_s takes effect now, "
                    "the rest when the agent next starts", doc["version"], settings)
        self._note_downlink("config", {"version": doc["version"], "refused": None})

    def _apply_lists(self, payload: bytes) -> None:
        doc = self._signed_versioned(payload, "lists")
        if doc is None:
            return
        current = self.store.state_get("downlink.lists", {})
        if doc["version"] <= (current.get("version") or 0):
            return
        try:
            from agent.lists import apply_update
        except ImportError:
            log.error("sync: lists version %d received but this agent can't apply lists yet "
                      "(agent.lists missing)", doc["version"])
            self._note_downlink("lists", {"refused": "lists not supported by this agent yet",
                                          "offered": doc["version"]})
            return
        try:
            version = self._apply_to_lists(apply_update, doc)
        except Exception as exc:
            log.error("sync: lists version %s refused: %s", doc["version"], exc)
            self._note_downlink("lists", {"refused": str(exc), "offered": doc["version"]})
            return
        if self.bus is not None:
            self.bus.publish(busmod.LISTS_UPDATED, version=version)
        self._note_downlink("lists", {"version": version, "refused": None})

    def _apply_to_lists(self, apply_update, doc: dict) -> int:
        """Into the running decisions' lists, or, while decisions is down, straight into lists.db
        (the update is not lost waiting for a retained message to come round again)."""
        from agent.lists import Lists, running_lists
        from agent.privacy import load_key
        running = running_lists(self.store.dir)
        if running is not None:
            return apply_update(running, doc)
        lists = Lists(self.store.dir, load_key(self.config.decisions.list_key_file), self.config.device.timezone)
        try:
            return apply_update(lists, doc)
        finally:
            lists.close()

    def status(self) -> dict:
        """What the retained status message says. Never raises for the store: a store that
        cannot be read (damaged, its folder gone) is what the message then reports, and the
        pump that sends it goes on."""
        status = {"online": True, "time": time.time(), "agent_version": __version__}
        try:
            status.update(self._store_status())
        except Exception as exc:   # a damaged store: say that much, directly
            status.update(store_damaged=self.store.damage_found or None, store_unreadable=str(exc))
        return status

    def _store_status(self) -> dict:
        config = self.store.state_get("remote_config", {})
        lists = self.store.state_get("downlink.lists", {})
        depth = self.store.depth()
        running = getattr(self.config, "remote_version", None)
        return {"config_version": config.get("version"),
                "config_running": running,
                "config_waits_for_restart": config.get("version") != running,
                "lists_version": lists.get("version"),
                "lists_refused": lists.get("refused"),
                "config_refused": self.store.state_get("downlink.config", {}).get("refused"),
                "disk_full": bool(self.store.disk_full), "disk_free_mb": self.store.disk_free_mb(),
                "store_damaged": self.store.damage_found or None,
                "outbox": depth["by_priority"], "oldest_unsent_s": depth["oldest_unsent_s"]}

    def publish_status(self) -> None:
        """The retained status message: sent directly, so it goes out even on a full disk."""
        if self._connected.is_set():
            self.client.publish(self.topics.status, json.dumps(self.status(), ensure_ascii=False),
                                qos=1, retain=True)


def check_remote_settings(settings) -> list[str]:
    if not isinstance(settings, dict):
        return ["settings must be an object"]
    problems = []
    for key, value in settings.items():
        if key not in REMOTE_SETTINGS:
            problems.append(f"{key}: not settable remotely; allowed: {', '.join(REMOTE_SETTINGS)}")
            continue
        section, name = key.split(".")
        spec = configmod.SCHEMA.fields[section].fields[name]
        configmod._validate_value(spec, key, value, problems)
    return problems


def versions() -> dict:
    return {"agent": __version__, "python": platform.python_version(), "paho_mqtt": paho.mqtt.__version__}


class SyncSubsystem:
    """The supervisor's view of the sync: started once, health from the link state."""

    name = "sync"

    def __init__(self, gate, **engine_options):
        self.gate = gate
        self.engine_options = engine_options
        self.engine: SyncEngine | None = None
        self._resync_handler = None

    def start(self) -> None:
        self.engine = SyncEngine(self.gate.config, self.gate.store, self.gate.bus, **self.engine_options)
        self.engine.start()

    def stop(self) -> None:
        if self.engine:
            self.engine.stop()

    def health(self) -> dict:
        engine = self.engine
        if engine is None:
            return {"state": STOPPED, "detail": "not started"}
        if not engine.alive and engine.link.state != STOPPED:
            return {"state": FAULT, "detail": engine.link.detail or "sync threads died"}
        link = engine.link
        state, detail = link.state, link.detail
        if engine.store.damage_found and state == OK:
            state, detail = DEGRADED, (f"store damaged while running ({engine.store.damage_found}): "
                                       "restart the agent to set it aside and requeue what it holds")
        elif engine._store_problem and state == OK:
            state, detail = DEGRADED, f"cannot read the outbox: {engine._store_problem}"
        elif engine.store.undecodable and state == OK:
            state, detail = DEGRADED, (f"{len(engine.store.undecodable)} record(s) in the outbox cannot "
                                       "be read back: kept, not sent (fault unreadable_record)")
        elif engine.store.disk_full and state == OK:
            state, detail = DEGRADED, "disk full: only alarms, alerts, decisions and tamper are stored"
        return {"state": state, "detail": detail, "condition": link.condition,
                "connected": link.connected, "inflight": len(engine._inflight),
                "sent_records": engine.stats["records"]}


def build(gate) -> list:
    return [SyncSubsystem(gate)]
