"""The vision process: spawned apart from the core, restarted by the supervisor when it dies,
its findings stored by the core."""
import os
import signal
import time

import cv2
import numpy as np
import pytest

from agent.supervisor import Supervisor
from agent.vision import VisionProcess, build, lane_settings


def _settings(camera, **extra):
    settings = {"device_id": "21010200001210000001", "timezone": "Asia/Shanghai", "engine": "opencv",
                "repeat_window_s": 30.0, "min_confidence": 0.5, "no_plate_after_s": 3.0, "workers": 1, "log_level": "warning",
                "lanes": [{"name": "in1", "camera": str(camera), "trigger": "continuous", "roi": []}]}
    settings.update(extra)
    return settings


def _frames(folder, n=3):
    folder.mkdir()
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((120, 160, 3), 40 * i, np.uint8))
    return folder


def _wait(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_build_makes_nothing_without_a_camera(config_file):
    from agent import config as configmod

    class FakeGate:
        config = configmod.load(config_file())
        store = bus = None
    assert build(FakeGate()) == []
    cfg = configmod.load(config_file().parent / "config.toml")
    assert lane_settings(cfg)["lanes"] == []


def test_lane_settings_carry_what_the_process_needs(config_file):
    from agent import config as configmod
    path = config_file().read_text().replace('name = "in1"', 'name = "in1"\ncamera = "/tmp/cam"\n'
                                             'trigger = "presence"\npresence = { pin = 27 }\nroi = [0, 100, 1280, 720]')
    (config_file().parent / "c2.toml").write_text(path)
    settings = lane_settings(configmod.load(config_file().parent / "c2.toml"))
    assert settings["lanes"] == [{"name": "in1", "camera": "/tmp/cam", "trigger": "presence",
                                  "roi": [0, 100, 1280, 720]}]
    assert settings["device_id"] == "21010200001210000001" and settings["engine"] == "opencv"


def test_dead_vision_process_is_a_fault_and_is_restarted(tmp_path, store):
    vision = VisionProcess(_settings(_frames(tmp_path / "cam")), store)
    supervisor = Supervisor(store, backoff_start=0.1, backoff_max=0.2, poll_s=0.05)
    supervisor.add(vision)
    supervisor.start()
    try:
        assert _wait(lambda: vision.health()["state"] in ("ok", "degraded"))
        first_pid = vision._proc.pid
        os.kill(first_pid, signal.SIGKILL)
        assert _wait(lambda: any(r.data.get("subsystem") == "vision" and r.data["condition"] == "failed"
                                 for r in store.records("fault")))
        assert _wait(lambda: vision._proc is not None and vision._proc.pid != first_pid
                     and vision._proc.is_alive())
        assert _wait(lambda: vision.health()["state"] in ("ok", "degraded"))
    finally:
        supervisor.stop()
    assert vision.health()["state"] == "stopped" and not vision._proc.is_alive()


def test_a_missing_camera_is_a_fault_record_and_degraded_not_dead(tmp_path, store):
    vision = VisionProcess(_settings(tmp_path / "no-such-camera"), store)
    vision.start()
    try:
        assert _wait(lambda: any(r.data["subsystem"] == "camera:in1" and r.data["condition"] == "lost"
                                 for r in store.records("fault")))
        assert _wait(lambda: vision.health()["state"] == "degraded")
        assert "camera lost" in vision.health()["detail"]
        _frames(tmp_path / "no-such-camera")
        assert _wait(lambda: any(r.data["subsystem"] == "camera:in1" and r.data["condition"] == "recovered"
                                 for r in store.records("fault")), timeout=40)
    finally:
        vision.stop()
    assert not vision._proc.is_alive()


def test_a_read_the_store_refuses_waits_and_is_stored_later_with_its_images(tmp_path, store):
    from agent.bus import GUARD_ATTENTION, Bus
    from agent.store import DiskFull
    bus, asked = Bus(), []
    bus.subscribe(GUARD_ATTENTION, lambda **event: asked.append(event))
    vision = VisionProcess(_settings(tmp_path / "cam"), store, bus)
    real_add_image = store.add_image
    refusing = {"on": True}

    def add_image(data, role, record_uuid=None):
        if refusing["on"]:
            raise DiskFull("cannot write image: No space left on device")
        return real_add_image(data, role, record_uuid)
    store.add_image = add_image   # a disk that fills between the record and its images
    data = {"lane": "in1", "plate_no": "辽A12345", "plate_color": 5, "plate_class": "02",
            "pass_time": "", "motor_vehicle": {}, "confidence": 0.9}
    vision._store_event(data, b"scene-jpeg", b"crop-jpeg")
    assert vision.events_stored == 0 and vision.store_errors == 1
    assert asked == [], "its record is stored: the decision follows, only the images wait"
    vision._store_event(dict(data, plate_no="辽B67890"), b"scene-2", b"")
    assert [r.data["plate_no"] for r in store.records("plate_read")] == ["辽A12345"], \
        "the second read waits behind the first, in order"
    assert asked == [{"lane": "in1", "reason": "fault", "ref": None}], "no record, no decision: the guard"
    refusing["on"] = False
    vision._store_pending()
    reads = store.records("plate_read")
    assert sorted(r.data["plate_no"] for r in reads) == ["辽A12345", "辽B67890"]
    first = next(r for r in reads if r.data["plate_no"] == "辽A12345")
    images = store.db.execute("SELECT role FROM images WHERE record_uuid = ?", [first.uuid]).fetchall()
    assert sorted(role for (role,) in images) == ["plate", "scene"]
    assert vision.events_stored == 2


def test_the_guard_is_asked_once_per_lane_while_the_store_refuses_reads(tmp_path, store):
    """A vehicle waiting at the barrier is read again and again: the guard is asked once, not
    at every read, and at once again when the store, back, refuses anew."""
    from agent.bus import GUARD_ATTENTION, Bus
    from agent.store import DiskFull
    bus, asked = Bus(), []
    bus.subscribe(GUARD_ATTENTION, lambda **event: asked.append(event["lane"]))
    vision = VisionProcess(_settings(tmp_path / "cam"), store, bus)
    real_add, refusing = store.add, {"on": True}

    def add(kind, data, at=None):
        if refusing["on"]:
            raise DiskFull("cannot write record: No space left on device")
        return real_add(kind, data, at)
    store.add = add
    data = {"lane": "in1", "plate_no": "辽A12345", "plate_color": 5, "plate_class": "02",
            "pass_time": "", "motor_vehicle": {}, "confidence": 0.9}
    for _ in range(5):
        vision._store_event(data, b"", b"")
    assert asked == ["in1"]
    vision._store_event(dict(data, lane="out1"), b"", b"")
    assert asked == ["in1", "out1"], "each lane's guard is asked"
    refusing["on"] = False
    vision._store_pending()
    assert len(store.records("plate_read")) == 6
    refusing["on"] = True
    vision._store_event(data, b"", b"")
    assert asked == ["in1", "out1", "in1"], "stored again in between: a new refusal asks at once"
