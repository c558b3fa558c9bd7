"""The plate camera area: a separate vision process, its events stored by the core.

`build(gate)` returns one `VisionProcess` subsystem when any lane has a
camera. The process (multiprocessing, spawn: no state shared with the core)
runs one thread per lane: camera -> trigger -> detect -> read -> track, and
sends back over a pipe:

    ("event", lane, data, scene_jpeg, crop_jpeg)   a plate_read record to store
    ("fault", subsystem, condition, detail)        a fault record to store
    ("state", lane, state, detail)                 per-lane health
    ("ready",)

The core's receiver thread stores each event (Store.add("plate_read"), then
the two JPEGs with Store.add_image, whose sha256 equal those in the record).
Presence inputs (bus PRESENCE) go the other way as ("presence", lane, bool).
If the process dies, health() says fault and the supervisor restarts it with
backoff; the alarm path and the card readers never wait on vision.
"""
from __future__ import annotations

import collections
import logging
import multiprocessing
import os
import threading
import time
from dataclasses import dataclass

from agent import bus as topics
from agent.supervisor import DEGRADED, FAULT, OK, STARTING, STOPPED

log = logging.getLogger("gate.vision")

UNSTORED_RETRY_S = 2.0
UNSTORED_MAX = 500
"""plate reads held in memory while the store refuses them (about 100 MB of JPEGs at most)"""


@dataclass
class Unstored:
    data: dict
    scene: bytes
    crop: bytes
    uuid: str | None = None


def lane_settings(config) -> dict:
    """What the vision process needs from the config: plain data, picklable."""
    vision = config.vision
    return {
        "device_id": config.device.id,
        "timezone": config.device.timezone,
        "engine": vision.engine,
        "repeat_window_s": vision.repeat_window_s,
        "min_confidence": vision.min_confidence,
        "no_plate_after_s": vision.no_plate_after_s,
        "workers": vision.workers,
        "log_level": config.log.level,
        "lanes": [{"name": lane.name, "camera": lane.camera, "trigger": lane.trigger,
                   "roi": list(lane.roi)} for lane in config.lanes if lane.camera],
    }


class VisionProcess:
    """Subsystem: owns the vision process and stores what it finds."""

    name = "vision"

    def __init__(self, settings: dict, store, bus=None, *, start_timeout_s: float = 60.0):
        self.settings = settings
        self.store = store
        self.bus = bus
        self.start_timeout_s = start_timeout_s
        self._proc = None
        self._conn = None
        self._send_lock = threading.Lock()
        self._receiver: threading.Thread | None = None
        self._lanes: dict[str, tuple[str, str]] = {}
        self._ready = False
        self._started_at = 0.0
        self._stopping = False
        self.events_stored = 0
        self.store_errors = 0
        self._unstored: collections.deque[Unstored] = collections.deque()
        self._guard_asked = topics.Throttle(topics.GUARD_ATTENTION_EVERY_S)   # by lane

    def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=worker_main, args=(self.settings, child),
                                 name="gate-vision", daemon=True)
        self._stopping, self._ready = False, False
        self._lanes = {lane["name"]: (STARTING, "") for lane in self.settings["lanes"]}
        self._started_at = time.monotonic()
        self._proc.start()
        child.close()
        self._conn = parent
        self._receiver = threading.Thread(target=self._receive, name="vision-receiver", daemon=True)
        self._receiver.start()
        if self.bus is not None:
            self.bus.subscribe(topics.PRESENCE, self._on_presence)

    def _on_presence(self, lane: str, present: bool, **_):
        self.send(("presence", lane, bool(present)))

    def send(self, message) -> bool:
        with self._send_lock:
            if self._conn is None:
                return False
            try:
                self._conn.send(message)
                return True
            except (OSError, EOFError, BrokenPipeError):
                return False

    def _receive(self) -> None:
        conn = self._conn
        while True:
            try:
                if not conn.poll(UNSTORED_RETRY_S):
                    self._store_pending()
                    continue
                message = conn.recv()
            except (EOFError, OSError):
                return
            try:
                self._handle(message)
            except Exception:
                log.exception("vision message %r not handled", message[:2])

    def _handle(self, message) -> None:
        kind = message[0]
        if kind == "event":
            _, lane, data, scene_jpeg, crop_jpeg = message
            self._store_event(data, scene_jpeg, crop_jpeg)
        elif kind == "fault":
            _, subsystem, condition, detail = message
            self.store.add("fault", {"subsystem": subsystem, "condition": condition, "detail": detail})
        elif kind == "state":
            _, lane, state, detail = message
            self._lanes[lane] = (state, detail)
        elif kind == "ready":
            self._ready = True

    def _store_event(self, data: dict, scene_jpeg: bytes, crop_jpeg: bytes) -> None:
        if len(self._unstored) >= UNSTORED_MAX:
            dropped = self._unstored.popleft()
            log.error("plate read %s at lane %s lost: %d reads already wait for the store",
                      dropped.data.get("plate_no"), dropped.data.get("lane"), UNSTORED_MAX)
        event = Unstored(data, scene_jpeg, crop_jpeg)
        self._unstored.append(event)
        self._store_pending()
        if event.uuid is None:
            self._ask_guard(data.get("lane"))

    def _ask_guard(self, lane: str) -> None:
        """No record, so no decision will come for this vehicle while the store refuses: the
        lane's guard is asked, again at most every topics.GUARD_ATTENTION_EVERY_S while it goes on (a
        vehicle waiting at the barrier is read again and again)."""
        if self.bus is not None and self._guard_asked.allow(lane):
            self.bus.publish(topics.GUARD_ATTENTION, lane=lane, reason="fault", ref=None)

    def _store_pending(self) -> None:
        """Store the waiting reads in order: a read that can't be stored (a full disk) waits
        here and is tried again every UNSTORED_RETRY_S, its images with it, so a record never
        names an image that will not follow."""
        while self._unstored:
            event = self._unstored[0]
            try:
                if event.uuid is None:
                    event.uuid = self.store.add("plate_read", event.data).uuid
                    self._guard_asked.reset(event.data.get("lane"))
                if event.scene:
                    self.store.add_image(event.scene, "scene", event.uuid)
                if event.crop:
                    self.store.add_image(event.crop, "plate", event.uuid)
            except Exception as exc:
                self.store_errors += 1
                if self.store_errors == 1 or self.store_errors % 100 == 0:
                    log.error("cannot store plate read %s at lane %s: %s; %d read(s) wait and are "
                              "tried again every %.0f s", event.data.get("plate_no"), event.data.get("lane"),
                              exc, len(self._unstored), UNSTORED_RETRY_S)
                return
            self._unstored.popleft()
            self.events_stored += 1

    def health(self) -> dict:
        if self._stopping or self._proc is None:
            return {"state": STOPPED, "detail": ""}
        if not self._proc.is_alive():
            return {"state": FAULT, "detail": f"vision process exited (code {self._proc.exitcode})"}
        if not self._ready:
            if time.monotonic() - self._started_at > self.start_timeout_s:
                return {"state": FAULT, "detail": "vision process did not start in "
                                                  f"{self.start_timeout_s:.0f} s"}
            return {"state": STARTING, "detail": "loading detector and recogniser"}
        dead = [f"lane {lane}: {detail}" for lane, (state, detail) in self._lanes.items()
                if state == FAULT]
        if dead:
            return {"state": FAULT, "detail": "; ".join(dead)}
        bad = {lane: f"{state}: {detail}" for lane, (state, detail) in self._lanes.items()
               if state != OK}
        info = {"lanes": {lane: state for lane, (state, _) in self._lanes.items()},
                "events": self.events_stored}
        if bad:
            return {"state": DEGRADED, "detail": "; ".join(f"{k} {v}" for k, v in bad.items()), **info}
        return {"state": OK, "detail": f"{len(self._lanes)} lane(s)", **info}

    def stop(self) -> None:
        self._stopping = True
        if self.bus is not None:
            self.bus.unsubscribe(topics.PRESENCE, self._on_presence)
        self.send(("stop",))
        proc = self._proc
        if proc is not None:
            proc.join(timeout=3)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=2)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=2)
        with self._send_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        if self._receiver is not None:
            self._receiver.join(timeout=2)


def build(gate) -> list:
    settings = lane_settings(gate.config)
    if not settings["lanes"]:
        log.info("no lane has a camera (lanes.camera): plate pipeline not started")
        return []
    return [VisionProcess(settings, gate.store, gate.bus)]


# --- the vision process ------------------------------------------------------------

def worker_main(settings: dict, conn) -> None:
    """Entry point of the vision process."""
    from agent.runner import setup_logging
    setup_logging(settings.get("log_level", "info"))
    from agent.plates.heap import keep_frame_buffers
    keep_frame_buffers()
    import cv2
    workers = settings.get("workers") or os.cpu_count() or 1
    cv2.setNumThreads(workers)
    worker = _Worker(settings, conn)
    worker.run()


class _Worker:
    def __init__(self, settings: dict, conn):
        self.settings = settings
        self.conn = conn
        self.send_lock = threading.Lock()
        self.stop = threading.Event()
        self.pipelines = {}

    def send(self, message) -> None:
        with self.send_lock:
            try:
                self.conn.send(message)
            except (OSError, EOFError, BrokenPipeError):
                self.stop.set()

    def run(self) -> None:
        from agent.plates.pipeline import LanePipeline
        from agent.plates.recognise import RecogniserUnavailable, load_reader
        reader, reader_problem = None, ""
        try:
            reader = load_reader(self.settings["engine"])
        except RecogniserUnavailable as exc:
            reader_problem = str(exc)
            self.send(("fault", "vision", "recogniser_unavailable", reader_problem))
        for lane in self.settings["lanes"]:
            self.pipelines[lane["name"]] = LanePipeline(
                lane["name"], reader=reader, roi=lane["roi"], trigger=lane["trigger"],
                min_confidence=self.settings["min_confidence"],
                repeat_window_s=self.settings["repeat_window_s"],
                no_plate_after_s=self.settings["no_plate_after_s"])
        threads = [threading.Thread(target=self.run_lane, args=(lane, reader_problem),
                                    name=f"lane-{lane['name']}", daemon=True)
                   for lane in self.settings["lanes"]]
        for thread in threads:
            thread.start()
        self.send(("ready",))
        while not self.stop.is_set():
            if not self.conn.poll(0.5):
                continue
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                break  # the core went away: so do we
            if message[0] == "stop":
                break
            if message[0] == "presence" and message[1] in self.pipelines:
                self.pipelines[message[1]].set_presence(message[2])
        self.stop.set()
        for thread in threads:
            thread.join(timeout=2)

    def run_lane(self, lane: dict, reader_problem: str) -> None:
        from drivers.camera import reconnecting
        name = lane["name"]
        pipeline = self.pipelines[name]
        source = reconnecting(
            lane["camera"], loop=os.path.isdir(lane["camera"]),
            fps=10.0 if os.path.isdir(lane["camera"]) else 0.0,
            when_lost=lambda detail: (self.send(("fault", f"camera:{name}", "lost", detail)),
                                      self.send(("state", name, DEGRADED, f"camera lost: {detail}"))),
            when_recovered=lambda detail: (self.send(("fault", f"camera:{name}", "recovered", detail)),
                                           self.send(self._lane_state(name, reader_problem))))
        self.send(self._lane_state(name, reader_problem))
        try:
            while not self.stop.is_set():
                frame = source.read()
                if frame is None:
                    if source.ended:
                        self.send(("state", name, DEGRADED, "camera source ended"))
                        break
                    if not reader_problem:
                        for event in pipeline.tick(time.time()):
                            self._send_event(event)
                    continue
                if reader_problem:
                    continue
                for event in pipeline.process(frame.image, frame.time):
                    self._send_event(event)
            for event in pipeline.flush(time.time()):
                self._send_event(event)
        except Exception as exc:
            log.exception("lane %s pipeline failed", name)
            self.send(("state", name, FAULT, f"pipeline failed: {exc}"))
            self.send(("fault", f"vision:{name}", "failed", str(exc)))
        finally:
            source.close()

    @staticmethod
    def _lane_state(name: str, reader_problem: str) -> tuple:
        if reader_problem:
            return ("state", name, DEGRADED, "no recogniser: " + reader_problem)
        return ("state", name, OK, "")

    def _send_event(self, event) -> None:
        from agent.plates.pipeline import NoPlateEvent, no_plate_record, plate_record
        make = no_plate_record if isinstance(event, NoPlateEvent) else plate_record
        data, scene, crop = make(event, device_id=self.settings["device_id"], tz=self.settings["timezone"])
        self.send(("event", event.lane, data, scene, crop))
