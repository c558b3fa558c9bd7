"""`gate-agent plates`: read plates from still images, or watch a camera live.

The `plates read --json` line format is a contract other tools rely on:

    {"file": PATH, "plates": [{"text": "京A12345", "color": "blue",
     "box": [x1, y1, x2, y2], "confidence": 0.97}], "ms": 12.3}

one line per image, `"plates": []` when none is found, and
`"error": "..."` (with an empty plate list) for a file that cannot be read.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from agent.cli import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@click.group("plates")
def plates():
    """Plate recognition: read still images, or watch a camera and print events.

    \b
    Example:
      gate-agent plates read --json car.jpg
      gate-agent plates watch --source rtsp://10.0.0.5/stream1
    """
    from agent.plates.heap import keep_frame_buffers
    keep_frame_buffers()   # both commands run frames through the detector


def _expand(paths: tuple[str, ...]) -> list[Path]:
    files = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(path)
    return files


def _reader_or_fail(engine: str, detect_only: bool):
    if detect_only:
        return None
    from agent.plates.recognise import RecogniserUnavailable, load_reader
    try:
        return load_reader(engine)
    except RecogniserUnavailable as exc:
        raise UserError(f"{exc} (use --detect-only to find plates without reading them)") from None


@plates.command("read")
@click.argument("images", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image (see the contract above).")
@click.option("--engine", type=click.Choice(["opencv", "easyocr"]), default="opencv", show_default=True,
              help="Recogniser engine.")
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Leave out reads less confident than this.")
@click.option("--all", "show_all", is_flag=True,
              help="Also list reads that fail the plate grammar or the confidence floor.")
@click.option("--detect-only", is_flag=True,
              help="Find plates without reading them (text is empty; confidence is the detector's).")
def read_cmd(images, as_json, engine, min_confidence, show_all, detect_only):
    """Read the plates in still images (files or folders of images), one line per image.

    An image may be a scene or a plate crop: an image wider than 1.8:1 in which
    no plate is found is read whole (its box is then the whole image). Needs no
    config file. Unreadable files are reported on their line and the
    others are still read; the exit code is then 1.

    \b
    Example:
      gate-agent plates read --json /data/plates/*.jpg
      gate-agent plates read shots/
    """
    from agent.plates.detect import Detector
    from agent.plates.pipeline import read_still
    from drivers.camera import CameraError, decode_image
    reader = _reader_or_fail(engine, detect_only)
    detector = Detector()
    files = _expand(images)
    if not files:
        raise UserError(f"no images found in {', '.join(images)}")
    errors = 0
    for path in files:
        line: dict = {"file": str(path), "plates": []}
        started = time.perf_counter()
        try:
            image = decode_image(path)
            results = read_still(image, detector, reader)
        except CameraError as exc:
            errors += 1
            line["error"] = str(exc)
            results = []
        for result in results:
            entry = result.to_json()
            if detect_only:
                entry["confidence"] = result.detection.score
            elif not show_all and (not result.valid or result.confidence < min_confidence):
                continue
            if show_all:
                entry["valid"] = result.valid
            line["plates"].append(entry)
        line["ms"] = round((time.perf_counter() - started) * 1000, 1)
        click.echo(json.dumps(line, ensure_ascii=False) if as_json else _human(line))
    if errors:
        sys.exit(1)


def _human(line: dict) -> str:
    if "error" in line:
        return f"{line['file']}: error: {line['error']}"
    if not line["plates"]:
        return f"{line['file']}: no plate ({line['ms']} ms)"
    found = "; ".join(f"{p['text'] or '?'} {p['color']} {p['confidence']:.2f} {p['box']}"
                      for p in line["plates"])
    return f"{line['file']}: {found} ({line['ms']} ms)"


@plates.command("watch")
@click.option("--source", help="Camera: 'picamera2', a device number, an rtsp:// or http:// URL, "
                               "a video file or a folder of images. Default: the lane's camera.")
@click.option("--lane", help="Lane whose camera, ROI and trigger to use (default: the first with a camera).")
@click.option("--json", "as_json", is_flag=True, help="Print each event's plate_read record data as JSON.")
@click.option("--engine", type=click.Choice(["opencv", "easyocr"]), default=None,
              help="Recogniser engine (default: vision.engine, else opencv).")
@click.option("--loop", is_flag=True, help="Replay an image folder forever.")
@click.option("--seconds", type=float, default=0.0, help="Stop after this long (0: until the source ends or Ctrl-C).")
@click.pass_context
def watch_cmd(ctx, source, lane, as_json, engine, loop, seconds):
    """Run a camera through the plate pipeline and print one line per vehicle.

    Uses the config (lane camera, ROI, trigger, vision settings) when it
    exists; with --source it runs without one. Nothing is stored.

    \b
    Example:
      gate-agent plates watch --lane in1
      gate-agent plates watch --source /var/lib/gate-agent/replay --json
    """
    from agent.plates.pipeline import LanePipeline, plate_record
    from drivers.camera import reconnecting
    settings = _watch_settings(ctx, source, lane)
    reader = _reader_or_fail(engine or settings["engine"], False)
    pipeline = LanePipeline(settings["lane"], reader=reader, roi=settings["roi"],
                            trigger="continuous" if settings["trigger"] == "presence" else settings["trigger"],
                            min_confidence=settings["min_confidence"],
                            repeat_window_s=settings["repeat_window_s"])
    cam = reconnecting(settings["source"], loop=loop,
                       when_lost=lambda d: click.echo(f"camera lost: {d} (retrying)", err=True),
                       when_recovered=lambda d: click.echo(f"camera back ({d})", err=True))
    deadline = time.monotonic() + seconds if seconds else None
    click.echo(f"watching {settings['source']} for lane {settings['lane']} (Ctrl-C stops)", err=True)
    try:
        while deadline is None or time.monotonic() < deadline:
            frame = cam.read()
            if frame is None:
                if cam.ended:
                    break
                continue
            for event in pipeline.process(frame.image, frame.time):
                _print_event(event, settings, as_json)
    except KeyboardInterrupt:
        pass
    finally:
        cam.close()
    for event in pipeline.flush(time.time()):
        _print_event(event, settings, as_json)


def _watch_settings(ctx, source, lane_name) -> dict:
    settings = {"source": source, "lane": lane_name or "cli", "roi": None, "trigger": "continuous",
                "engine": "opencv", "min_confidence": 0.5, "repeat_window_s": 30.0,
                "device_id": "0" * 20, "timezone": "Asia/Shanghai"}
    path = Path(ctx.find_root().obj["config_path"])
    if source and not path.is_file():
        return settings
    from agent.cli import load_config
    cfg = load_config(ctx, check_files=False)
    lanes = [ln for ln in cfg.lanes if (ln.name == lane_name if lane_name else ln.camera or source)]
    if not lanes:
        known = ", ".join(ln.name for ln in cfg.lanes)
        raise UserError(f"lane {lane_name!r} not in {cfg.path} (lanes: {known})" if lane_name else
                        f"no lane in {cfg.path} has a camera (lanes.camera); give --source")
    ln = lanes[0]
    if not (source or ln.camera):
        raise UserError(f"lanes.camera of lane {ln.name!r} is empty in {cfg.path}; give --source")
    settings.update(source=source or ln.camera, lane=ln.name, roi=ln.roi or None, trigger=ln.trigger,
                    engine=cfg.vision.engine, min_confidence=cfg.vision.min_confidence,
                    repeat_window_s=cfg.vision.repeat_window_s, device_id=cfg.device.id,
                    timezone=cfg.device.timezone)
    return settings


def _print_event(event, settings: dict, as_json: bool) -> None:
    from agent.plates.pipeline import plate_record
    data, _scene, _crop = plate_record(event, device_id=settings["device_id"], tz=settings["timezone"])
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False))
    else:
        click.echo(f"{data['pass_time']} lane {data['lane']}: {data['plate_no']} {data['plate_color_name']} "
                   f"confidence {data['confidence']:.2f} from {data['reads']} read(s)"
                   f"{'' if data['valid'] else ' (not a valid plate)'}")
