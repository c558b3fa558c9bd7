"""The plate pipeline of one lane: frame -> plates -> reads -> one event per vehicle -> record.

`LanePipeline.process(frame)` runs the trigger (motion gate or presence),
detection in the lane's ROI, recognition of each rectified crop and the
tracker. `read_plates(image)` is the same detect+read for one image (the
bench); `read_still(image)` adds what a still image may be, a plate crop
(the `plates read` command). `plate_record(event, ...)` turns an
event into the plate_read record data and its two JPEGs (GA/T 1400
MotorVehicleObject fields included; docs/vision.md documents the shape).
"""
from __future__ import annotations

import hashlib
import itertools
import time
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from agent.platecodes import COLOR_CODES, gat1400_codes
from agent.plates.color import plate_color
from agent.plates.detect import Detection, Detector
from agent.plates.track import Observation, PlateEvent, PlateTracker
from agent.records import format_time, gat1400_time


@dataclass
class PlateResult:
    """One plate found in one image."""

    detection: Detection
    text: str = ""
    confidence: float = 0.0
    char_confidences: tuple[float, ...] = ()
    color: str = ""
    valid: bool = False

    def to_json(self) -> dict:
        return {"text": self.text, "color": self.color, "box": list(self.detection.box),
                "confidence": round(self.confidence, 3)}


# A read that fits no plate grammar is kept as a partial plate only with at least this many
# characters read at least this surely; below that it is a sign, a grille or a bumper sticker.
PARTIAL_MIN_CHARS = 5
PARTIAL_MIN_CONFIDENCE = 0.2
# Candidates read beyond the detector's max_plates: a real plate ranked below signs gets its chance.
SPARE_CANDIDATES = 1
# A still image wider than this (width / height) is no camera frame (16:9 is 1.78): a plate crop.
PLATE_CROP_MIN_ASPECT = 1.8


def read_plates(image: np.ndarray, detector: Detector, reader=None, roi=None) -> list[PlateResult]:
    """Detect every plate in `image` and read each (reader None: detection only).

    With a reader, the read is the last check of a candidate: the detector is
    asked for SPARE_CANDIDATES more than its max_plates, candidates whose read
    fits the plate grammar go first (detector order otherwise), and those that
    don't are kept only as a partial plate (PARTIAL_MIN_CHARS characters,
    PARTIAL_MIN_CONFIDENCE). On the shared scenes this locates plates that three
    confident signs used to push out and returns a fifth as many false boxes
    (bench/plates.py)."""
    if reader is None:
        return [PlateResult(det, color=plate_color(det.crop)) for det in detector.detect(image, roi)]
    results = []
    for det in detector.detect(image, roi, keep=detector.max_plates + SPARE_CANDIDATES):
        reading = reader.read(det.crop)
        if not (reading.valid or is_partial_plate(reading)):
            continue
        results.append(_result(det, reading))
    results.sort(key=lambda r: not r.valid)
    return results[:detector.max_plates]


def read_still(image: np.ndarray, detector: Detector, reader=None) -> list[PlateResult]:
    """read_plates for a still image that may be a plate crop rather than a scene.

    The detector looks for a plate's edge against its surroundings, and a crop
    cut at the plate's border has none: on the shared crops it finds no plate in
    one in thirty. So an image wider than PLATE_CROP_MIN_ASPECT in which nothing
    reads as a plate is read whole, and that read counts only if it fits the
    plate grammar (its box is the whole image, its detector score 0)."""
    results = read_plates(image, detector, reader)
    h, w = image.shape[:2]
    if reader is None or any(r.valid for r in results) or w < PLATE_CROP_MIN_ASPECT * h:
        return results
    reading = reader.read(image)
    if not reading.valid:
        return results
    corners = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    return [_result(Detection((0, 0, w, h), corners, 0.0, crop=image), reading)]


def _result(det: Detection, reading) -> PlateResult:
    return PlateResult(det, text=reading.text, confidence=reading.confidence,
                       char_confidences=reading.char_confidences, color=reading.color, valid=reading.valid)


def is_partial_plate(reading) -> bool:
    """A read that fits no plate grammar but is enough of one to track and vote on."""
    return len(reading.text) >= PARTIAL_MIN_CHARS and reading.confidence >= PARTIAL_MIN_CONFIDENCE


class MotionGate:
    """Cheap change detector: a frame is worth looking at when enough of the ROI changed.

    Compares a 160-pixel-wide grey thumbnail with a running background; costs
    well under a millisecond, so an idle lane costs almost nothing."""

    def __init__(self, threshold: float = 0.01, pixel_delta: int = 18):
        self.threshold, self.pixel_delta = threshold, pixel_delta
        self._background: np.ndarray | None = None

    def moved(self, image: np.ndarray) -> bool:
        h, w = image.shape[:2]
        thumb = cv2.cvtColor(cv2.resize(image, (160, max(1, 160 * h // w)), interpolation=cv2.INTER_AREA),
                             cv2.COLOR_BGR2GRAY).astype(np.float32)
        thumb = cv2.GaussianBlur(thumb, (5, 5), 0)
        if self._background is None or self._background.shape != thumb.shape:
            self._background = thumb
            return True
        changed = float((cv2.absdiff(thumb, self._background) > self.pixel_delta).mean())
        cv2.accumulateWeighted(thumb, self._background, 0.1)
        return changed >= self.threshold


@dataclass
class Visit:
    """A vehicle on the lane's presence input (loop or photo-eye), from its arrival
    until a plate read accounts for it, or it is reported as a vehicle without one."""

    arrived: float
    left: float | None = None
    scene: np.ndarray | None = None
    accounted: bool = False


@dataclass
class NoPlateEvent:
    """A vehicle the presence input saw and no plate was read for: none, or unreadable.
    Its record (has_plate false, plate_no 无车牌) puts the vehicle in front of the guard."""

    lane: str
    arrived: float
    at: float
    scene: np.ndarray | None
    reason: str
    """'waited' (present no_plate_after_s without a read) or 'left' (gone without one)."""


class LanePipeline:
    """Frames of one lane's camera in, plate events out.

    With a presence input, every vehicle is accounted for: a vehicle no plate read
    claims within `no_plate_after_s` of its arrival (or by the time it left) becomes a
    `NoPlateEvent`, so an unreadable plate is never a vehicle nobody was told of."""

    CLAIM_BEFORE_S = 5.0
    """A read this long before the vehicle reached the loop is still its read (seen on approach)."""
    MAX_VISITS = 50

    def __init__(self, lane: str, *, detector: Detector | None = None, reader=None, roi=None,
                 trigger: str = "motion", min_confidence: float = 0.5,
                 repeat_window_s: float = 30.0, gone_s: float = 1.0, presence_tail_s: float = 3.0,
                 no_plate_after_s: float = 3.0):
        if trigger not in ("motion", "presence", "continuous"):
            raise ValueError(f"trigger {trigger!r}: expected motion, presence or continuous")
        self.lane = lane
        self.detector = detector or Detector()
        self.reader = reader
        self.roi = list(roi) if roi else None
        self.trigger = trigger
        self.min_confidence = min_confidence
        self.tracker = PlateTracker(lane, repeat_window_s=repeat_window_s, gone_s=gone_s)
        self.motion = MotionGate()
        self.presence = False
        self._presence_until = 0.0
        self.presence_tail_s = presence_tail_s
        self.no_plate_after_s = no_plate_after_s
        self.visits: deque[Visit] = deque()
        self._reads: deque[float] = deque()
        """first_seen of each plate read (emitted or a suppressed repeat) no visit has claimed."""
        self.frames = self.looked = 0

    def set_presence(self, present: bool, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if present and not self.presence:
            self.visits.append(Visit(now))
            while len(self.visits) > self.MAX_VISITS:
                self.visits.popleft()
        elif not present:
            self._presence_until = now + self.presence_tail_s
            for visit in self.visits:
                if visit.left is None:
                    visit.left = now
        self.presence = present

    def should_look(self, image: np.ndarray, now: float) -> bool:
        if self.trigger == "continuous":
            return True
        if self.trigger == "presence":
            return self.presence or now < self._presence_until or bool(self.tracker.tracks)
        crop = image[self.roi[1]:self.roi[3], self.roi[0]:self.roi[2]] if self.roi else image
        moved = self.motion.moved(crop)
        return moved or bool(self.tracker.tracks)

    def process(self, image: np.ndarray, at: float) -> list[PlateEvent | NoPlateEvent]:
        """One frame taken at `at` (epoch seconds); returns the events it completes."""
        self.frames += 1
        for visit in self.visits:
            if visit.left is None and not visit.accounted:
                visit.scene = image
        observations = []
        if self.should_look(image, at):
            self.looked += 1
            for result in read_plates(image, self.detector, self.reader, self.roi):
                if self.reader is not None and (not result.text or result.confidence < self.min_confidence):
                    continue
                det = result.detection
                observations.append(Observation(
                    box=det.box, corners=det.corners, time=at, text=result.text,
                    confidence=result.confidence, char_confidences=result.char_confidences,
                    color=result.color, scene=image, crop=det.crop))
        return self._account(self.tracker.update(observations, at), at)

    def tick(self, now: float) -> list[PlateEvent | NoPlateEvent]:
        """No frame came (a camera gap): tracks still end and vehicles are still accounted for."""
        return self._account(self.tracker.update([], now), now)

    def flush(self, at: float) -> list[PlateEvent | NoPlateEvent]:
        events = self.tracker.flush(at)
        self._note_reads(events)
        return events + self._unread_vehicles(at, final=True)

    def _account(self, events: list[PlateEvent], now: float) -> list[PlateEvent | NoPlateEvent]:
        self._note_reads(events)
        return events + self._unread_vehicles(now)

    def _note_reads(self, events: list[PlateEvent]) -> None:
        self._reads.extend(e.first_seen for e in events)
        self._reads.extend(self.tracker.take_repeats())

    def _unread_vehicles(self, now: float, final: bool = False) -> list[NoPlateEvent]:
        """Visits in arrival order: each claims the first unclaimed read seen from a little
        before it arrived until it left; one that is due with none is a vehicle without a read.
        Nothing is decided while a track is still voting: its read may be this vehicle's."""
        pending = any(not track.emitted for track in self.tracker.tracks)
        events = []
        for visit in self.visits:
            if visit.accounted:
                continue
            claimed = next((r for r in self._reads if visit.arrived - self.CLAIM_BEFORE_S <= r
                            and (visit.left is None or r <= visit.left)), None)
            if claimed is not None:
                self._reads.remove(claimed)
                visit.accounted = True
                continue
            if pending and not final:
                break
            waited = now - visit.arrived >= self.no_plate_after_s
            gone = visit.left is not None and now - visit.left >= self.tracker.gone_s
            if waited or gone or final:
                visit.accounted = True
                events.append(NoPlateEvent(self.lane, visit.arrived, now, visit.scene,
                                           "left" if visit.left is not None else "waited"))
        while self.visits and self.visits[0].accounted and self.visits[0].left is not None:
            self.visits.popleft()
        while self._reads and now - self._reads[0] > 2 * self.CLAIM_BEFORE_S + self.no_plate_after_s:
            self._reads.popleft()
        return events


_serial = itertools.count(1)


def motor_vehicle_id(device_id: str, at: float, tz: str, serial: int | None = None) -> str:
    """A 48-character GA/T 1400 MotorVehicleID: the 41-character ID of the scene image
    (DeviceID 20 + type '02' image + yyyyMMddHHmmss + 5-digit serial) + object type '02'
    (motor vehicle) + 5-digit serial."""
    serial = next(_serial) if serial is None else serial
    image_id = f"{device_id:0>20.20}02{gat1400_time(at, tz)}{serial % 100000:05d}"
    return f"{image_id}02{1:05d}"


def encode_jpeg(image: np.ndarray, quality: int = 85) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


NO_PLATE = "无车牌"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest() if data else ""


def _vehicle_record(lane: str, *, plate_no: str, has_plate: bool, color: str, codes: dict, valid: bool,
                    confidence: float, char_confidences, passed: float, shot_at: float, scene_sha: str,
                    reads: int, reason: str, device_id: str, tz: str, serial: int | None,
                    box: dict | None = None) -> dict:
    """The plate_read record data both a read and a vehicle without one share, its GA/T 1400
    MotorVehicle object included (box: the plate's, where one was found: in both)."""
    shot = gat1400_time(shot_at, tz)
    vehicle_id = motor_vehicle_id(device_id, shot_at, tz, serial)
    color_code = COLOR_CODES.get(color, COLOR_CODES["other"])
    motor_vehicle = {"MotorVehicleID": vehicle_id, "InfoKind": 1, "SourceID": vehicle_id[:41],
                     "DeviceID": device_id}
    if box is not None:
        motor_vehicle.update({"LeftTopX": box["left_top_x"], "LeftTopY": box["left_top_y"],
                              "RightBtmX": box["right_btm_x"], "RightBtmY": box["right_btm_y"]})
    sub_images = [{"ImageID": vehicle_id[:41], "Type": "14", "FileFormat": "Jpeg",
                   "ShotTime": shot, "DeviceID": device_id, "sha256": scene_sha}] if scene_sha else []
    motor_vehicle.update({"HasPlate": has_plate, "PlateClass": codes["plate_class"], "PlateColor": str(color_code),
                          "PlateNo": plate_no, "PassTime": gat1400_time(passed, tz),
                          "SubImageList": {"SubImageInfoObject": sub_images}})
    return {
        "lane": lane,
        "plate_no": plate_no,
        "has_plate": has_plate,
        "plate_color": color_code,
        "plate_color_name": color,
        "plate_class": codes["plate_class"],
        "plate_kind": codes["kind"],
        "valid": valid,
        "confidence": confidence,
        "char_confidences": list(char_confidences),
        "pass_time": format_time(passed, tz),
        "scene_image": {"sha256": scene_sha, "type": 14, "shot_time": shot, "format": "jpeg"},
        "reads": reads,
        "reason": reason,
        "motor_vehicle": motor_vehicle,
    } | ({"box": box} if box is not None else {})


def no_plate_record(event: NoPlateEvent, *, device_id: str, tz: str = "Asia/Shanghai",
                    serial: int | None = None) -> tuple[dict, bytes, bytes]:
    """(plate_read record data with has_plate false, scene JPEG, no crop) for a vehicle
    without a read; the GA/T 1400 PlateNo is 无车牌 as the standard has it."""
    scene_jpeg = encode_jpeg(event.scene) if event.scene is not None else b""
    data = _vehicle_record(event.lane, plate_no=NO_PLATE, has_plate=False, color="",
                           codes={"plate_class": "99", "kind": ""}, valid=False, confidence=0.0,
                           char_confidences=(), passed=event.arrived, shot_at=event.arrived,
                           scene_sha=_sha256(scene_jpeg), reads=0, reason="no_plate_" + event.reason,
                           device_id=device_id, tz=tz, serial=serial)
    return data, scene_jpeg, b""


def plate_record(event: PlateEvent, *, device_id: str, tz: str = "Asia/Shanghai",
                 serial: int | None = None) -> tuple[dict, bytes, bytes]:
    """(plate_read record data, scene JPEG, plate crop JPEG) for one event."""
    best = event.best
    scene_jpeg = encode_jpeg(best.scene) if best.scene is not None else b""
    crop_jpeg = encode_jpeg(best.crop, 95) if best.crop is not None else b""
    color = event.color or "blue"
    box = {"left_top_x": int(best.box[0]), "left_top_y": int(best.box[1]),
           "right_btm_x": int(best.box[2]), "right_btm_y": int(best.box[3])}
    data = _vehicle_record(event.lane, plate_no=event.text, has_plate=True, color=color,
                           codes=gat1400_codes(event.text, color), valid=event.valid,
                           confidence=event.confidence, char_confidences=event.char_confidences,
                           passed=event.first_seen, shot_at=best.time, scene_sha=_sha256(scene_jpeg),
                           reads=event.reads, reason=event.reason, device_id=device_id, tz=tz,
                           serial=serial, box=box)
    data["corners"] = [[round(float(x), 1), round(float(y), 1)] for x, y in best.corners]
    data["plate_image"] = {"sha256": _sha256(crop_jpeg)}
    return data, scene_jpeg, crop_jpeg
