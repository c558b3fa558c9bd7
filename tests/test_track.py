"""One event per vehicle: tracking, character voting, early settling, repeat suppression;
the plate_read record it becomes."""
import hashlib

import numpy as np

from agent.plates.pipeline import motor_vehicle_id, plate_record
from agent.plates.track import Observation, PlateTracker, text_similarity
from agent.records import KINDS


def obs(t, x, text, conf=0.9, y=400, w=160, color="blue", char_confs=None):
    box = (x, y, x + w, y + w // 3)
    corners = np.float32([[box[0], box[1]], [box[2], box[1]], [box[2], box[3]], [box[0], box[3]]])
    scene = np.full((720, 1280, 3), 90, np.uint8)
    crop = np.full((36, 136, 3), (160, 60, 10), np.uint8)
    return Observation(box=box, corners=corners, time=t, text=text, confidence=conf,
                       char_confidences=char_confs or (conf,) * len(text), color=color,
                       scene=scene, crop=crop)


def drive(tracker, frames, dt=0.1, until=None):
    """Feed frames (lists of observations), then idle frames until `until`; collect events."""
    events, t = [], 0.0
    for frame in frames:
        events += tracker.update(frame, t)
        t += dt
    while until is not None and t <= until:
        events += tracker.update([], t)
        t += dt
    return events


def moving(text_per_frame, x0=200, step=12, t0=0.0, dt=0.1, **kw):
    return [[obs(t0 + i * dt, x0 + i * step, text, **kw)] for i, text in enumerate(text_per_frame)]


def test_noisy_reads_of_one_vehicle_vote_into_one_event():
    reads = ["京A12345", "京A1Z345", "京A12345", "京A12346", "京A12345", "京A12345"]
    tracker = PlateTracker("in1", settle_reads=99)  # never settles early: emits when it leaves
    events = drive(tracker, moving(reads), until=3.0)
    assert len(events) == 1
    event = events[0]
    assert event.text == "京A12345" and event.lane == "in1" and event.reason == "left"
    assert event.reads == 6 and event.valid
    assert event.char_confidences[3] < 0.9 and event.char_confidences[0] >= 0.89


def test_vote_weights_characters_by_confidence():
    frames = [[obs(0.0, 200, "京A12345", char_confs=(0.9,) * 7)],
              [obs(0.1, 210, "京A12845", char_confs=(0.9, 0.9, 0.9, 0.9, 0.2, 0.9, 0.9))],
              [obs(0.2, 220, "京A12845", char_confs=(0.9, 0.9, 0.9, 0.9, 0.3, 0.9, 0.9))]]
    events = drive(PlateTracker("in1", settle_reads=99), frames, until=2.0)
    assert [e.text for e in events] == ["京A12345"]


def test_settled_vote_emits_early_and_only_once():
    tracker = PlateTracker("in1", settle_reads=3)
    frames = moving(["苏E12345"] * 8)
    early = []
    for i, frame in enumerate(frames):
        for event in tracker.update(frame, i * 0.1):
            early.append((i, event))
    assert len(early) == 1 and early[0][0] == 2 and early[0][1].reason == "settled"
    assert drive(tracker, [], until=3.0) == []


def test_an_unsure_read_of_a_car_waiting_at_the_barrier_is_emitted_after_max_wait():
    tracker = PlateTracker("in1", settle_reads=3, max_wait_s=2.0)
    standing = [[obs(i * 0.1, 300, "辽A7Q2K9", char_confs=(0.6,) + (0.99,) * 6)] for i in range(50)]
    emitted = [(i, e) for i, frame in enumerate(standing) for e in tracker.update(frame, i * 0.1)]
    assert len(emitted) == 1, "one event, while the car still stands there"
    at, event = emitted[0]
    assert event.reason == "waited" and event.text == "辽A7Q2K9" and event.confidence == 0.6
    assert 2.0 <= at * 0.1 < 2.2


def test_a_green_plate_read_a_character_short_never_settles_and_goes_out_invalid():
    """A green plate is a new-energy plate, 8 characters: a box that cuts one off reads as a
    7-character plate that would fit a blue one."""
    tracker = PlateTracker("in1", settle_reads=3, max_wait_s=2.0)
    standing = [[obs(i * 0.1, 300, "皖K01833", conf=0.99, color="green")] for i in range(30)]
    emitted = [(i, e) for i, frame in enumerate(standing) for e in tracker.update(frame, i * 0.1)]
    assert [(e.reason, e.text, e.valid) for _, e in emitted] == [("waited", "皖K01833", False)]
    settled = drive(PlateTracker("in1", settle_reads=3), moving(["皖KD01833"] * 5, color="green"))
    assert [(e.reason, e.valid) for e in settled] == [("settled", True)]


def test_two_vehicles_at_once_are_two_events():
    a = moving(["京A11111"] * 5, x0=100)
    b = moving(["沪B22222"] * 5, x0=800)
    frames = [fa + fb for fa, fb in zip(a, b)]
    events = drive(PlateTracker("in1", settle_reads=99), frames, until=3.0)
    assert sorted(e.text for e in events) == ["京A11111", "沪B22222"]


def test_a_different_plate_in_the_same_place_is_a_new_vehicle():
    frames = moving(["京A11111"] * 3, x0=300, step=0) + moving(["鲁C33333"] * 3, x0=300, step=0, t0=0.3)
    events = drive(PlateTracker("in1", settle_reads=99), frames, until=3.0)
    assert sorted(e.text for e in events) == ["京A11111", "鲁C33333"]


def test_repeat_of_the_same_plate_within_the_window_is_suppressed():
    tracker = PlateTracker("in1", repeat_window_s=30.0, gone_s=1.0)
    first = moving(["浙A66666"] * 4)
    events = drive(tracker, first, until=2.0)
    assert len(events) == 1
    again = [tracker.update([o for o in frame], 10.0 + i * 0.1) for i, frame in
             enumerate(moving(["浙A66666"] * 4, t0=10.0))]
    later = [e for batch in again for e in batch] + tracker.update([], 15.0)
    assert later == [] and tracker.suppressed == 1
    after_window = [tracker.update(frame, 60.0 + i * 0.1) for i, frame in
                    enumerate(moving(["浙A66666"] * 4, t0=60.0))]
    assert len([e for batch in after_window for e in batch]) == 1


def test_a_car_waiting_at_the_barrier_keeps_its_window_open():
    tracker = PlateTracker("in1", repeat_window_s=5.0, gone_s=1.0, settle_reads=3)
    events = []
    for i in range(100):  # 10 s standing still, read every frame
        events += tracker.update([obs(i * 0.1, 300, "皖A12345")], i * 0.1)
    events += tracker.update([], 11.5)  # track lost for a moment...
    for i in range(5):  # ...and found again
        events += tracker.update([obs(12 + i * 0.1, 300, "皖A12345")], 12 + i * 0.1)
    events += tracker.update([], 20.0)
    assert len(events) == 1


def test_text_similarity():
    assert text_similarity("京A12345", "京A12345") == 1.0
    assert text_similarity("京A12345", "京A12346") > 0.8
    assert text_similarity("京A12345", "沪B99999") < 0.3
    assert text_similarity("", "沪B99999") == 1.0


def test_plate_record_maps_onto_gat1400(store):
    event = drive(PlateTracker("in1", settle_reads=99), moving(["京AD12345"] * 3, color="green"),
                  until=2.0)[0]
    data, scene, crop = plate_record(event, device_id="21010200001210000001", tz="Asia/Shanghai")
    assert set(KINDS["plate_read"].required) <= set(data)
    assert data["plate_no"] == "京AD12345" and data["plate_color"] == 9
    assert data["plate_color_name"] == "green" and data["plate_class"] == "52"
    assert data["scene_image"]["sha256"] == hashlib.sha256(scene).hexdigest()
    assert data["plate_image"]["sha256"] == hashlib.sha256(crop).hexdigest()
    assert scene[:2] == b"\xff\xd8" and crop[:2] == b"\xff\xd8"
    assert len(data["scene_image"]["shot_time"]) == 14 and data["scene_image"]["type"] == 14
    mv = data["motor_vehicle"]
    assert len(mv["MotorVehicleID"]) == 48 and mv["MotorVehicleID"].startswith("21010200001210000001")
    assert mv["PlateNo"] == "京AD12345" and mv["HasPlate"] is True and mv["InfoKind"] == 1
    assert mv["LeftTopX"] == data["box"]["left_top_x"] and len(mv["PassTime"]) == 14
    assert mv["SubImageList"]["SubImageInfoObject"][0]["Type"] == "14"
    record = store.add("plate_read", data)
    assert store.add_image(scene, "scene", record.uuid) == data["scene_image"]["sha256"]
    assert store.get(record.uuid).data["plate_no"] == "京AD12345"


def test_motor_vehicle_ids_are_48_characters_and_distinct():
    ids = {motor_vehicle_id("21010200001210000001", 1.7e9, "Asia/Shanghai") for _ in range(50)}
    assert len(ids) == 50 and all(len(i) == 48 for i in ids)
