"""Cameras: every frame source behind one small interface.

`FrameSource` has `read() -> Frame | None`, `close()` and `is_open`. Backends:

- `PiCamera`: the Raspberry Pi camera through picamera2 (imported lazily; only
  Raspberry Pi OS ships it).
- `CaptureSource`: anything OpenCV opens: a device number, an rtsp:// or
  http(s):// URL, a video file.
- `FolderSource`: a folder of images replayed in name order (tests, the demo,
  the HIL rig), optionally looping and paced.

`open_source(spec)` picks the backend from the config string (lane.camera).
`ReconnectingSource` wraps any of them: a camera or stream that stops giving
frames is reported once (`when_lost`), retried with capped exponential
backoff, and reported again when it is back (`when_recovered`); the agent
never restarts for it.

`read()` returns None when a finite source (file, folder without loop) has
ended; a live source that fails raises `CameraLost`.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

log = logging.getLogger("gate.camera")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class CameraError(Exception):
    """A source that cannot be opened: the message names the source and why."""


class CameraLost(CameraError):
    """A source that was working stopped giving frames."""


@dataclass
class Frame:
    image: np.ndarray
    """BGR, H x W x 3."""
    time: float
    """Wall-clock time of capture (epoch seconds)."""
    index: int
    source: str
    name: str = ""
    """File name for replayed images, '' for live cameras."""


class FrameSource(Protocol):
    source: str

    def read(self) -> Frame | None:
        """The next frame; None when a finite source has ended. Raises CameraLost."""

    def close(self) -> None:
        """Release the camera; safe to call twice."""

    @property
    def is_open(self) -> bool: ...


def decode_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as BGR, or raise CameraError naming the file and the reason.

    Uses imdecode over the bytes so non-ASCII paths (plate names in file
    names) work and a truncated or non-image file is told apart from a
    missing one."""
    import cv2
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CameraError(f"{path}: no such file") from None
    except (IsADirectoryError, PermissionError, OSError) as exc:
        raise CameraError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not data:
        raise CameraError(f"{path}: empty file")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise CameraError(f"{path}: not a readable image (corrupt or unsupported format)")
    return image


class FolderSource:
    """Images of a folder, in name order; `loop` starts again at the end, `fps` paces them.

    A corrupt file is skipped with a warning (counted in `skipped`); a folder
    that disappears raises CameraLost."""

    def __init__(self, folder: str | os.PathLike, *, loop: bool = False, fps: float = 0.0):
        self.folder = Path(folder)
        self.source = str(folder)
        self.loop, self.fps = loop, fps
        self.skipped: list[str] = []
        self._files = self._list()
        self._pos = 0
        self._index = 0
        self._open = True
        self._last = 0.0

    def _list(self) -> list[Path]:
        try:
            files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        except FileNotFoundError:
            raise CameraLost(f"image folder {self.folder} not found") from None
        except NotADirectoryError:
            raise CameraError(f"{self.folder} is not a folder") from None
        if not files:
            raise CameraError(f"image folder {self.folder} holds no images "
                              f"({', '.join(sorted(IMAGE_SUFFIXES))})")
        return files

    @property
    def is_open(self) -> bool:
        return self._open

    def read(self) -> Frame | None:
        while self._open:
            if self._pos >= len(self._files):
                if not self.loop:
                    self._open = False
                    return None
                self._files, self._pos = self._list(), 0
            path = self._files[self._pos]
            self._pos += 1
            if not self.folder.is_dir():
                raise CameraLost(f"image folder {self.folder} disappeared")
            try:
                image = decode_image(path)
            except CameraError as exc:
                if not path.exists() and not self.folder.is_dir():
                    raise CameraLost(f"image folder {self.folder} disappeared") from None
                log.warning("skipping frame: %s", exc)
                self.skipped.append(str(exc))
                continue
            self._pace()
            self._index += 1
            return Frame(image, time.time(), self._index, self.source, path.name)
        return None

    def _pace(self) -> None:
        if self.fps > 0:
            wait = self._last + 1.0 / self.fps - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._last = time.monotonic()

    def close(self) -> None:
        self._open = False


class CaptureSource:
    """A device number, stream URL or video file through cv2.VideoCapture."""

    def __init__(self, spec: str | int, *, live: bool | None = None):
        import cv2
        self.source = str(spec)
        self.live = isinstance(spec, int) or str(spec).isdigit() or "://" in str(spec) \
            if live is None else live
        target = int(spec) if str(spec).isdigit() else str(spec)
        self._cap = cv2.VideoCapture(target)
        if not self._cap.isOpened():
            self._cap.release()
            what = "camera device" if isinstance(target, int) else ("stream" if self.live else "video file")
            raise CameraLost(f"cannot open {what} {spec}")
        self._index = 0

    @property
    def is_open(self) -> bool:
        return self._cap is not None and self._cap.isOpened()

    def read(self) -> Frame | None:
        if self._cap is None:
            return None
        ok, image = self._cap.read()
        if not ok or image is None:
            if self.live:
                raise CameraLost(f"{self.source}: no frame from the camera/stream")
            self.close()
            return None
        self._index += 1
        return Frame(image, time.time(), self._index, self.source)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class PiCamera:
    """The Raspberry Pi camera module through picamera2 (Raspberry Pi OS only)."""

    def __init__(self, size: tuple[int, int] = (1280, 720)):
        try:
            from picamera2 import Picamera2  # noqa: hardware library, imported only here
        except ImportError:
            raise CameraError("camera 'picamera2' needs the picamera2 library, which only Raspberry "
                              "Pi OS provides (apt install python3-picamera2; make the venv with "
                              "--system-site-packages); elsewhere use a device number, URL, "
                              "video file or image folder") from None
        self.source = "picamera2"
        try:
            self._cam = Picamera2()
            self._cam.configure(self._cam.create_video_configuration(
                main={"size": size, "format": "BGR888"}))
            self._cam.start()
        except Exception as exc:
            raise CameraLost(f"picamera2: cannot start the camera: {exc}") from None
        self._index = 0

    @property
    def is_open(self) -> bool:
        return self._cam is not None

    def read(self) -> Frame | None:
        if self._cam is None:
            return None
        try:
            image = self._cam.capture_array("main")
        except Exception as exc:
            raise CameraLost(f"picamera2: capture failed: {exc}") from None
        self._index += 1
        return Frame(np.ascontiguousarray(image[:, :, :3]), time.time(), self._index, self.source)

    def close(self) -> None:
        if self._cam is not None:
            try:
                self._cam.stop()
                self._cam.close()
            finally:
                self._cam = None


def open_source(spec: str, *, loop: bool = False, fps: float = 0.0) -> FrameSource:
    """The frame source named by a lane.camera string."""
    spec = str(spec).strip()
    if not spec:
        raise CameraError("no camera configured (lane.camera is empty)")
    if spec == "picamera2":
        return PiCamera()
    if spec.isdigit() or "://" in spec:
        return CaptureSource(spec)
    path = Path(spec)
    if path.is_dir():
        return FolderSource(path, loop=loop, fps=fps)
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return _SingleImage(path)
        return CaptureSource(spec, live=False)
    raise CameraLost(f"camera source {spec!r} not found: expected 'picamera2', a device number, "
                     "an rtsp:// or http:// URL, a video file or a folder of images")


class _SingleImage:
    """One still image as a one-frame source."""

    def __init__(self, path: Path):
        self.source = str(path)
        self._image = decode_image(path)
        self._done = False

    @property
    def is_open(self) -> bool:
        return not self._done

    def read(self) -> Frame | None:
        if self._done:
            return None
        self._done = True
        return Frame(self._image, time.time(), 1, self.source, Path(self.source).name)

    def close(self) -> None:
        self._done = True


@dataclass
class ReconnectingSource:
    """A source that survives its camera: lost frames are reported and retried with backoff.

    `opener()` makes the underlying source. `read()` returns a Frame, or None
    when the source has ended for good or is lost and waiting to retry (it
    then sleeps at most `poll_s`, so a caller's loop stays responsive).
    """

    opener: Callable[[], FrameSource]
    source: str = ""
    backoff_start: float = 0.5
    backoff_max: float = 30.0
    poll_s: float = 0.2
    when_lost: Callable[[str], None] | None = None
    when_recovered: Callable[[str], None] | None = None
    lost_detail: str = ""
    failures: int = 0
    ended: bool = False
    _inner: FrameSource | None = field(default=None, repr=False)
    _next_try: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def is_open(self) -> bool:
        return self._inner is not None and not self.ended

    @property
    def is_lost(self) -> bool:
        return bool(self.lost_detail)

    def read(self) -> Frame | None:
        if self.ended:
            return None
        if self._inner is None and not self._reopen():
            return None
        try:
            frame = self._inner.read()
        except CameraError as exc:
            self._lose(str(exc))
            return None
        if frame is None:
            self.ended = True
            return None
        if self.lost_detail:
            self._recover()
        return frame

    def _reopen(self) -> bool:
        now = time.monotonic()
        if now < self._next_try:
            time.sleep(min(self.poll_s, self._next_try - now))
            return False
        try:
            self._inner = self.opener()
        except CameraError as exc:
            self._lose(str(exc))
            return False
        if not self.lost_detail:
            self.failures = 0
        return True

    def _lose(self, detail: str) -> None:
        if self._inner is not None:
            try:
                self._inner.close()
            except Exception:
                log.exception("closing lost source %s", self.source)
            self._inner = None
        self.failures += 1
        delay = min(self.backoff_max, self.backoff_start * 2 ** (self.failures - 1))
        self._next_try = time.monotonic() + delay
        first = not self.lost_detail
        self.lost_detail = detail
        if first:
            log.error("camera %s lost: %s; retrying", self.source, detail)
            if self.when_lost:
                self.when_lost(detail)
        else:
            log.debug("camera %s still lost (try %d, next in %.1f s): %s",
                      self.source, self.failures, delay, detail)

    def _recover(self) -> None:
        detail = self.lost_detail
        self.lost_detail, self.failures = "", 0
        log.info("camera %s recovered", self.source)
        if self.when_recovered:
            self.when_recovered(f"recovered after: {detail}")

    def close(self) -> None:
        self.ended = True
        if self._inner is not None:
            self._inner.close()
            self._inner = None


def reconnecting(spec: str, *, loop: bool = False, fps: float = 0.0, **kw) -> ReconnectingSource:
    """open_source(spec) wrapped in a ReconnectingSource."""
    return ReconnectingSource(lambda: open_source(spec, loop=loop, fps=fps), source=spec, **kw)
