"""Every vehicle on a lane's presence input is accounted for: a plate read, or a record of
a vehicle without one (plate_no 无车牌) that puts it in front of the guard."""
import numpy as np
import pytest

from agent.plates.detect import Detection
from agent.plates.pipeline import NO_PLATE, LanePipeline, NoPlateEvent, no_plate_record
from agent.plates.recognise import Reading
from agent.plates.track import PlateEvent
from agent.records import KINDS

PLATE_FRAME = np.full((72, 128, 3), 200, np.uint8)
EMPTY_FRAME = np.full((72, 128, 3), 90, np.uint8)


class OnePlateDetector:
    """The detector's interface: finds 'the plate' in PLATE_FRAME and nothing elsewhere."""

    max_plates = 3

    def detect(self, image, roi=None, keep=None):
        if image is not PLATE_FRAME:
            return []
        corners = np.float32([[40, 40], [88, 40], [88, 56], [40, 56]])
        return [Detection(box=(40, 40, 88, 56), corners=corners, crop=np.zeros((16, 48, 3), np.uint8),
                          score=0.9)]


class FixedReader:
    def __init__(self, text="苏E12345"):
        self.text = text

    def read(self, crop):
        return Reading(self.text, self.text, 0.95, (0.95,) * len(self.text), "blue", True)


@pytest.fixture
def lane():
    return LanePipeline("in1", detector=OnePlateDetector(), reader=FixedReader(), trigger="presence",
                        gone_s=1.0, no_plate_after_s=3.0)


def run(pipeline, frames, t0=0.0, dt=0.1):
    """Feed (frame or None for a camera gap) every dt seconds from t0; collect events."""
    events, t = [], t0
    for frame in frames:
        events += pipeline.process(frame, t) if frame is not None else pipeline.tick(t)
        t += dt
    return events, t


def kinds(events):
    return [type(e).__name__ for e in events]


def test_a_vehicle_standing_on_the_loop_unread_is_reported_after_the_wait(lane):
    lane.set_presence(True, now=0.0)
    events, _ = run(lane, [EMPTY_FRAME] * 29)
    assert events == []
    events, _ = run(lane, [EMPTY_FRAME] * 30, t0=2.9)
    assert kinds(events) == ["NoPlateEvent"]
    assert events[0].reason == "waited" and events[0].arrived == 0.0 and events[0].scene is EMPTY_FRAME


def test_a_vehicle_gone_without_a_read_is_reported_once_it_left(lane):
    lane.set_presence(True, now=0.0)
    run(lane, [EMPTY_FRAME] * 8)
    lane.set_presence(False, now=0.8)
    events, _ = run(lane, [None] * 12, t0=0.8)   # the camera gap: tick still accounts
    assert kinds(events) == ["NoPlateEvent"] and events[0].reason == "left"


def test_a_read_vehicle_is_not_also_reported_unread(lane):
    lane.set_presence(True, now=0.0)
    events, t = run(lane, [PLATE_FRAME] * 8)
    lane.set_presence(False, now=t)
    more, _ = run(lane, [EMPTY_FRAME] * 60, t0=t)
    assert kinds(events + more) == ["PlateEvent"]
    assert not lane.visits


def motion_lane():
    """A lane that looks on motion and also has a loop (the loop only accounts)."""
    return LanePipeline("in1", detector=OnePlateDetector(), reader=FixedReader(), trigger="motion",
                        gone_s=1.0, no_plate_after_s=3.0)


def test_a_plate_read_on_the_approach_accounts_for_the_vehicle():
    lane = motion_lane()
    events, t = run(lane, [PLATE_FRAME] * 5)   # read before the car reaches the loop
    lane.set_presence(True, now=t)
    more, t = run(lane, [EMPTY_FRAME] * 40, t0=t)
    assert kinds(events + more) == ["PlateEvent"]


def test_an_unread_car_then_a_read_one_are_one_record_each(lane):
    lane.set_presence(True, now=0.0)
    events, _ = run(lane, [EMPTY_FRAME] * 8)
    lane.set_presence(False, now=0.8)
    more, _ = run(lane, [EMPTY_FRAME] * 2, t0=0.8)
    lane.set_presence(True, now=1.0)
    later, t = run(lane, [PLATE_FRAME] * 8, t0=1.0)
    lane.set_presence(False, now=t)
    rest, _ = run(lane, [EMPTY_FRAME] * 40, t0=t)
    events += more + later + rest
    assert sorted(kinds(events)) == ["NoPlateEvent", "PlateEvent"]
    unread = next(e for e in events if isinstance(e, NoPlateEvent))
    assert unread.arrived == 0.0


def test_a_repeat_within_the_window_still_accounts_for_the_vehicle():
    lane = motion_lane()
    first, t = run(lane, [PLATE_FRAME] * 8)
    gap, t = run(lane, [EMPTY_FRAME] * 20, t0=t)
    lane.set_presence(True, now=t)
    again, t = run(lane, [PLATE_FRAME] * 8, t0=t)
    lane.set_presence(False, now=t)
    rest, _ = run(lane, [EMPTY_FRAME] * 40, t0=t)
    assert kinds(first + gap + again + rest) == ["PlateEvent"]
    assert lane.tracker.suppressed == 1


def test_without_presence_nothing_is_reported_unread():
    lane = LanePipeline("in1", detector=OnePlateDetector(), reader=FixedReader(), trigger="motion")
    events, _ = run(lane, [EMPTY_FRAME] * 100)
    assert events == []


def test_flush_reports_a_vehicle_still_unaccounted(lane):
    lane.set_presence(True, now=0.0)
    run(lane, [EMPTY_FRAME] * 5)
    assert kinds(lane.flush(0.6)) == ["NoPlateEvent"]


def test_no_plate_record_maps_onto_gat1400(store):
    event = NoPlateEvent("in1", 1764000000.0, 1764000003.0, EMPTY_FRAME, "waited")
    data, scene, crop = no_plate_record(event, device_id="21010200001210000001")
    assert data["plate_no"] == NO_PLATE == "无车牌" and data["has_plate"] is False
    assert data["motor_vehicle"]["HasPlate"] is False and data["motor_vehicle"]["PlateNo"] == NO_PLATE
    assert data["plate_color"] == 99 and data["reason"] == "no_plate_waited"
    assert "box" not in data and "LeftTopX" not in data["motor_vehicle"]
    assert len(data["motor_vehicle"]["MotorVehicleID"]) == 48
    assert scene[:2] == b"\xff\xd8" and crop == b""
    assert set(KINDS["plate_read"].required) <= set(data)
    record = store.add("plate_read", data)
    assert store.get(record.uuid).data["plate_no"] == NO_PLATE


def test_plate_event_type_is_distinct():
    assert not issubclass(NoPlateEvent, PlateEvent)
