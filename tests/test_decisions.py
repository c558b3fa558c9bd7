import sqlite3
import threading
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from agent import bus as topics
from agent.bus import Bus
from agent.decisions import DecisionSubsystem, Settings
from agent.lists import Lists, apply_update, load_list_key

SHANGHAI = ZoneInfo("Asia/Shanghai")
WED_10 = datetime(2026, 11, 25, 10, 0, tzinfo=SHANGHAI).timestamp()  # a Wednesday
STAFF_ID = "360426199101010071"
VISITOR_ID = "440300199001011238"
WANTED_ID = "11010519491231002X"


class Recorder:
    """Everything published on the bus, in order."""

    def __init__(self, bus):
        self.events = []
        for topic in (topics.BARRIER_OPEN, topics.BARRIER_CLOSE, topics.GUARD_ATTENTION):
            bus.subscribe(topic, lambda topic=topic, **payload: self.events.append((topic, payload)))

    def topics(self):
        return [topic for topic, _ in self.events]


class Rig:
    def __init__(self, store, lists, **settings):
        self.store, self.lists = store, lists
        self.bus = Bus()
        self.published = Recorder(self.bus)
        self.now = WED_10
        self.lanes = {"in1": "in", "out1": "out", "both1": "both"}
        self.gate = DecisionSubsystem(store=store, bus=self.bus, lists=lists, settings=Settings(**settings),
                                      lanes=self.lanes, readers={"id1": "in1", "badge1": "in1",
                                                                 "badge_out": "out1"},
                                      clock=lambda: self.now)

    def read(self, kind, lane="in1", after_s=0.0, **data):
        """Store a read, `after_s` after the last one, and decide on it at once."""
        self.now += after_s
        if kind == "plate_read":
            data = {"lane": lane, "plate_color": "blue", "plate_class": "02", "pass_time": "",
                    "motor_vehicle": {}, "confidence": 0.95, **data}
        elif kind == "card_read":
            data = {"reader": {"in1": "id1"}.get(lane, "id1"), "card_kind": "resident", **data}
        else:
            data = {"reader": {"in1": "badge1", "out1": "badge_out"}[lane], "format": "rdm6300", **data}
        record = self.store.add(kind, data, at=self.now)
        return self.gate.handle(record)

    def plate(self, plate, **kw):
        return self.read("plate_read", plate_no=plate, **kw)

    def card(self, number, **kw):
        return self.read("card_read", id_number=number, **kw)

    def badge(self, badge, **kw):
        return self.read("badge_read", badge=badge, **kw)


@pytest.fixture
def lists(store, data_key):
    opened = Lists(store.dir, load_list_key(data_key.parent / "list.key"))
    apply_update(opened, {"mode": "snapshot", "version": 1, "lists": {
        "staff_vehicles": [
            {"plate": "粤B12345", "name": "张三"},
            {"plate": "粤B88888", "days": "mon-fri", "hours": "07:00-19:00"},
            {"plate": "粤B77777", "days": "wed", "hours": "22:00-06:00"},
            {"plate": "粤B66666", "valid_to": "2026-11-24"},
            {"plate": "粤B55555", "valid_from": "2026-11-26"},
            {"plate": "粤B44444", "lanes": "in2"},
            {"plate": "粤B30000"}, {"plate": "粤B30002"},
        ],
        "staff": [{"id_number": STAFF_ID, "badge": "0012345678", "name": "王五"}],
        "visitors": [
            {"ref": "pass-1", "id_number": VISITOR_ID, "plate": "粤B99999", "valid_from": "2026-11-25T09:00",
             "valid_to": "2026-11-25T18:00", "uses": "single", "invited_by": "李四"},
            {"ref": "pass-2", "plate": "粤B10000", "valid_from": "2026-11-25", "valid_to": "2026-11-25",
             "uses": "multiple"},
        ],
        "watchlist": [{"plate": "京A00001", "note": "case 7"}, {"id_number": WANTED_ID}],
    }})
    yield opened
    opened.close()


@pytest.fixture
def rig(store, lists):
    return Rig(store, lists)


def decision(record):
    return record.data["outcome"], record.data["rule"]


# --- allow lists -----------------------------------------------------------------------

def test_staff_plate_opens_the_barrier_after_the_record_is_stored(rig, store):
    record = rig.plate("粤B12345")
    assert decision(record) == ("allow", "staff_vehicle")
    assert rig.published.events == [(topics.BARRIER_OPEN, {"lane": "in1", "cause": "decision",
                                                            "ref": record.uuid})]
    stored = store.get(record.uuid)
    assert stored.kind == "access_decision" and stored.priority == 1
    assert stored.data["inputs"]["plate"]["plate_no"] == "粤B12345"
    assert stored.data["name"] == "张三" and stored.data["list_version"] == 1
    assert stored.data["decision_ms"] >= 0


def test_a_decision_the_store_refuses_asks_the_guard_and_opens_nothing(rig, store, monkeypatch):
    real_add = store.add

    def refuse_decisions(kind, data, at=None):
        if kind == "access_decision":
            raise OSError("disk I/O error (simulated)")
        return real_add(kind, data, at)
    monkeypatch.setattr(store, "add", refuse_decisions)
    rig.gate.start()
    try:
        read = store.add("plate_read", {"lane": "in1", "plate_no": "粤B12345", "plate_color": "blue",
                                        "plate_class": "02", "pass_time": "", "motor_vehicle": {},
                                        "confidence": 0.95})
        assert rig.gate.wait_idle()
    finally:
        rig.gate.stop()
    assert rig.published.events == [(topics.GUARD_ATTENTION, {"lane": "in1", "reason": "fault",
                                                               "ref": read.uuid})]


def test_staff_card_and_badge_allow(rig):
    assert decision(rig.card(STAFF_ID)) == ("allow", "staff")
    assert decision(rig.badge("0012345678", after_s=60)) == ("allow", "staff_badge")
    assert rig.published.topics() == [topics.BARRIER_OPEN, topics.BARRIER_OPEN]


def test_unknown_asks_the_guard_or_denies(rig, store, lists):
    record = rig.plate("粤B00000")
    assert decision(record) == ("ask_guard", "unknown")
    assert rig.published.events == [(topics.GUARD_ATTENTION, {"lane": "in1", "reason": "ask",
                                                               "ref": record.uuid})]
    strict = Rig(store, lists, unknown="deny")
    assert decision(strict.plate("粤B00000")) == ("deny", "unknown")
    assert strict.published.events == []


def test_expired_and_future_entries_are_denied(rig):
    assert decision(rig.plate("粤B66666")) == ("deny", "expired")
    assert decision(rig.plate("粤B55555", after_s=60)) == ("deny", "not_yet_valid")
    assert rig.published.events == []


def test_validity_end_date_is_inclusive_in_device_time(rig):
    rig.now = datetime(2026, 11, 24, 23, 59, tzinfo=SHANGHAI).timestamp()
    assert decision(rig.plate("粤B66666")) == ("allow", "staff_vehicle")
    rig.now = datetime(2026, 11, 25, 0, 0, tzinfo=SHANGHAI).timestamp()
    assert decision(rig.plate("粤B66666")) == ("deny", "expired")


def test_schedule_in_the_device_time_zone(rig):
    assert decision(rig.plate("粤B88888")) == ("allow", "staff_vehicle")
    # 11:30 UTC on Wednesday is 19:30 in Shanghai: outside 07:00-19:00
    rig.now = datetime(2026, 11, 25, 11, 30, tzinfo=ZoneInfo("UTC")).timestamp()
    assert decision(rig.plate("粤B88888")) == ("deny", "outside_schedule")
    # 23:30 UTC on Tuesday is 07:30 Wednesday in Shanghai: inside
    rig.now = datetime(2026, 11, 24, 23, 30, tzinfo=ZoneInfo("UTC")).timestamp()
    assert decision(rig.plate("粤B88888")) == ("allow", "staff_vehicle")


def test_schedule_follows_the_configured_time_zone(store, data_key):
    in_utc = Lists(store.dir / "utc", load_list_key(data_key.parent / "list.key"), tz="UTC")
    try:
        apply_update(in_utc, {"mode": "snapshot", "version": 1, "lists": {
            "staff_vehicles": [{"plate": "粤B88888", "days": "mon-fri", "hours": "07:00-19:00"}]}})
        rig = Rig(store, in_utc)
        rig.now = datetime(2026, 11, 25, 5, 0, tzinfo=ZoneInfo("UTC")).timestamp()  # 13:00 Shanghai
        assert decision(rig.plate("粤B88888")) == ("deny", "outside_schedule")
        rig.now = datetime(2026, 11, 25, 12, 0, tzinfo=ZoneInfo("UTC")).timestamp()  # 20:00 Shanghai
        assert decision(rig.plate("粤B88888")) == ("allow", "staff_vehicle")
    finally:
        in_utc.close()


@pytest.mark.parametrize("when, outcome", [
    ((11, 25, 21, 59), "deny"), ((11, 25, 22, 0), "allow"), ((11, 26, 5, 59), "allow"),
    ((11, 26, 6, 0), "deny"), ((11, 25, 3, 0), "deny"), ((11, 26, 23, 0), "deny"),
])
def test_night_shift_crossing_midnight(rig, when, outcome):
    month, day, hour, minute = when
    rig.now = datetime(2026, month, day, hour, minute, tzinfo=SHANGHAI).timestamp()
    assert rig.plate("粤B77777").data["outcome"] == outcome


def test_entry_limited_to_other_lanes(rig):
    assert decision(rig.plate("粤B44444")) == ("deny", "wrong_lane")


def test_exit_lane_lets_known_vehicles_out_outside_their_hours(rig):
    rig.now = datetime(2026, 11, 25, 20, 0, tzinfo=SHANGHAI).timestamp()
    assert decision(rig.plate("粤B88888")) == ("deny", "outside_schedule")
    assert decision(rig.plate("粤B88888", lane="out1", after_s=60)) == ("allow", "staff_vehicle")


# --- visitor passes ----------------------------------------------------------------------

def test_single_use_pass_works_once(rig):
    record = rig.card(VISITOR_ID)
    assert decision(record) == ("allow", "visitor_pass")
    assert decision(rig.card(VISITOR_ID, after_s=3600)) == ("deny", "pass_used")
    assert decision(rig.plate("粤B99999", after_s=60)) == ("deny", "pass_used")
    assert rig.published.topics() == [topics.BARRIER_OPEN]


def test_single_use_pass_stays_used_across_a_restart(rig, store, lists, data_key):
    rig.plate("粤B99999")
    lists.close()
    reopened = Lists(store.dir, load_list_key(data_key.parent / "list.key"))
    try:
        again = Rig(store, reopened)
        assert decision(again.plate("粤B99999", after_s=60)) == ("deny", "pass_used")
    finally:
        reopened.close()


def test_visitor_card_and_plate_in_one_passage_use_the_pass_once(rig):
    assert decision(rig.card(VISITOR_ID)) == ("allow", "visitor_pass")
    assert decision(rig.plate("粤B99999", after_s=2)) == ("allow", "visitor_pass")
    assert rig.published.topics() == [topics.BARRIER_OPEN]


def test_multiple_use_pass_and_its_window(rig):
    assert decision(rig.plate("粤B10000")) == ("allow", "visitor_pass")
    assert decision(rig.plate("粤B10000", after_s=3600)) == ("allow", "visitor_pass")
    rig.now = datetime(2026, 11, 26, 0, 0, tzinfo=SHANGHAI).timestamp()
    assert decision(rig.plate("粤B10000")) == ("deny", "expired")


def test_visitor_pass_outside_its_time_window(rig):
    rig.now = datetime(2026, 11, 25, 8, 59, tzinfo=SHANGHAI).timestamp()
    assert decision(rig.card(VISITOR_ID)) == ("deny", "not_yet_valid")


# --- one character of tolerance ------------------------------------------------------------

def test_near_staff_plate_allowed_only_when_confident(rig):
    assert decision(rig.plate("粤B12346", confidence=0.95)) == ("allow", "staff_vehicle_near")
    assert decision(rig.plate("粤B12346", confidence=0.85, after_s=60)) == ("ask_guard", "unknown")
    assert decision(rig.plate("粤B12366", confidence=0.99, after_s=60)) == ("ask_guard", "unknown")


def test_two_entries_equally_close_means_no_fuzzy_allow(rig):
    # 粤B30001 is one character from both 粤B30000 and 粤B30002
    assert decision(rig.plate("粤B30001", confidence=0.99)) == ("ask_guard", "unknown")


def test_a_near_visitor_plate_counts_against_ambiguity(rig):
    # 粤B19999 is one from visitor 粤B99999 only: no fuzzy on visitors by default
    assert decision(rig.plate("粤B19999", confidence=0.99)) == ("ask_guard", "unknown")
    # 粤B10005 is one from visitor 粤B10000 and no staff plate: still no
    assert decision(rig.plate("粤B10005", confidence=0.99, after_s=60)) == ("ask_guard", "unknown")


def test_fuzzy_visitors_and_fuzzy_allow_switches(store, lists):
    visitors_on = Rig(store, lists, fuzzy_visitors=True)
    assert decision(visitors_on.plate("粤B10005", confidence=0.99)) == ("allow", "visitor_pass_near")
    fuzzy_off = Rig(store, lists, fuzzy_allow=False)
    assert decision(fuzzy_off.plate("粤B12346", confidence=0.99)) == ("ask_guard", "unknown")


# --- the watchlist -------------------------------------------------------------------------

def test_watchlist_plate_alerts_the_guard_and_never_opens(rig, store):
    record = rig.plate("京A00001", confidence=0.6)
    assert decision(record) == ("ask_guard", "watchlist")
    alert = store.get(record.data["alert"])
    assert alert.kind == "alert" and alert.priority == 0
    assert alert.data["reason"] == "watchlist" and alert.data["lane"] == "in1"
    assert alert.data["near"] is False and alert.data["note"] == "case 7"
    assert rig.published.events == [(topics.GUARD_ATTENTION, {"lane": "in1", "reason": "watchlist",
                                                               "ref": alert.uuid})]
    assert store.pending()[0].uuid == alert.uuid  # goes out first


def test_watchlist_near_match_still_alerts_even_at_low_confidence(rig, store):
    record = rig.plate("京A00007", confidence=0.3)
    assert decision(record) == ("ask_guard", "watchlist")
    alert = store.get(record.data["alert"])
    assert alert.data["near"] is True
    assert alert.data["matched"] == [{"input": "plate", "ref": "京A00001", "near": True,
                                      "listed_plate": "京A00001"}]
    assert rig.published.topics() == [topics.GUARD_ATTENTION]


def test_watchlisted_driver_of_a_staff_vehicle_does_not_open(rig, store):
    card = rig.card(WANTED_ID, name="赵六")
    assert decision(card) == ("ask_guard", "watchlist")
    plate = rig.plate("粤B12345", after_s=3)
    assert decision(plate) == ("ask_guard", "watchlist")
    assert topics.BARRIER_OPEN not in rig.published.topics()
    assert rig.published.topics() == [topics.GUARD_ATTENTION]  # one alert, one lamp
    assert len(store.records("alert")) == 1


def test_watchlist_id_is_sealed_in_the_alert(rig, store):
    record = rig.card(WANTED_ID)
    alert = store.get(record.data["alert"])
    assert alert.data["id_number"] == WANTED_ID
    raw = sqlite3.connect(store.path).execute("SELECT group_concat(body) FROM records").fetchone()[0]
    assert WANTED_ID not in raw and STAFF_ID not in raw


def test_decision_record_seals_id_numbers_and_masks_inputs(rig, store):
    record = rig.card(STAFF_ID, name="王五")
    assert record.data["inputs"]["card"]["id_number"] == "3604**********0071"
    stored = store.get(record.uuid)
    assert stored.data["id_number"] == STAFF_ID and stored.data["name"] == "王五"
    raw = sqlite3.connect(store.path).execute("SELECT body FROM records WHERE uuid = ?",
                                              [record.uuid]).fetchone()[0]
    assert STAFF_ID not in raw and "王五" not in raw


# --- passages --------------------------------------------------------------------------------

def test_badge_after_an_unknown_plate_opens_within_the_window(rig):
    assert decision(rig.plate("粤B00000")) == ("ask_guard", "unknown")
    record = rig.badge("0012345678", after_s=4)
    assert decision(record) == ("allow", "staff_badge")
    assert set(record.data["inputs"]) == {"plate", "badge"}
    assert rig.published.topics() == [topics.GUARD_ATTENTION, topics.BARRIER_OPEN]


def test_reads_outside_the_window_are_separate_passages(rig):
    rig.plate("粤B00000")
    record = rig.badge("0012345678", after_s=11)
    assert set(record.data["inputs"]) == {"badge"}


def test_a_vehicle_leaving_the_loop_ends_its_passage(rig):
    assert decision(rig.plate("粤B00000")) == ("ask_guard", "unknown")
    rig.now += 3
    rig.gate.on_presence(lane="in1", present=False)   # what the bus calls when the loop clears
    card = rig.card(VISITOR_ID, after_s=1)
    assert set(card.data["inputs"]) == {"card"}, "the card must not join the car that left"
    plate = rig.plate("粤B99999", after_s=2)
    assert decision(plate) == ("allow", "visitor_pass")
    assert set(plate.data["inputs"]) == {"card", "plate"}


def test_a_second_read_in_an_open_passage_does_not_reopen(rig):
    rig.plate("粤B12345")
    record = rig.badge("9999", after_s=2)
    assert decision(record) == ("allow", "staff_vehicle")
    assert record.data["already_open"] is True
    assert rig.published.topics() == [topics.BARRIER_OPEN]


def test_watchlist_hit_after_the_barrier_opened_alerts_without_closing(rig, store):
    rig.plate("粤B12345")
    record = rig.card(WANTED_ID, after_s=2)
    assert decision(record) == ("ask_guard", "watchlist")
    assert record.data["already_open"] is True
    assert rig.published.topics() == [topics.BARRIER_OPEN, topics.GUARD_ATTENTION]
    assert len(store.records("alert")) == 1


def test_reads_without_a_lane_are_not_decided(rig, store):
    record = store.add("badge_read", {"reader": "elsewhere", "format": "rdm6300", "badge": "1"})
    assert rig.gate.handle(record) is None
    assert store.records("access_decision") == []


# --- anti-passback -----------------------------------------------------------------------------

def test_anti_passback(store, lists):
    rig = Rig(store, lists, anti_passback=True)
    assert decision(rig.badge("0012345678")) == ("allow", "staff_badge")
    assert decision(rig.badge("0012345678", after_s=60)) == ("deny", "anti_passback")
    assert decision(rig.card(STAFF_ID, after_s=60)) == ("allow", "staff")  # the card is its own subject
    assert decision(rig.badge("0012345678", lane="out1", after_s=60)) == ("allow", "staff_badge")
    assert decision(rig.badge("0012345678", after_s=60)) == ("allow", "staff_badge")
    assert decision(rig.plate("粤B12345", after_s=60)) == ("allow", "staff_vehicle")
    assert decision(rig.plate("粤B12345", after_s=60)) == ("allow", "staff_vehicle")  # plates: no


def test_anti_passback_off_by_default(rig):
    rig.badge("0012345678")
    assert decision(rig.badge("0012345678", after_s=60)) == ("allow", "staff_badge")


# --- the subsystem ------------------------------------------------------------------------------

def test_subsystem_decides_on_reads_from_the_store_while_lists_change(store, lists):
    rig = Rig(store, lists)
    versions = []
    rig.bus.subscribe(topics.LISTS_UPDATED, lambda version: versions.append(version))
    rig.gate.start()
    try:
        assert rig.gate.health()["state"] == "ok"
        decisions = []
        for version in range(2, 12):
            plates = [{"plate": "粤B12345"}] if version % 2 else []
            updater = threading.Thread(target=apply_update, args=(lists, {
                "mode": "snapshot", "version": version, "lists": {"staff_vehicles": plates}}))
            updater.start()
            rig.now += 60
            store.add("plate_read", {"lane": "in1", "plate_no": "粤B12345", "plate_color": "blue",
                                     "plate_class": "02", "confidence": 0.95, "pass_time": "",
                                     "motor_vehicle": {}}, at=rig.now)
            updater.join()
            assert rig.gate.wait_idle()
        assert versions == list(range(2, 12))
        decisions = store.records("access_decision", limit=100)
        assert len(decisions) == 10
        for record in decisions:
            held = record.data["list_version"]
            expected = "allow" if held % 2 else "ask_guard"
            assert record.data["outcome"] == expected, record.data
    finally:
        rig.gate.stop()
    assert rig.gate.health()["state"] == "stopped"
    assert rig.gate.on_record not in store.listeners


def test_running_decisions_pick_up_lists_changed_by_another_process(store, lists, data_key):
    rig = Rig(store, lists)
    rig.gate.reload_s = 0.05
    rig.gate.start()
    try:
        installer = Lists(store.dir, load_list_key(data_key.parent / "list.key"))
        installer.upsert([], {"staff_vehicles": ["粤B12345"]}, {"source": "test"})
        installer.close()
        for _ in range(200):
            if not lists.index["staff_vehicles"].plate("粤B12345"):
                break
            threading.Event().wait(0.02)
        assert decision(rig.plate("粤B12345")) == ("ask_guard", "unknown")
    finally:
        rig.gate.stop()


def test_build_from_config_and_updates_through_the_store(config_file):
    from agent.config import load
    from agent.gate import Gate
    config = load(config_file("""
[[readers]]
name = "id1"
port = "/dev/null"
lane = "in1"
"""))
    gate = Gate(config).build(areas=[("agent.decisions", False, "who may pass")])
    recorder = Recorder(gate.bus)
    try:
        gate.start()
        subsystem = gate.supervisor.slots[0].subsystem
        assert subsystem.health()["state"] == "degraded"  # no lists yet
        assert apply_update(gate.store, {"mode": "snapshot", "version": 3,
                                         "lists": {"staff": [{"id_number": STAFF_ID}]}}) == 3
        gate.record("card_read", {"reader": "id1", "card_kind": "resident", "id_number": STAFF_ID})
        assert subsystem.wait_idle()
        assert recorder.topics() == [topics.BARRIER_OPEN]
        assert subsystem.health()["state"] == "ok"
    finally:
        gate.stop()


def test_a_vehicle_without_a_plate_read_asks_the_guard_even_where_unknowns_are_denied(store, lists):
    strict = Rig(store, lists, unknown="deny")
    record = strict.read("plate_read", plate_no="无车牌", has_plate=False, confidence=0.0)
    assert decision(record) == ("ask_guard", "no_plate")
    assert record.data["inputs"]["plate"] == {"read": record.data["read"], "plate_no": None,
                                              "confidence": 0.0, "has_plate": False}
    assert strict.published.events == [(topics.GUARD_ATTENTION, {"lane": "in1", "reason": "ask",
                                                                  "ref": record.uuid})]


def test_a_staff_card_opens_for_a_vehicle_without_a_plate_read(rig):
    rig.read("plate_read", plate_no="无车牌", has_plate=False, confidence=0.0)
    assert decision(rig.card(STAFF_ID, after_s=2)) == ("allow", "staff")
    assert rig.published.topics() == [topics.GUARD_ATTENTION, topics.BARRIER_OPEN]


def test_a_damaged_lists_database_is_set_aside_and_decisions_start(config_file, tmp_path):
    """The lists are the platform's to send again; a gate that cannot decide at all is worse."""
    import os
    from agent.config import load
    from agent.gate import Gate
    from agent.sqlite_threads import damaged_files
    config = load(config_file())
    data = tmp_path / "data"
    data.mkdir()
    garbage = os.urandom(4096)
    (data / "lists.db").write_bytes(garbage)
    gate = Gate(config).build(areas=[("agent.decisions", False, "who may pass")])
    try:
        gate.start()
        [moved] = damaged_files(data)
        assert moved.name.startswith("lists.db.damaged-") and moved.read_bytes() == garbage
        [fault] = [r for r in gate.store.pending(10) if r.kind == "fault"]
        assert (fault.data["subsystem"], fault.data["condition"]) == ("decisions", "damaged_set_aside")
        assert moved.name in fault.data["detail"]
        assert apply_update(gate.store, {"mode": "snapshot", "version": 1,
                                         "lists": {"staff": [{"id_number": STAFF_ID}]}}) == 1
        assert gate.supervisor.slots[0].subsystem.health()["state"] == "ok"
    finally:
        gate.stop()


def test_an_area_that_cannot_be_built_leaves_the_gate_running(config_file, monkeypatch):
    """Only the alarm path's area (critical) may stop the agent from starting."""
    import sys
    import types
    from agent.config import load
    from agent.gate import Gate

    def build(gate):
        raise OSError("cannot read /var/lib/gate-agent/thing: Input/output error")
    monkeypatch.setitem(sys.modules, "broken_area", types.SimpleNamespace(build=build))
    gate = Gate(load(config_file())).build(areas=[("broken_area", False, "a thing"),
                                                  ("agent.decisions", False, "who may pass")])
    try:
        gate.start()
        gate.supervisor.check()
        states = gate.supervisor.states()
        assert states["broken_area"]["state"] == "stopped"
        assert "Input/output error" in states["broken_area"]["detail"]
        assert "decisions" in states
        [fault] = [r for r in gate.store.pending(10) if r.kind == "fault"]
        assert fault.data["subsystem"] == "broken_area" and "runs without a thing" in fault.data["detail"]
    finally:
        gate.stop()
    with pytest.raises(OSError, match="Input/output error"):
        Gate(load(config_file())).build(areas=[("broken_area", True, "a thing")])
