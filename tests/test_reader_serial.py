"""The serial pollers, the readers area and the reader CLI against simulated readers on ptys."""
import base64
import datetime as dt
import json
import threading
import time

import pytest
from click.testing import CliRunner

from agent import config as configmod
from agent.cli import cli
from agent.idcard import CardData
from agent.gate import Gate
from drivers import readers
from drivers.reader_sim import BadgeSimulator, Card, ReaderSimulator
from drivers.serial_reader import BadgePoller, IdCardPoller, card_from, connect_idcard, read_one

TODAY = dt.date(2026, 6, 1)
FAST = dict(poll_s=0.02, timeout_s=0.15, backoff_s=(0.05, 0.2), removal_s=0.1, today=TODAY)


def wait_for(condition, timeout=6.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Collector:
    def __init__(self):
        self.cards, self.faults, self.badges = [], [], []
        self.lock = threading.Lock()

    def card(self, card):
        with self.lock:
            self.cards.append(card)

    def fault(self, condition, detail):
        with self.lock:
            self.faults.append((condition, detail))

    def badge(self, badge):
        with self.lock:
            self.badges.append(badge)

    def conditions(self):
        with self.lock:
            return [c for c, _ in self.faults]


@pytest.fixture
def sim(tmp_path):
    simulator = ReaderSimulator(link=tmp_path / "idreader").start()
    yield simulator
    simulator.stop()


@pytest.fixture
def poller_for():
    made = []

    def make(port, **kwargs):
        got = Collector()
        options = dict(FAST, **kwargs)
        poller = IdCardPoller(port, when_card=got.card, when_fault=got.fault, **options)
        poller.start()
        made.append(poller)
        return poller, got
    yield make
    for poller in made:
        poller.stop()


EXPECTED = {
    "resident": (Card.resident(name="张伟", nation="05", birth="1986-04-12"),
                 {"name": "张伟", "gender": "male", "nation_code": "05", "nation": "维吾尔",
                  "birth_date": "1986-04-12", "address": "辽宁省沈阳市和平区南京北街1号",
                  "authority": "沈阳市公安局和平分局", "valid_from": "2015-01-01",
                  "valid_to": "2035-01-01"}),
    "hkmotw": (Card.hkmotw(valid_to="2029-01-01"),
               {"name": "陈大文", "gender": "male", "pass_number": "H60123456",
                "issue_count": "01", "birth_date": "1985-06-15"}),
    "foreigner_permanent": (Card.foreigner_permanent(),
                            {"name": "史密斯", "english_name": "SMITH, JOHN", "nationality": "USA",
                             "card_version": "05", "authority_code": "1500",
                             "birth_date": "1970-03-04"}),
    "foreigner_2023": (Card.foreigner_2023(),
                       {"name": "安娜", "english_name": "MUELLER, ANNA MARIA", "gender": "female",
                        "nationality": "DEU", "valid_to": "2033-12-01"}),
}


@pytest.mark.parametrize("kind", EXPECTED)
def test_every_card_kind_round_trips_through_the_poller(sim, poller_for, kind):
    card, expected = EXPECTED[kind]
    poller, got = poller_for(sim.port)
    sim.place(card)
    wait_for(lambda: got.cards, what="a card read")
    read = got.cards[0]
    assert read["card_kind"] == kind and read["id_number"] == card.id_number
    assert read["id_valid"] is True and read["expired"] is False and read["problems"] == []
    assert read["photo"] == card.photo
    for key, value in expected.items():
        assert read[key] == value, key


def test_same_card_left_on_the_reader_is_one_read_and_a_new_placing_is_another(sim, poller_for):
    poller, got = poller_for(sim.port)
    sim.place(Card.resident())
    wait_for(lambda: got.cards)
    polls = sim.reads
    wait_for(lambda: sim.reads >= polls + 5, what="the reader to be read again")
    assert len(got.cards) == 1
    sim.remove()
    wait_for(lambda: poller.present is None, what="the card to count as removed")
    sim.place(Card.resident())
    wait_for(lambda: len(got.cards) == 2, what="the second placing")
    sim.place(Card.resident(name="李四", sequence="011"))   # swapped without a gap
    wait_for(lambda: len(got.cards) == 3, what="the swapped card")
    assert got.cards[2]["name"] == "李四"


def test_reader_that_goes_quiet_after_a_read_still_gives_one_read(tmp_path, poller_for):
    with ReaderSimulator(link=tmp_path / "q", quiet_after_read=3) as sim:
        poller, got = poller_for(sim.port, removal_s=0.5)
        sim.place(Card.resident())
        wait_for(lambda: sim.reads >= 4, what="several reads of the card left on the reader")
        assert len(got.cards) == 1


def test_expired_card_is_read_and_flagged(sim, poller_for):
    poller, got = poller_for(sim.port)
    sim.place(Card.resident(valid_from="2006-05-31", valid_to="2026-05-31"))
    wait_for(lambda: got.cards)
    assert got.cards[0]["expired"] is True and got.cards[0]["valid_to"] == "2026-05-31"


def test_scripted_cards_each_read_once(tmp_path, poller_for):
    cards = [Card.resident(name="甲"), Card.resident(name="乙", sequence="013"), Card.hkmotw()]
    with ReaderSimulator(cards, link=tmp_path / "r", dwell_polls=4) as sim:
        poller, got = poller_for(sim.port)
        wait_for(lambda: sim.script_done and poller.present is None, what="the script")
    assert [c["name"] for c in got.cards] == ["甲", "乙", "陈大文"]


@pytest.mark.parametrize("fault", ["bad_checksum", "truncated", "noise", "garbage", "silence"])
def test_a_broken_reply_is_retried_and_the_card_read_once(sim, poller_for, fault):
    poller, got = poller_for(sim.port)
    wait_for(lambda: poller.is_connected)
    sim.inject(fault, on="read")
    sim.place(Card.resident())
    wait_for(lambda: got.cards)
    time.sleep(0.2)
    assert len(got.cards) == 1 and got.cards[0]["id_valid"]
    assert sim.faults == [] and "silent" not in got.conditions()


def test_unplug_and_replug(sim, poller_for):
    poller, got = poller_for(sim.port)
    sim.place(Card.resident())
    wait_for(lambda: got.cards)
    sim.unplug()
    wait_for(lambda: poller.health()["state"] == "degraded", what="degraded health")
    wait_for(lambda: "port_missing" in got.conditions(), what="a port_missing fault")
    assert "port_missing" in poller.health()["detail"]
    sim.replug()
    sim.place(Card.resident(name="王五", sequence="015"))
    wait_for(lambda: len(got.cards) == 2, what="a read after the replug")
    assert poller.health()["state"] == "ok"
    conditions = got.conditions()
    assert conditions.count("port_missing") == 1                    # once, not per retry
    assert conditions[-1] == "recovered" and "disconnected" in conditions
    assert poller.connects == 2


def test_silent_reader_is_reported_and_reopened(sim, poller_for):
    poller, got = poller_for(sim.port, silent_after=2)
    wait_for(lambda: poller.is_connected)
    sim.inject("silence", count=1000)
    wait_for(lambda: "silent" in got.conditions(), what="a silent fault")
    assert poller.health()["state"] == "degraded"
    sim.faults.clear()
    wait_for(lambda: poller.is_connected and "recovered" in got.conditions(), what="recovery")


def test_speed_is_detected(tmp_path, poller_for):
    with ReaderSimulator(link=tmp_path / "slow", baud=19200) as sim:
        sim.place(Card.resident())
        poller, got = poller_for(sim.port, timeout_s=0.1)
        wait_for(lambda: got.cards)
        assert poller.detected_baud == 19200


def test_fixed_wrong_speed_is_a_fault_not_a_read(tmp_path, poller_for):
    with ReaderSimulator(link=tmp_path / "slow", baud=9600) as sim:
        sim.place(Card.resident())
        poller, got = poller_for(sim.port, baud=115200, silent_after=1)
        wait_for(lambda: "silent" in got.conditions(), what="a silent fault")
        assert got.cards == []


def test_fingerprint_where_supported_and_fallback_where_not(sim, poller_for):
    poller, got = poller_for(sim.port, fingerprint=True)
    sim.place(Card.resident(fingerprint=b"\x07" * 1024))
    wait_for(lambda: got.cards)
    assert got.cards[0]["fingerprint"] == b"\x07" * 1024 and poller.fingerprint_supported
    poller.stop()
    sim.remove()
    sim.fingerprint = False
    poller, got = poller_for(sim.port, fingerprint=True)
    sim.place(Card.resident(name="无指纹", fingerprint=b"\x07" * 1024))
    wait_for(lambda: got.cards)
    assert "fingerprint" not in got.cards[0] and poller.fingerprint_supported is False


def test_sam_fault_degrades_then_recovers(sim, poller_for):
    poller, got = poller_for(sim.port)
    wait_for(lambda: poller.is_connected)
    sim.inject("sam_not_authorised", on="find", count=3)
    wait_for(lambda: "sam_not_authorised" in got.conditions(), what="the SAM fault")
    wait_for(lambda: got.conditions()[-1] == "recovered", what="recovery")
    assert poller.health()["state"] == "ok"


def test_card_failure_is_reported_once_and_the_card_still_read(sim, poller_for):
    poller, got = poller_for(sim.port)
    sim.inject("read_failed", on="read", count=3)
    sim.place(Card.resident())
    wait_for(lambda: got.cards)
    assert got.conditions() == ["read_failed"]
    assert "damaged" in got.faults[0][1]


def test_read_one_waits_for_a_card(sim):
    link = connect_idcard(sim.port)
    try:
        assert read_one(link, wait_s=0.3, poll_s=0.02) is None
        threading.Timer(0.2, sim.place, [Card.foreigner_2023()]).start()
        card = read_one(link, wait_s=3, poll_s=0.02)
        assert card["card_kind"] == "foreigner_2023" and card["name"] == "安娜"
    finally:
        link.port.close()


# --- badges ----------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, value, badge", [
    ("rdm6300", 0x00BC614E, "0012345678"),
    ("wiegand26", (90, 324), f"{90 * 65536 + 324:08d}"),
    ("wiegand34", (0x00BC, 0x614E), "0012345678"),
    ("digits", "88001234", "88001234"),
])
def test_badge_poller(tmp_path, fmt, value, badge):
    got = Collector()
    with BadgeSimulator(fmt, link=tmp_path / "b", repeat_s=0.05) as sim:
        poller = BadgePoller(sim.port, fmt, hold_s=0.3, when_badge=got.badge, when_fault=got.fault,
                             backoff_s=(0.05, 0.2))
        poller.start()
        try:
            wait_for(lambda: poller.is_connected)
            sim.inject("noise")
            sim.place(value)
            wait_for(lambda: got.badges)
            time.sleep(0.2)                      # RDM6300 keeps repeating meanwhile
            sim.remove()
            assert [b.badge for b in got.badges] == [badge]
            time.sleep(0.35)
            sim.unplug()
            wait_for(lambda: "port_missing" in got.conditions())
            sim.replug()
            wait_for(lambda: poller.is_connected, what="the reopened port")  # a swipe before is lost
            sim.place(value)
            wait_for(lambda: len(got.badges) == 2, what="a read after the replug")
        finally:
            poller.stop()


# --- the readers area: records ------------------------------------------------------------

def gate_with(config_file, sim_port, badge_port, keep=None):
    extra = f"""
[[readers]]
name = "id1"
port = "{sim_port}"
lane = "in1"
poll_s = 0.05

[[readers]]
name = "badge1"
kind = "rdm6300"
port = "{badge_port}"
lane = "in1"
"""
    if keep is not None:
        extra += f"\n[privacy]\nkeep_card_fields = {json.dumps(keep)}\n"
    return Gate(configmod.load(config_file(extra)))


def test_reads_become_records_with_only_the_kept_fields_sealed_at_rest(config_file, tmp_path):
    with ReaderSimulator(link=tmp_path / "id") as sim, \
            BadgeSimulator("rdm6300", link=tmp_path / "badge", repeat_s=0.05) as badge_sim:
        gate = gate_with(config_file, sim.port, badge_sim.port)
        subsystems = readers.build(gate)
        assert [s.name for s in subsystems] == ["reader.id1", "reader.badge1"]
        for s in subsystems:
            s.start()
        try:
            sim.place(Card.resident(name="张伟", valid_to="2020-01-01", valid_from="2010-01-01"))
            badge_sim.place(0x00BC614E)
            wait_for(lambda: gate.store.records("card_read") and gate.store.records("badge_read"))
            assert all(s.health()["state"] == "ok" for s in subsystems)
            sim.unplug()
            wait_for(lambda: any(r.data["condition"] == "port_missing"
                                 for r in gate.store.records("fault")))
        finally:
            for s in subsystems:
                s.stop()
        card = gate.store.records("card_read")[0].data
        assert card["name"] == "张伟" and card["reader"] == "id1" and card["lane"] == "in1"
        assert card["expired"] is True and card["id_valid"] is True
        assert card["valid_to"] == "2020-01-01" and card["card_kind"] == "resident"
        for dropped in ("address", "photo", "birth_date", "nation", "gender", "authority"):
            assert dropped not in card, dropped
        raw = gate.store.db.execute("SELECT body, sealed FROM records WHERE kind = 'card_read'").fetchone()
        assert "张伟" not in raw[0] and card["id_number"] not in raw[0] and raw[1]
        badge = gate.store.records("badge_read")[0].data
        assert badge["badge"] == "0012345678" and badge["format"] == "rdm6300"
        fault = [r.data for r in gate.store.records("fault") if r.data["condition"] == "port_missing"][0]
        assert fault["subsystem"] == "reader.id1" and fault["port"] == sim.port
        gate.store.close()


def test_a_read_the_store_refuses_asks_the_guard_and_the_card_is_read_again(config_file, tmp_path,
                                                                           monkeypatch):
    """No record, no decision: the guard must hear of it, and the reader reads on."""
    from agent.bus import GUARD_ATTENTION
    with ReaderSimulator(link=tmp_path / "id") as sim, BadgeSimulator("rdm6300", link=tmp_path / "badge") as badge_sim:
        gate = gate_with(config_file, sim.port, badge_sim.port)
        asked = []
        gate.bus.subscribe(GUARD_ATTENTION, lambda **event: asked.append(event))
        real_put = gate.store.put

        def refuse_reads(record):
            if record.kind == "card_read":
                raise OSError("disk I/O error (simulated)")
            return real_put(record)
        monkeypatch.setattr(gate.store, "put", refuse_reads)
        reader = readers.build(gate)[0]
        reader.start()
        try:
            sim.place(Card.resident())
            wait_for(lambda: asked, what="the guard asked")
            assert asked[0] == {"lane": "in1", "reason": "fault", "ref": None}
            wait_for(lambda: reader.health()["state"] == "degraded")
            detail = reader.health()["detail"]
            assert "reads not stored" in detail and "disk I/O error" in detail
            assert not gate.store.records("card_read")
            monkeypatch.setattr(gate.store, "put", real_put)
            wait_for(lambda: gate.store.records("card_read"), what="the card read again, stored")
            wait_for(lambda: reader.health()["state"] == "ok")
            assert len(asked) == 1                                   # not again every poll
        finally:
            reader.stop()
            gate.store.close()


def test_photo_kept_as_wlt_when_configured():
    card = Card.resident()
    read = card_from(CardData(card.text(), card.photo), TODAY)
    data = readers.card_record(read, "id1", "in1", ["name", "photo", "address"])
    assert base64.b64decode(data["photo"]) == card.photo and data["photo_format"] == "wlt"
    assert data["address"] and "birth_date" not in data
    decoder = readers.WltDecoder(paths=[])
    assert not decoder.available and "no WLT decoder" in decoder.problem
    assert decoder.decode(card.photo) is None


def test_unknown_card_field_in_config_is_named(config_file):
    with pytest.raises(configmod.ConfigError, match=r"privacy.keep_card_fields.*'adress'"):
        configmod.load(config_file('\n[privacy]\nkeep_card_fields = ["name", "adress"]\n'))


# --- the CLI ------------------------------------------------------------------------------

def test_cli_read_masks_unless_revealed(sim):
    sim.place(Card.resident(name="张伟"))
    runner = CliRunner()
    masked = runner.invoke(cli, ["reader", "read", "--port", sim.port, "--wait", "2"])
    assert masked.exit_code == 0, masked.output
    number = Card.resident(name="张伟").id_number
    assert number not in masked.output and f"{number[:4]}**********{number[-4:]}" in masked.output
    assert "张*" in masked.output and "<withheld>" in masked.output
    shown = runner.invoke(cli, ["reader", "read", "--port", sim.port, "--json", "--reveal"])
    card = json.loads(shown.output)
    assert card["id_number"] == number and card["name"] == "张伟" and card["baud"] == 115200


def test_cli_read_errors_are_one_line(tmp_path, sim):
    runner = CliRunner()
    missing = runner.invoke(cli, ["reader", "read", "--port", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no such port" in missing.output
    assert "Traceback" not in missing.output
    empty = runner.invoke(cli, ["reader", "read", "--port", sim.port, "--wait", "0.2"])
    assert empty.exit_code == 2 and "no card placed" in empty.output


def test_cli_list_and_simulate(tmp_path):
    runner = CliRunner()
    listed = runner.invoke(cli, ["reader", "list", "--json"])
    assert listed.exit_code == 0 and isinstance(json.loads(listed.output), list)
    cards = tmp_path / "cards.json"
    cards.write_text(json.dumps([{"kind": "hkmotw", "name": "何伟"}, {"fault": "noise"}]))
    link = tmp_path / "cli-sim"
    result = runner.invoke(cli, ["reader", "simulate", "--cards", str(cards), "--link", str(link),
                                 "--seconds", "0.2"])
    assert result.exit_code == 0 and str(link) in result.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"kind": "passport"}]))
    result = runner.invoke(cli, ["reader", "simulate", "--cards", str(bad), "--seconds", "0.1"])
    assert result.exit_code == 2 and "passport" in result.output


def test_a_failing_record_handler_means_the_card_is_read_again(sim):
    calls = []

    def flaky(card):
        calls.append(card)
        if len(calls) == 1:
            raise OSError("disk full")
    poller = IdCardPoller(sim.port, when_card=flaky, **FAST)
    poller.start()
    try:
        sim.place(Card.resident())
        wait_for(lambda: poller.reads == 1, what="the retried read")
        assert len(calls) == 2 and poller.health()["state"] == "ok"
    finally:
        poller.stop()


def test_unknown_card_type_is_a_fault_not_a_crash(sim, poller_for):
    poller, got = poller_for(sim.port)
    card = Card.resident()
    text = bytearray(card.text())
    text[248:250] = "Q".encode("utf-16-le")
    card.text = lambda: bytes(text)
    sim.place(card)
    wait_for(lambda: "unreadable_card" in got.conditions())
    assert poller.health()["state"] == "ok" and got.cards == []


def test_each_module_constant_docstring_follows_its_constant():
    """A string statement that follows another (not an assignment) documents nothing: the
    constant it was written for has lost its docstring."""
    import ast
    from pathlib import Path
    body = ast.parse(Path(readers.__file__).read_text()).body
    for before, statement in zip(body, body[1:]):
        if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
            assert isinstance(before, ast.Assign), \
                f"drivers/readers.py:{statement.lineno}: a docstring after no constant"
    documented = {before.targets[0].id: statement.value.value for before, statement in zip(body, body[1:])
                  if isinstance(before, ast.Assign) and isinstance(statement, ast.Expr)}
    assert "BMP header" in documented["BMP_BYTES"]
