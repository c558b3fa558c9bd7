"""Frame sources: folder replay, video files, a lost source reported and recovered."""
import time

import cv2
import numpy as np
import pytest

from drivers.camera import (CameraError, CameraLost, CaptureSource, FolderSource, ReconnectingSource,
                            decode_image, open_source, reconnecting)


def _write_frames(folder, n, size=(64, 48)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = np.full((size[1], size[0], 3), i * 20, np.uint8)
        cv2.imwrite(str(folder / f"frame{i:03d}.png"), image)


def test_folder_replays_in_name_order_then_ends(tmp_path):
    _write_frames(tmp_path / "f", 3)
    source = FolderSource(tmp_path / "f")
    frames = [source.read() for _ in range(3)]
    assert [f.name for f in frames] == ["frame000.png", "frame001.png", "frame002.png"]
    assert [int(f.image[0, 0, 0]) for f in frames] == [0, 20, 40]
    assert source.read() is None
    assert not source.is_open


def test_folder_loops_when_asked(tmp_path):
    _write_frames(tmp_path / "f", 2)
    source = FolderSource(tmp_path / "f", loop=True)
    names = [source.read().name for _ in range(5)]
    assert names == ["frame000.png", "frame001.png"] * 2 + ["frame000.png"]
    assert source.is_open


def test_corrupt_frame_is_skipped_and_named(tmp_path):
    _write_frames(tmp_path / "f", 2)
    (tmp_path / "f" / "frame000b.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    source = FolderSource(tmp_path / "f")
    names = [f.name for f in iter(source.read, None)]
    assert names == ["frame000.png", "frame001.png"]
    assert len(source.skipped) == 1 and "frame000b.jpg" in source.skipped[0]
    assert "corrupt" in source.skipped[0]


def test_decode_image_says_what_is_wrong(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"GIF89a garbage")
    with pytest.raises(CameraError, match="bad.jpg: not a readable image"):
        decode_image(bad)
    with pytest.raises(CameraError, match="no such file"):
        decode_image(tmp_path / "missing.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(CameraError, match="empty file"):
        decode_image(tmp_path / "empty.jpg")


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "none").mkdir()
    with pytest.raises(CameraError, match="holds no images"):
        FolderSource(tmp_path / "none")


def test_video_file_source_reads_then_ends(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG video")
    for i in range(4):
        writer.write(np.full((48, 64, 3), 60 * i, np.uint8))
    writer.release()
    source = open_source(str(path))
    assert isinstance(source, CaptureSource) and not source.live
    frames = list(iter(source.read, None))
    assert len(frames) == 4 and frames[0].image.shape == (48, 64, 3)
    assert not source.is_open


def test_unknown_source_and_picamera_elsewhere_give_clear_messages(tmp_path):
    with pytest.raises(CameraLost, match="not found"):
        open_source(str(tmp_path / "nowhere"))
    with pytest.raises(CameraError, match="no camera configured"):
        open_source("")
    with pytest.raises(CameraError, match="picamera2"):
        open_source("picamera2")


def test_lost_folder_is_reported_once_retried_and_recovered(tmp_path):
    folder = tmp_path / "cam"
    _write_frames(folder, 2)
    lost, back = [], []
    source = reconnecting(str(folder), loop=True, backoff_start=0.05, backoff_max=0.1, poll_s=0.02,
                          when_lost=lost.append, when_recovered=back.append)
    assert source.read() is not None
    folder.rename(tmp_path / "away")
    results = [source.read() for _ in range(10)]
    assert all(r is None for r in results)
    assert source.is_lost and len(lost) == 1 and "cam" in lost[0]
    assert source.failures >= 2  # it kept trying, with backoff
    (tmp_path / "away").rename(folder)
    deadline = time.monotonic() + 5
    frame = None
    while frame is None and time.monotonic() < deadline:
        frame = source.read()
    assert frame is not None
    assert not source.is_lost and len(back) == 1 and len(lost) == 1
    source.close()
    assert source.read() is None


def test_end_of_a_finite_source_is_not_a_loss(tmp_path):
    _write_frames(tmp_path / "f", 1)
    lost = []
    source = ReconnectingSource(lambda: FolderSource(tmp_path / "f"), source="f", when_lost=lost.append)
    assert source.read() is not None
    assert source.read() is None and source.ended and not lost
