import hmac
import json
import threading
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from agent.cli import cli
from agent.lists import (ListError, Lists, UpdateRefused, apply_update, in_schedule, load_list_key,
                         parse_days, parse_hours, parse_when)

ID_A = "11010519491231002X"
ID_B = "440300199001011238"
ID_C = "360426199101010071"
SHANGHAI = ZoneInfo("Asia/Shanghai")


@pytest.fixture
def key(data_key):
    return load_list_key(data_key.parent / "list.key")


@pytest.fixture
def lists(tmp_path, key):
    opened = Lists(tmp_path / "data", key)
    yield opened
    opened.close()


def snapshot(version, **named):
    return {"mode": "snapshot", "version": version, "lists": named}


# --- schedules and dates -------------------------------------------------------------

def test_days_and_hours_parse():
    assert parse_days("mon-fri") == frozenset(range(5))
    assert parse_days("sat,sun") == frozenset({5, 6})
    assert parse_days("1-3") == frozenset({0, 1, 2})
    assert parse_days("fri-mon") == frozenset({4, 5, 6, 0})
    assert parse_days("") is None
    assert parse_hours("07:00-19:00;22:00-06:00") == ((420, 1140), (1320, 360))
    for bad, parse in (("funday", parse_days), ("25:00-26:00", parse_hours), ("07:00", parse_hours),
                       ("08:00-08:00", parse_hours)):
        with pytest.raises(ValueError):
            parse(bad)


def test_schedule_crossing_midnight_belongs_to_its_start_day():
    days, hours = parse_days("fri"), parse_hours("22:00-06:00")
    fri, sat, sun = 4, 5, 6
    assert not in_schedule(days, hours, fri, 21 * 60 + 59)
    assert in_schedule(days, hours, fri, 22 * 60)
    assert in_schedule(days, hours, fri, 23 * 60 + 59)
    assert in_schedule(days, hours, sat, 0)
    assert in_schedule(days, hours, sat, 5 * 60 + 59)
    assert not in_schedule(days, hours, sat, 6 * 60)
    assert not in_schedule(days, hours, sat, 22 * 60)   # Saturday night is not Friday's
    assert not in_schedule(days, hours, fri, 3 * 60)    # Friday early morning is Thursday's
    assert not in_schedule(days, hours, sun, 1 * 60)


def test_schedule_edges_are_start_inclusive_end_exclusive():
    hours = parse_hours("07:00-19:00")
    assert in_schedule(None, hours, 2, 7 * 60)
    assert not in_schedule(None, hours, 2, 19 * 60)
    assert in_schedule(parse_days("mon-fri"), None, 4, 0)
    assert not in_schedule(parse_days("mon-fri"), None, 5, 12 * 60)


def test_dates_are_device_local_and_end_dates_inclusive():
    start = parse_when("2026-11-25", SHANGHAI, end=False)
    assert datetime.fromtimestamp(start, ZoneInfo("UTC")).isoformat() == "2026-11-24T16:00:00+00:00"
    end = parse_when("2026-11-25", SHANGHAI, end=True)
    assert end - start == 86400
    assert parse_when("2026-11-25T08:00+00:00", SHANGHAI, end=False) == start + 16 * 3600
    with pytest.raises(ValueError, match="2026-13-01"):
        parse_when("2026-13-01", SHANGHAI, end=False)


# --- keyed hashes ------------------------------------------------------------------

def test_id_numbers_are_stored_only_as_keyed_hashes(lists, key):
    apply_update(lists, snapshot(1, staff=[{"id_number": ID_C, "name": "王五"}],
                                 watchlist=[{"id_number": ID_B}]))
    digest = hmac.digest(key, ID_C.encode(), "sha256")
    assert lists.index["staff"].id_hash(digest)[0].id_masked == "3604**********0071"
    lists.close()
    raw = b"".join(p.read_bytes() for p in lists.dir.glob("lists.db*"))
    for number in (ID_C, ID_B):
        assert number.encode() not in raw
    assert digest in raw


def test_id_numbers_normalise_before_hashing(lists, key):
    apply_update(lists, snapshot(1, staff=[{"id_number": ID_A.lower()}, {"id_number": "440300900101123"}]))
    index = lists.index["staff"]
    assert index.id_hash(hmac.digest(key, ID_A.encode(), "sha256"))
    assert index.id_hash(hmac.digest(key, ID_B.encode(), "sha256"))  # 15 -> 18 digits


def test_a_different_key_matches_nothing(tmp_path, lists):
    apply_update(lists, snapshot(1, staff=[{"id_number": ID_C}]))
    other = hmac.digest(b"\x01" * 32, ID_C.encode(), "sha256")
    assert not lists.index["staff"].id_hash(other)


def test_list_key_problems_name_the_config_key(tmp_path):
    with pytest.raises(ListError, match="decisions.list_key_file"):
        load_list_key(tmp_path / "missing.key")
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 10)
    short.chmod(0o600)
    with pytest.raises(ListError, match="10 bytes"):
        load_list_key(short)


# --- near-match index ----------------------------------------------------------------

def test_near_plates_finds_one_character_differences_only(lists):
    apply_update(lists, snapshot(1, watchlist=[{"plate": "粤B12345"}, {"plate": "粤B12399"},
                                               {"plate": "粤BD12345"}]))
    watch = lists.index["watchlist"]
    assert watch.near_plates("粤B12346") == {"粤B12345"}
    assert watch.near_plates("川B12345") == {"粤B12345"}
    assert watch.near_plates("粤B12345") == set()          # itself is exact, not near
    assert watch.near_plates("粤B12398") == {"粤B12399"}
    assert watch.near_plates("粤B12395") == {"粤B12345", "粤B12399"}
    assert watch.near_plates("粤B12300") == set()          # two differences
    assert watch.near_plates("粤BD12346") == {"粤BD12345"}   # 8-character plates too


# --- updates -------------------------------------------------------------------------

def test_snapshot_then_delta(lists):
    assert apply_update(lists, snapshot(5, staff_vehicles=[{"plate": "粤B12345", "ref": "v1"},
                                                           {"plate": "粤B22222", "ref": "v2"}])) == 5
    delta = {"mode": "delta", "base_version": 5, "version": 6,
             "upsert": {"staff_vehicles": [{"ref": "v3", "plate": "粤B33333"},
                                           {"ref": "v1", "plate": "粤B11111"}]},
             "remove": {"staff_vehicles": ["v2"]}}
    assert apply_update(lists, delta) == 6
    assert {e.plate for e in lists.entries("staff_vehicles")} == {"粤B11111", "粤B33333"}
    assert lists.index.version == 6


def test_snapshot_replaces_every_list(lists):
    apply_update(lists, snapshot(1, staff=[{"badge": "1"}], watchlist=[{"plate": "粤B12345"}]))
    apply_update(lists, snapshot(2, watchlist=[{"plate": "粤B99999"}]))
    assert lists.index.counts() == {"staff_vehicles": 0, "staff": 0, "visitors": 0, "watchlist": 1}


@pytest.mark.parametrize("payload, message", [
    (snapshot(3), "version 3 refused: the device holds version 3"),
    (snapshot(2), "version 2 refused"),
    ({"mode": "delta", "base_version": 2, "version": 4}, "delta on version 2 refused"),
    ({"mode": "delta", "base_version": 3, "version": 3}, "version 3 refused"),
])
def test_updates_out_of_order_are_refused(lists, payload, message):
    apply_update(lists, snapshot(3, staff=[{"badge": "1"}]))
    with pytest.raises(UpdateRefused, match=message):
        apply_update(lists, payload)
    assert lists.index.version == 3 and lists.index.counts()["staff"] == 1


def test_a_bad_entry_refuses_the_whole_update(lists):
    apply_update(lists, snapshot(1, staff=[{"badge": "1"}]))
    bad = snapshot(2, staff=[{"badge": "2"}, {"id_number": "110105194912310029"}])
    with pytest.raises(ListError, match=r"lists.staff\[1\]: column 'id_number': check character"):
        apply_update(lists, bad)
    with pytest.raises(ListError, match="mode"):
        apply_update(lists, {"version": 2})
    with pytest.raises(ListError, match="unknown list"):
        apply_update(lists, snapshot(2, residents=[]))
    assert lists.index.version == 1 and [e.badge for e in lists.entries("staff")] == ["1"]
    assert lists.meta("version") == 1


def test_lists_persist_across_reopen(tmp_path, key, lists):
    apply_update(lists, snapshot(7, staff_vehicles=[{"plate": "粤B12345", "days": "mon-fri",
                                                     "hours": "07:00-19:00", "lanes": "in1"}],
                                 watchlist=[{"plate": "京A00001"}]))
    lists.use_pass("visitors", "p1", "in1")
    lists.set_inside("badge:9", True, "in1")
    lists.close()
    again = Lists(tmp_path / "data", key)
    try:
        assert again.index.version == 7
        entry = again.index["staff_vehicles"].plate("粤B12345")[0]
        assert (entry.days, entry.hours, entry.lanes) == ("mon-fri", "07:00-19:00", "in1")
        assert again.index["watchlist"].near_plates("京A00002") == {"京A00001"}
        assert again.pass_used("visitors", "p1") and not again.pass_used("visitors", "p2")
        assert again.is_inside("badge:9")
    finally:
        again.close()


def test_single_use_is_recorded_once(lists):
    assert lists.use_pass("visitors", "p1", "in1") is True
    assert lists.use_pass("visitors", "p1", "in1") is False


def test_readers_see_old_or_new_lists_never_a_mix(lists):
    """Two versions with disjoint plates; a reader checking both plates of one index
    snapshot must find exactly one version's entries, while updates run."""
    old = [{"plate": f"粤B{n:05d}"} for n in range(300)]
    new = [{"plate": f"粤C{n:05d}"} for n in range(300)]
    apply_update(lists, snapshot(1, staff_vehicles=old))
    mixed, seen_versions, stop = [], set(), threading.Event()

    def reader():
        while not stop.is_set():
            index = lists.index
            in_old = sum(bool(index["staff_vehicles"].plate(f"粤B{n:05d}")) for n in (0, 150, 299))
            in_new = sum(bool(index["staff_vehicles"].plate(f"粤C{n:05d}")) for n in (0, 150, 299))
            seen_versions.add(index.version)
            if (in_old, in_new) not in ((3, 0), (0, 3)) or (in_old == 3) != (index.version % 2 == 1):
                mixed.append((index.version, in_old, in_new))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for version in range(2, 12):
        apply_update(lists, snapshot(version, staff_vehicles=new if version % 2 == 0 else old))
    stop.set()
    for t in threads:
        t.join()
    assert mixed == []
    assert len(seen_versions) > 1


def test_another_process_change_is_picked_up(tmp_path, key, lists):
    other = Lists(tmp_path / "data", key)
    apply_update(other, snapshot(1, staff=[{"badge": "77"}]))
    other.close()
    assert lists.index.version == 0
    assert lists.reload_if_changed() is True
    assert lists.index["staff"].badge("77")
    assert lists.reload_if_changed() is False


# --- CSV import ----------------------------------------------------------------------

def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def test_csv_import_all_lists(tmp_path, lists):
    write(tmp_path / "v.csv", "plate,name,valid_from,valid_to,days,hours,lanes\n"
                              "粤B12345,张三,2026-01-01,2026-12-31,mon-fri,07:00-19:00,in1\n"
                              "粤B54321,,,,,,\n")
    write(tmp_path / "s.csv", "id_number,badge,name\n" f"{ID_C},90:324,王五\n" ",0012345678,\n")
    write(tmp_path / "p.csv", "id_number,plate,valid_from,valid_to,uses,invited_by\n"
                              f"{ID_B},粤B77777,2026-11-24T09:00,2026-11-24T18:00,single,李四\n")
    write(tmp_path / "w.csv", "plate,id_number,note\n京A12345,,case 42\n,%s,\n" % ID_A)
    assert lists.import_csv(tmp_path / "v.csv", "staff_vehicles") == 2
    assert lists.import_csv(tmp_path / "s.csv", "staff") == 2
    assert lists.import_csv(tmp_path / "p.csv", "visitors") == 1
    assert lists.import_csv(tmp_path / "w.csv", "watchlist") == 2
    assert lists.index.counts() == {"staff_vehicles": 2, "staff": 2, "visitors": 1, "watchlist": 2}
    visitor = lists.entries("visitors")[0]
    assert visitor.single_use and visitor.invited_by == "李四" and visitor.plate == "粤B77777"
    assert lists.index.version == 0 and lists.revision() == 4


def test_csv_import_merges_or_replaces(tmp_path, lists):
    write(tmp_path / "a.csv", "plate\n粤B11111\n粤B22222\n")
    write(tmp_path / "b.csv", "plate\n粤B33333\n")
    lists.import_csv(tmp_path / "a.csv", "staff_vehicles")
    lists.import_csv(tmp_path / "b.csv", "staff_vehicles")
    assert len(lists.entries("staff_vehicles")) == 3
    lists.import_csv(tmp_path / "b.csv", "staff_vehicles", replace=True)
    assert [e.plate for e in lists.entries("staff_vehicles")] == ["粤B33333"]


def test_csv_errors_name_line_and_column_and_import_nothing(tmp_path, lists):
    write(tmp_path / "good.csv", "plate\n粤B11111\n")
    lists.import_csv(tmp_path / "good.csv", "staff_vehicles")
    bad = write(tmp_path / "bad.csv", "plate,valid_to,hours\n"
                                      "粤B22222,2026-12-31,07:00-19:00\n"
                                      "粤B33333,2026-13-01,\n"
                                      "粤B44444,,7am-7pm\n"
                                      ",,\n"
                                      "粤B55555,,\n"
                                      "粤B22222,,\n")
    with pytest.raises(ListError) as caught:
        lists.import_csv(bad, "staff_vehicles", replace=True)
    message = str(caught.value)
    assert message.startswith("nothing imported: 3 bad line(s)")
    assert "bad.csv line 3: column 'valid_to': '2026-13-01'" in message
    assert "bad.csv line 4: column 'hours': '7am' is not a time" in message
    assert "bad.csv line 7: column 'ref': '粤B22222' repeats line 2" in message
    assert [e.plate for e in lists.entries("staff_vehicles")] == ["粤B11111"]
    assert lists.revision() == 1


def test_csv_structure_errors(tmp_path, lists):
    with pytest.raises(ListError, match="line 1: column 'id_number' is not a field of staff_vehicles"):
        lists.import_csv(write(tmp_path / "a.csv", "plate,id_number\n粤B1,1\n"), "staff_vehicles")
    with pytest.raises(ListError, match="line 2: more values than the 1 columns"):
        lists.import_csv(write(tmp_path / "b.csv", "plate\n粤B11111,x\n"), "staff_vehicles")
    with pytest.raises(ListError, match="line 2: column 'valid_from': empty; a visitor pass needs"):
        lists.import_csv(write(tmp_path / "c.csv", "plate,valid_to\n粤B11111,2026-12-01\n"), "visitors")
    with pytest.raises(ListError, match="line 2: column 'id_number': empty"):
        lists.import_csv(write(tmp_path / "d.csv", "id_number,badge,name\n,,张三\n"), "staff")
    with pytest.raises(ListError, match="empty file"):
        lists.import_csv(write(tmp_path / "e.csv", ""), "staff")
    with pytest.raises(ListError, match="cannot read"):
        lists.import_csv(tmp_path / "missing.csv", "staff")


def test_csv_from_chinese_excel(tmp_path, lists):
    write(tmp_path / "gbk.csv", "plate,name\n粤B12345,张三\n", encoding="gb18030")
    write(tmp_path / "bom.csv", "\ufeffplate,name\n粤B54321,李四\n")
    lists.import_csv(tmp_path / "gbk.csv", "staff_vehicles")
    lists.import_csv(tmp_path / "bom.csv", "staff_vehicles")
    assert {e.name for e in lists.entries("staff_vehicles")} == {"张三", "李四"}


# --- the CLI -------------------------------------------------------------------------

def invoke(config, *args):
    return CliRunner().invoke(cli, ["--config", str(config), "lists", *map(str, args)])


def test_cli_import_show_version_masks_id_numbers(tmp_path, config_file):
    config = config_file()
    write(tmp_path / "staff.csv", "id_number,badge,name\n" f"{ID_C},90:324,王小明\n")
    result = invoke(config, "import", tmp_path / "staff.csv")
    assert result.exit_code == 0, result.output
    assert "staff: 1 entry imported; 1 in the list now" in result.output
    for args in (("show",), ("show", "--json"), ("show", "--list", "staff")):
        result = invoke(config, *args)
        assert result.exit_code == 0, result.output
        assert ID_C not in result.output and "王小明" not in result.output
        assert "3604**********0071" in result.output and "王**" in result.output
    line = json.loads(invoke(config, "show", "--json").output.splitlines()[0])
    assert line["badge"] == "90:324" and len(line["id_hmac"]) == 12
    result = invoke(config, "version")
    assert result.exit_code == 0
    assert "version 0 (revision 1, local import staff.csv): staff_vehicles 0, staff 1" in result.output


def test_cli_import_errors_are_one_clear_message(tmp_path, config_file):
    config = config_file()
    write(tmp_path / "people.csv", "id_number\n110105194912310029\n")
    result = invoke(config, "import", tmp_path / "people.csv")
    assert result.exit_code == 2 and "which list? name it with --list" in result.output
    result = invoke(config, "import", tmp_path / "people.csv", "--list", "staff")
    assert result.exit_code == 2
    assert "people.csv line 2: column 'id_number': check character is wrong" in result.output
    assert "Traceback" not in result.output
    assert "staff 0" in invoke(config, "version").output


def test_a_lists_file_that_is_not_a_database_is_named_and_left_alone(tmp_path, key):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "lists.db").write_bytes(b"not sqlite " * 400)
    with pytest.raises(ListError, match=r"cannot open the lists database .*lists\.db: file is not a database"):
        Lists(folder, key)
    assert (folder / "lists.db").read_bytes() == b"not sqlite " * 400


def test_a_damaged_lists_database_is_named_and_left_alone(tmp_path, key):
    import os
    from agent.lists import DamagedLists
    (tmp_path / "data").mkdir()
    garbage = os.urandom(4096)
    (tmp_path / "data" / "lists-state.db").write_bytes(garbage)
    with pytest.raises(DamagedLists, match=r"lists-state\.db: file is not a database") as raised:
        Lists(tmp_path / "data", key)
    assert raised.value.path == tmp_path / "data" / "lists-state.db"
    assert (tmp_path / "data" / "lists-state.db").read_bytes() == garbage
