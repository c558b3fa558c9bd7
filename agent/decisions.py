"""Who may pass: plate, card and badge reads at a lane, checked against the lists.

A passage is what happens at one lane within decisions.pair_window_s: at most one
plate read and one card or badge read. Every read is decided at once, with the
other reads of its passage, so a staff badge swiped after an unknown plate opens
the barrier, and an ID card on the watchlist keeps a staff plate read in the same
passage from opening it.

The order of things: the decision is computed from the in-memory lists (no disk),
then written as an access_decision record (an alert first for a watchlist hit),
and only then is the barrier or the guard asked through the bus.

Rules, first that applies:
  watchlist     any input on the police watchlist (a plate one character off counts,
                near=true): ask_guard, an alert record, the guard's lamp; the gate
                shows the driver nothing.
  anti_passback a card or badge that entered, entering again before it exits: deny.
  allow         any input matching a valid entry (dates, schedule, lane, unused pass).
  denied        inputs known but not valid now (expired, not_yet_valid,
                outside_schedule, wrong_lane, pass_used): deny.
  no_plate      a vehicle on the loop with no plate read and nothing else known:
                ask_guard whatever decisions.unknown says (its plate may be there
                but unreadable: a person has to look).
  unknown       decisions.unknown (ask_guard or deny).
"""
from __future__ import annotations

import hmac
import logging
import queue
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from agent import bus as topics
from agent.identity import mask_id_number
from agent.lists import (DamagedLists, Entry, Index, Lists, in_schedule, normalise_badge, normalise_id,
                         parse_days, parse_hours, register, unregister)
from agent.platecodes import normalise as normalise_plate
from agent.sqlite_threads import set_aside

log = logging.getLogger("gate.decisions")

READ_KINDS = {"plate_read": "plate", "card_read": "card", "badge_read": "badge"}
ALLOW, DENY, ASK = "allow", "deny", "ask_guard"
# Why a known entry does not allow now, most telling first.
DENIAL_ORDER = ("pass_used", "expired", "not_yet_valid", "outside_schedule", "wrong_lane")


@dataclass
class Settings:
    pair_window_s: float = 10.0
    unknown: str = ASK
    fuzzy_allow: bool = True
    fuzzy_visitors: bool = False
    fuzzy_min_confidence: float = 0.9
    anti_passback: bool = False

    @classmethod
    def from_config(cls, section) -> "Settings":
        return cls(**{k: getattr(section, k) for k in cls.__dataclass_fields__})


@dataclass
class Match:
    """An input found on a list."""
    input: str           # plate | card | badge
    entry: Entry
    near: bool = False
    problem: str | None = None  # None: valid now; else a DENIAL_ORDER reason

    def describe(self) -> dict:
        out = {"input": self.input, "list": self.entry.list, "ref": self.entry.ref}
        if self.near:
            out["near"] = True
            out["plate"] = self.entry.plate
        if self.problem:
            out["problem"] = self.problem
        return out


@dataclass
class Inputs:
    plate: str | None = None
    confidence: float = 0.0
    id_number: str | None = None
    badge: str | None = None
    no_plate: bool = False
    """a vehicle without a plate read (plate_read with has_plate false)"""


@dataclass
class Verdict:
    outcome: str
    rule: str
    matches: list[Match] = field(default_factory=list)
    watch: list[Match] = field(default_factory=list)
    allowed_by: Match | None = None
    version: int = 0


class Decider:
    """The rules, on one Index snapshot; no disk, no clock of its own."""

    def __init__(self, lists: Lists, settings: Settings, directions: dict[str, str]):
        self.lists = lists
        self.settings = settings
        self.directions = directions

    def decide(self, inputs: Inputs, lane: str, now: float, used_here: set = frozenset()) -> Verdict:
        index = self.lists.index  # one read: the whole decision sees one version
        tz = self.lists.tz
        direction = self.directions.get(lane, "both")
        local = datetime.fromtimestamp(now, tz)
        clock = (local.weekday(), local.hour * 60 + local.minute)
        id_digest = self._id_digest(inputs.id_number)
        watch = self._watchlist(index, inputs, id_digest, now)
        matches = self._plate_matches(index, inputs) + self._person_matches(index, id_digest, inputs.badge)
        for match in matches:
            match.problem = self._problem(match.entry, lane, direction, now, clock, used_here)
        verdict = self._combine(inputs, matches, watch, lane, direction, used_here)
        verdict.version = index.version
        return verdict

    def _id_digest(self, number: str | None) -> bytes | None:
        if not number:
            return None
        try:
            return hmac.digest(self.lists.key, normalise_id(number).encode(), "sha256")
        except ValueError:
            log.warning("card read with an unusable ID number %s", mask_id_number(number))
            return None

    def _watchlist(self, index: Index, inputs: Inputs, id_digest, now: float) -> list[Match]:
        watch = index["watchlist"]
        hits = []
        if inputs.plate:
            exact = watch.plate(inputs.plate)
            hits += [Match("plate", e) for e in exact]
            if not exact:
                for plate in sorted(watch.near_plates(inputs.plate)):
                    hits += [Match("plate", e, near=True) for e in watch.plate(plate)]
        if id_digest:
            hits += [Match("card", e) for e in watch.id_hash(id_digest)]
        return [h for h in hits if _in_dates(h.entry, now)]

    def _plate_matches(self, index: Index, inputs: Inputs) -> list[Match]:
        """Exact matches on the allow lists, else one near match when it is unambiguous."""
        if not inputs.plate:
            return []
        plate = inputs.plate
        exact = [Match("plate", e) for name in ("staff_vehicles", "visitors")
                 for e in index[name].plate(plate)]
        if exact or inputs.confidence < self.settings.fuzzy_min_confidence:
            return exact
        fuzzy_lists = [name for name, on in (("staff_vehicles", self.settings.fuzzy_allow),
                                             ("visitors", self.settings.fuzzy_visitors)) if on]
        if not fuzzy_lists:
            return []
        # Every allow-list plate one character away counts against ambiguity,
        # even on a list that may not be matched fuzzily.
        near = {(name, p) for name in ("staff_vehicles", "visitors")
                for p in index[name].near_plates(plate)}
        if len({p for _, p in near}) != 1:
            return []
        return [Match("plate", e, near=True) for name, p in sorted(near) if name in fuzzy_lists
                for e in index[name].plate(p)]

    def _person_matches(self, index: Index, id_digest, badge: str | None) -> list[Match]:
        matches = []
        if id_digest:
            matches += [Match("card", e) for name in ("staff", "visitors") for e in index[name].id_hash(id_digest)]
        if badge:
            matches += [Match("badge", e) for e in index["staff"].badge(badge)]
        return matches

    def _problem(self, entry: Entry, lane: str, direction: str, now: float, clock, used_here) -> str | None:
        lanes = entry.lane_set
        if lanes is not None and lane not in lanes:
            return "wrong_lane"
        if direction == "out":
            return None  # leaving: being on the list is enough (no schedule, dates or pass use)
        if entry.valid_from is not None and now < entry.valid_from:
            return "not_yet_valid"
        if entry.valid_to is not None and now >= entry.valid_to:
            return "expired"
        if (entry.days or entry.hours) and not in_schedule(parse_days(entry.days), parse_hours(entry.hours),
                                                           *clock):
            return "outside_schedule"
        if entry.single_use and (entry.list, entry.ref) not in used_here \
                and self.lists.pass_used(entry.list, entry.ref):
            return "pass_used"
        return None

    def _combine(self, inputs: Inputs, matches: list[Match], watch: list[Match], lane: str,
                 direction: str, used_here) -> Verdict:
        if watch:
            return Verdict(ASK, "watchlist", matches, watch)
        if self.settings.anti_passback and direction == "in":
            for subject in subjects(inputs, matches):
                if subject not in used_here and self.lists.is_inside(subject):
                    return Verdict(DENY, "anti_passback", matches)
        valid = [m for m in matches if m.problem is None]
        if valid:
            best = sorted(valid, key=lambda m: (m.near, m.input != "card"))[0]
            return Verdict(ALLOW, _rule_name(best), matches, allowed_by=best)
        problems = {m.problem for m in matches}
        for reason in DENIAL_ORDER:
            if reason in problems:
                return Verdict(DENY, reason, matches)
        if inputs.no_plate and not (inputs.plate or inputs.id_number or inputs.badge):
            return Verdict(ASK, "no_plate", matches)
        return Verdict(self.settings.unknown, "unknown", matches)


def _rule_name(match: Match) -> str:
    names = {"staff_vehicles": "staff_vehicle", "staff": "staff", "visitors": "visitor_pass"}
    rule = names[match.entry.list]
    if match.input == "badge":
        rule += "_badge"
    return rule + ("_near" if match.near else "")


def _in_dates(entry: Entry, now: float) -> bool:
    return ((entry.valid_from is None or now >= entry.valid_from)
            and (entry.valid_to is None or now < entry.valid_to))


def subjects(inputs: Inputs, matches: list[Match]) -> list[str]:
    """Anti-passback subjects: the badge and the ID card of this passage (not plates)."""
    out = []
    if inputs.badge:
        out.append("badge:" + inputs.badge)
    for m in matches:
        if m.input == "card" and m.entry.id_hash:
            out.append("id:" + m.entry.id_hash.hex())
    return out


# --- passages and the subsystem ------------------------------------------------------

@dataclass
class Passage:
    lane: str
    started: float
    reads: dict = field(default_factory=dict)     # input -> Record
    opened: bool = False
    asked: set = field(default_factory=set)        # reasons already shown to the guard
    alerted: set = field(default_factory=set)      # watchlist refs already alerted
    watchlisted: bool = False
    used: set = field(default_factory=set)         # (list, ref) passes and subjects used by it


class DecisionSubsystem:
    """Listens for reads in the store, decides, records, asks the barrier or the guard."""

    name = "decisions"

    def __init__(self, *, store, bus, lists: Lists, settings: Settings, lanes: dict[str, str],
                 readers: dict[str, str] | None = None, clock=time.time, reload_s: float = 2.0):
        self.store, self.bus, self.lists = store, bus, lists
        self.settings = settings
        self.decider = Decider(lists, settings, lanes)
        self.readers = readers or {}
        self.lanes = lanes
        self.clock = clock
        self.reload_s = reload_s
        self.passages: dict[str, Passage] = {}
        self.left: dict[str, float] = {}
        """lane -> when its presence input last went clear (the vehicle left): ends a passage"""
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: str | None = None
        self.decided = 0

    # lifecycle

    def start(self) -> None:
        self._stop.clear()
        self._error = None
        register(self.lists)
        self.lists.listeners.append(self._lists_changed)
        if self.on_record not in self.store.listeners:
            self.store.listeners.append(self.on_record)
        self.bus.subscribe(topics.PRESENCE, self.on_presence)
        self._thread = threading.Thread(target=self._run, name="decisions", daemon=True)
        self._thread.start()
        self._watcher = threading.Thread(target=self._watch_lists, name="lists-watch", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        if self.on_record in self.store.listeners:
            self.store.listeners.remove(self.on_record)
        self.bus.unsubscribe(topics.PRESENCE, self.on_presence)
        self._stop.set()
        for thread in (self._thread, self._watcher):
            if thread:
                thread.join(timeout=10)
        self._thread = self._watcher = None
        unregister(self.lists)
        if self._lists_changed in self.lists.listeners:
            self.lists.listeners.remove(self._lists_changed)

    def _lists_changed(self, index) -> None:
        self.bus.publish(topics.LISTS_UPDATED, version=index.version)

    def health(self) -> dict:
        if self._thread is None:
            return {"state": "stopped", "detail": ""}
        index = self.lists.index
        counts = index.counts()
        detail = f"lists version {index.version}, " + ", ".join(f"{n} {c}" for n, c in counts.items())
        state = "ok" if sum(counts.values()) else "degraded"
        if state == "degraded":
            detail = "no lists loaded: every vehicle and person is unknown; " + detail
        if self._thread is not None and not self._thread.is_alive():
            state, detail = "fault", "the decision thread died"
        elif self._error:
            state, detail = "degraded", f"{self._error}; deciding on {detail}"
        return {"state": state, "detail": detail, "lists_version": index.version,
                "decisions": self.decided, "queued": self._queue.qsize()}

    # input

    def on_record(self, record) -> None:
        """Store listener (the writer's thread): hand reads to the decision thread."""
        if record.kind in READ_KINDS:
            self._queue.put((record, time.perf_counter()))

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """For tests and the demo: wait until every queued read is decided."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.005)
        return False

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                record, t0 = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.handle(record, t0)
            except Exception:  # a bad read must not stop the decisions
                log.exception("decision on %s failed", getattr(record, "uuid", "?"))
                self._ask_guard_after_failure(record)
            finally:
                self._queue.task_done()

    def _ask_guard_after_failure(self, record) -> None:
        """No decision came (the store refused it, say): the guard decides by hand."""
        try:
            lane = self.lane_of(record)
            if lane:
                self.bus.publish(topics.GUARD_ATTENTION, lane=lane, reason="fault", ref=record.uuid)
        except Exception:
            log.exception("cannot ask the guard after a failed decision")

    def _watch_lists(self) -> None:
        """Pick up lists changed by another process (`gate-agent lists import`); loading
        a big list takes seconds, so it happens here, not in the decision thread."""
        while not self._stop.wait(self.reload_s):
            try:
                self.lists.reload_if_changed()
                self._error = None
            except Exception as exc:
                log.exception("reloading the lists failed")
                self._error = f"cannot reload the lists: {exc}"

    # the decision

    def lane_of(self, record) -> str | None:
        lane = record.data.get("lane") or self.readers.get(record.data.get("reader", ""))
        if not lane and len(self.lanes) == 1:
            lane = next(iter(self.lanes))
        return lane

    def handle(self, record, t0: float | None = None):
        """Decide on one read; returns the access_decision record (None if it has no lane)."""
        t0 = time.perf_counter() if t0 is None else t0
        kind = READ_KINDS[record.kind]
        lane = self.lane_of(record)
        if not lane:
            log.warning("%s %s from reader %r: no lane known, not decided", record.kind, record.uuid,
                        record.data.get("reader"))
            return None
        passage = self._passage(lane, kind, record.created)
        passage.reads[kind] = record
        inputs = _inputs(passage.reads)
        now = self.clock()
        verdict = self.decider.decide(inputs, lane, now, passage.used)
        decision_ms = round((time.perf_counter() - t0) * 1000, 3)
        return self._act(passage, record, inputs, verdict, decision_ms, now)

    def on_presence(self, lane: str, present: bool, **_) -> None:
        if not present:
            self.left[lane] = self.clock()

    def _passage(self, lane: str, kind: str, at: float) -> Passage:
        """The lane's open passage for a read at `at`, or a new one: after the pair window,
        after the vehicle left the lane's loop, or when the read's kind is already in it."""
        passage = self.passages.get(lane)
        if passage is None or at - passage.started > self.settings.pair_window_s \
                or self.left.get(lane, 0) > passage.started or kind in passage.reads \
                or ("card" in passage.reads and kind == "badge") or ("badge" in passage.reads and kind == "card"):
            passage = Passage(lane, at)
            self.passages[lane] = passage
        return passage

    def _act(self, passage: Passage, record, inputs: Inputs, verdict: Verdict, decision_ms: float, now: float):
        lane = passage.lane
        alert = None
        new_hits = [m for m in verdict.watch if (m.entry.ref, m.input) not in passage.alerted]
        if new_hits:
            alert = self._alert(lane, new_hits, inputs, record)
            passage.alerted.update((m.entry.ref, m.input) for m in new_hits)
        if verdict.watch:
            passage.watchlisted = True
        outcome, rule = verdict.outcome, verdict.rule
        if passage.watchlisted and outcome == ALLOW:
            outcome, rule = ASK, "watchlist"
        data = {"lane": lane, "outcome": outcome, "rule": rule, "decision_ms": decision_ms,
                "inputs": _describe_inputs(passage.reads, inputs), "matches": [m.describe() for m in verdict.matches],
                "list_version": verdict.version, "direction": self.lanes.get(lane, "both"),
                "read": record.uuid}
        if alert is not None:
            data["alert"] = alert.uuid
        if passage.opened:
            data["already_open"] = True  # never closed on a car: the guard decides
        if inputs.id_number:
            data["id_number"] = inputs.id_number  # sealed at rest by the store
        name = verdict.allowed_by.entry.name if verdict.allowed_by else None
        if not name and "card" in passage.reads:
            name = passage.reads["card"].data.get("name")
        if name:
            data["name"] = name  # sealed at rest by the store
        if outcome == ALLOW and not passage.opened:
            self._consume(passage, inputs, verdict, lane, now)
        decision = self.store.add("access_decision", data)
        self.decided += 1
        if outcome == ALLOW and not passage.opened:
            passage.opened = True
            self.bus.publish(topics.BARRIER_OPEN, lane=lane, cause="decision", ref=decision.uuid)
        if alert is not None:
            self.bus.publish(topics.GUARD_ATTENTION, lane=lane, reason="watchlist", ref=alert.uuid)
        elif outcome == ASK and rule in ("unknown", "no_plate") and "ask" not in passage.asked:
            passage.asked.add("ask")
            self.bus.publish(topics.GUARD_ATTENTION, lane=lane, reason="ask", ref=decision.uuid)
        return decision

    def _consume(self, passage: Passage, inputs: Inputs, verdict: Verdict, lane: str, now: float) -> None:
        """Use a single-use pass and record who is inside, durably, before the barrier opens."""
        direction = self.lanes.get(lane, "both")
        for match in verdict.matches:
            entry = match.entry
            if entry.single_use and match.problem is None and direction != "out":
                self.lists.use_pass(entry.list, entry.ref, lane, now)
                passage.used.add((entry.list, entry.ref))
        if self.settings.anti_passback and direction in ("in", "out"):
            for subject in subjects(inputs, verdict.matches):
                self.lists.set_inside(subject, direction == "in", lane, now)
                passage.used.add(subject)

    def _alert(self, lane: str, hits: list[Match], inputs: Inputs, record):
        near = all(m.near for m in hits)
        data = {"reason": "watchlist", "lane": lane, "near": near,
                "matched": [{"input": m.input, "ref": m.entry.ref, "near": m.near,
                             **({"listed_plate": m.entry.plate} if m.input == "plate" else {})}
                            for m in hits],
                "read": record.uuid}
        if inputs.plate:
            data["plate_no"] = inputs.plate
        if any(m.input == "card" for m in hits) and inputs.id_number:
            data["id_number"] = inputs.id_number
        notes = [m.entry.note for m in hits if m.entry.note]
        if notes:
            data["note"] = "; ".join(notes)
        alert = self.store.add("alert", data)
        log.warning("WATCHLIST %s at lane %s (near=%s): alert %s", ",".join(m.input for m in hits),
                    lane, near, alert.uuid)
        return alert


def _inputs(reads: dict) -> Inputs:
    inputs = Inputs()
    if "plate" in reads:
        data = reads["plate"].data
        if data.get("has_plate", True):
            inputs.plate = normalise_plate(str(data.get("plate_no", "")))
            inputs.confidence = float(data.get("confidence") or 0.0)
        else:
            inputs.no_plate = True
    if "card" in reads:
        inputs.id_number = reads["card"].data.get("id_number")
    if "badge" in reads:
        inputs.badge = normalise_badge(reads["badge"].data.get("badge", ""))
    return inputs


def _describe_inputs(reads: dict, inputs: Inputs) -> dict:
    """The inputs as the decision record carries them: read UUIDs, plate, masked ID number."""
    out = {}
    if "plate" in reads:
        out["plate"] = {"read": reads["plate"].uuid, "plate_no": inputs.plate,
                        "confidence": inputs.confidence}
        if inputs.no_plate:
            out["plate"]["has_plate"] = False
    if "card" in reads:
        out["card"] = {"read": reads["card"].uuid, "id_number": mask_id_number(inputs.id_number)}
    if "badge" in reads:
        out["badge"] = {"read": reads["badge"].uuid, "badge": inputs.badge}
    return out


def open_lists(gate) -> Lists:
    """The device's lists, a damaged lists database set aside first (a fault record says so).

    lists.db is the platform's to send again (a snapshot: a delta needs the
    version before it); lists-state.db (passes used, who is inside) stays in the
    file set aside. Either beats an agent that cannot start at all."""
    for _ in range(3):   # lists.db, then lists-state.db, may each be damaged
        try:
            return Lists.from_config(gate.config)
        except DamagedLists as exc:
            moved = set_aside(exc.path)
            log.error("%s: set aside as %s; starting a new one", exc, moved)
            gate.record("fault", {"subsystem": "decisions", "condition": "damaged_set_aside",
                                  "detail": f"{exc}; set aside as {moved.name} and a new one started "
                                            "(the platform must send the lists again, as a snapshot)"})
    return Lists.from_config(gate.config)


def build(gate) -> list[DecisionSubsystem]:
    config = gate.config
    lists = open_lists(gate)
    lanes = {lane.name: lane.direction for lane in config.lanes}
    readers = {r.name: r.lane for r in config.readers if r.lane}
    return [DecisionSubsystem(store=gate.store, bus=gate.bus, lists=lists,
                              settings=Settings.from_config(config.decisions), lanes=lanes, readers=readers)]
