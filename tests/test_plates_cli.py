"""`gate-agent plates`: the read --json contract on real images, errors per file, no config needed."""
import json

import pytest

from tests.conftest import need_plates, run_cli

NO_CONFIG = {"GATE_AGENT_CONFIG": "/nonexistent/gate-agent.toml"}


def _recogniser_available() -> bool:
    try:
        from agent.plates.recognise import load_reader
        load_reader("opencv")
        return True
    except Exception:
        return False


def _scenes(n=3):
    plates = need_plates()
    return sorted((plates / "ccpd_samples_zhijucen").glob("*.jpg"))[:n]


def test_help_has_examples():
    for args in (["plates", "--help"], ["plates", "read", "--help"], ["plates", "watch", "--help"]):
        result = run_cli(*args)
        assert result.returncode == 0 and "Example:" in result.stdout, args


def test_read_detect_only_json_lines_and_a_corrupt_file(tmp_path):
    scenes = _scenes()
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    result = run_cli("plates", "read", "--json", "--detect-only", scenes[0], corrupt, *scenes[1:],
                     env=NO_CONFIG)
    assert result.returncode == 1, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["file"] for line in lines] == [str(p) for p in [scenes[0], corrupt, *scenes[1:]]]
    bad = lines[1]
    assert bad["plates"] == [] and "broken.jpg" in bad["error"] and "corrupt" in bad["error"]
    for line in lines[:1] + lines[2:]:
        assert "error" not in line and isinstance(line["ms"], float)
        assert line["plates"], f"no plate found in {line['file']}"
        for plate in line["plates"]:
            assert set(plate) == {"text", "color", "box", "confidence"}
            assert len(plate["box"]) == 4 and all(isinstance(v, int) for v in plate["box"])
            assert plate["color"] in ("blue", "yellow", "green", "white", "black")


def test_read_a_folder_one_line_per_image():
    folder = need_plates() / "hyperlpr3"
    result = run_cli("plates", "read", "--json", "--detect-only", folder, env=NO_CONFIG)
    images = [p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png")]
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == len(images)


def test_read_with_the_recogniser_follows_the_contract():
    if not _recogniser_available():
        result = run_cli("plates", "read", "--json", *_scenes(1), env=NO_CONFIG)
        assert result.returncode == 2 and "recogniser" in result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
        return
    result = run_cli("plates", "read", "--json", *_scenes(3), env=NO_CONFIG)
    assert result.returncode == 0, result.stderr
    for line in map(json.loads, result.stdout.splitlines()):
        for plate in line["plates"]:
            assert set(plate) == {"text", "color", "box", "confidence"}
            assert 0 <= plate["confidence"] <= 1 and len(plate["text"]) in (7, 8)


def test_a_plate_crop_the_detector_cannot_find_is_read_whole():
    """A real crop cut at the plate's border: no edge for the detector, read whole by `plates read`."""
    if not _recogniser_available():
        pytest.skip("no recogniser: covered by test_read_with_the_recogniser_follows_the_contract")
    crop = need_plates() / "hyperlpr3" / "_8_冀D5L690.jpg"
    from agent.plates.detect import Detector
    from agent.plates.pipeline import read_plates
    from agent.plates.recognise import load_reader
    from drivers.camera import decode_image
    found = read_plates(decode_image(crop), Detector(), load_reader("opencv"))
    assert not any(r.valid for r in found), "the detector now finds this plate: pick another crop"
    result = run_cli("plates", "read", "--json", crop, env=NO_CONFIG)
    assert result.returncode == 0, result.stderr
    plates = json.loads(result.stdout)["plates"]
    assert [(p["text"], p["color"], p["box"]) for p in plates] == [("冀D5L690", "yellow", [0, 0, 153, 51])]


def test_missing_file_only_is_reported_not_a_traceback(tmp_path):
    result = run_cli("plates", "read", tmp_path / "nope.jpg", "--detect-only", env=NO_CONFIG)
    assert result.returncode == 1
    assert "nope.jpg: error: " in result.stdout and "Traceback" not in result.stderr


def test_watch_needs_a_source_or_a_lane_camera(config_file):
    result = run_cli("--config", config_file(), "plates", "watch", "--seconds", "1")
    assert result.returncode == 2
    assert "camera" in result.stderr and "Traceback" not in result.stderr
