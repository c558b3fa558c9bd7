"""Plate pipeline bench: detection and reading over labelled images, and speed.

    python bench/plates.py --data ../shared/data/plates            # every labels.csv below
    python bench/plates.py --data ../shared/data/plates/ccpd_subdataset_julienkolani
    python bench/plates.py --synthetic 300                          # models.synth scenes, day and night

Scenes with a box (x1..y2 in labels.csv) count as located when a detection
overlaps it with IoU >= 0.5. A scene's read is the read of the detection that
overlaps the box best (or, without a box, the read closest to the label);
a crop is read whole. Exact and character accuracy treat O and 0, I and 1
alike. Scenes are split by a hash of the file name: one in five is `val`
(never used to tune the detector), the rest `tune`.

Timing: per frame (detect + read every plate) with one OpenCV thread, and
with every core (OpenCV threads = cores), plus throughput with one process
per core. Last line: RESULT located=... exact=... chars=... median_ms_1t=... p90_ms_1t=...
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import os
import resource
import multiprocessing
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.plates.detect import Detector, box_iou  # noqa: E402
from agent.plates.heap import keep_frame_buffers  # noqa: E402
from agent.platecodes import edit_distance  # noqa: E402
from agent.plates.pipeline import read_plates  # noqa: E402


def same(text: str) -> str:
    return text.replace("O", "0").replace("I", "1")




def char_accuracy(pred: str, truth: str) -> float:
    return max(0.0, 1 - edit_distance(same(pred), same(truth)) / max(1, len(truth)))


def split_of(name: str) -> str:
    return "val" if int(hashlib.sha1(name.encode()).hexdigest(), 16) % 5 == 0 else "tune"


def load_items(roots: list[Path], limit: int = 0) -> list[dict]:
    items = []
    for root in roots:
        files = [root / "labels.csv"] if (root / "labels.csv").is_file() else sorted(root.glob("*/labels.csv"))
        if not files:
            sys.exit(f"bench: no labels.csv in {root} or its sub-folders")
        for labels in files:
            with open(labels, encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    box = tuple(int(row[k]) for k in ("x1", "y1", "x2", "y2")) if row.get("x1") else None
                    items.append({"path": labels.parent / row["file"], "plate": row["plate"],
                                  "color": row.get("color") or "unknown", "kind": row["kind"],
                                  "box": box, "source": labels.parent.name,
                                  "split": split_of(row["file"])})
    return items[:limit] if limit else items


_reader = None
_detector = None


def _init(engine: str | None, threads: int) -> None:
    global _reader, _detector
    keep_frame_buffers()   # as the vision process does (agent/plates/heap.py)
    cv2.setNumThreads(threads)
    _detector = Detector()
    if engine:
        from agent.plates.recognise import load_reader
        _reader = load_reader(engine)


def run_one(item: dict) -> dict:
    """Detect and read one labelled image; returns the measures."""
    image = cv2.imread(str(item["path"]))
    if image is None:
        return {"error": f"cannot read {item['path']}"}
    started = time.perf_counter()
    if item["kind"] == "crop":
        text = _reader.read(image).text if _reader else ""
        results, best_iou = [], None
    else:
        results = read_plates(image, _detector, _reader)
        text, best_iou = "", None
        if item["box"]:
            ious = [box_iou(r.detection.box, item["box"]) for r in results]
            if ious:
                best = int(np.argmax(ious))
                best_iou = ious[best]
                text = results[best].text if best_iou >= 0.5 else ""
            else:
                best_iou = 0.0
        elif results:
            text = max((r.text for r in results), key=lambda t: char_accuracy(t, item["plate"]))
    ms = (time.perf_counter() - started) * 1000
    return {"ms": ms, "text": text, "iou": best_iou,
            "false": sum(1 for r in results if item["box"] and box_iou(r.detection.box, item["box"]) < 0.5)}


def synthetic_scenes(n: int, seed: int = 11):
    """(frame, its plates as labelled items) for n models.synth frames, rendered one at a time:
    200 frames of 1280 x 720 held at once took the bench to 770 MB, more than a 1 GB Pi has."""
    from models.synth import random_plate, render_scene
    rng = np.random.default_rng(seed)
    for i in range(n):
        night = i % 4 == 3
        plates = [random_plate(rng) for _ in range(1 + i % 3)]
        image, truth = render_scene(plates, rng, night=night)
        yield image, [{"path": f"synthetic-{i}", "plate": plate["text"], "color": plate["color"], "kind": "scene",
                       "box": tuple(plate["box"]), "source": "synthetic-" + ("night" if night else "day"),
                       "split": "synthetic"} for plate in truth]


def run_synthetic(n: int) -> tuple[list[dict], list[dict]]:
    """Synthetic frames hold 1-3 plates: detect once per frame, score each plate.
    Returns the plates as labelled items and their measures."""
    items, out = [], []
    for image, plates in synthetic_scenes(n):
        started = time.perf_counter()
        results = read_plates(image, _detector, _reader)
        ms = (time.perf_counter() - started) * 1000
        for k, item in enumerate(plates):
            ious = [box_iou(r.detection.box, item["box"]) for r in results]
            best = int(np.argmax(ious)) if ious else -1
            iou = ious[best] if ious else 0.0
            out.append({"ms": ms if k == 0 else None, "iou": iou,
                        "text": results[best].text if ious and iou >= 0.5 else "", "false": 0})
        items += plates
    return items, out


def summarise(items, measures, reading: bool) -> dict:
    groups = defaultdict(lambda: defaultdict(list))
    for item, m in zip(items, measures):
        if "error" in m:
            print(f"  error: {m['error']}")
            continue
        for key in ("all", f"source={item['source']}", f"colour={item['color']}", f"split={item['split']}"):
            g = groups[key]
            if item["box"] is not None and item["kind"] == "scene":
                g["located"].append(m["iou"] >= 0.5)
                g["false"].append(m["false"])
            if reading:
                g["exact"].append(same(m["text"]) == same(item["plate"]))
                g["chars"].append(char_accuracy(m["text"], item["plate"]))
            g["n"].append(1)
    table = {}
    for key, g in groups.items():
        table[key] = {name: (float(np.mean(v)) if v else None) for name, v in g.items() if name != "n"}
        table[key]["n"] = len(g["n"])
    return table


def fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", action="append", type=Path, default=[],
                        help="folder with labels.csv, or a folder of such folders (repeatable)")
    parser.add_argument("--synthetic", type=int, default=0, help="also N synthetic frames (models.synth)")
    parser.add_argument("--engine", choices=("opencv", "easyocr", "none"), default="opencv",
                        help="recogniser; 'none' benches detection only")
    parser.add_argument("--limit", type=int, default=0, help="first N labelled images only")
    parser.add_argument("--skip-parallel", action="store_true", help="skip the all-cores runs")
    args = parser.parse_args()
    if not args.data and not args.synthetic:
        parser.error("give --data DIR and/or --synthetic N")

    engine = None if args.engine == "none" else args.engine
    if engine:
        from agent.plates.recognise import RecogniserUnavailable, load_reader
        try:
            load_reader(engine)
        except RecogniserUnavailable as exc:
            print(f"recogniser unavailable, benching detection only: {exc}")
            engine = None
    reading = engine is not None

    items = load_items([p.resolve() for p in args.data], args.limit) if args.data else []
    _init(engine, 1)
    measures = [run_one(item) for item in items]
    if args.synthetic:
        synth_items, synth_measures = run_synthetic(args.synthetic)
        items += synth_items
        measures += synth_measures
    times_1t = [m["ms"] for m in measures if m.get("ms") is not None]

    times_all, fps = [], None
    cores = os.cpu_count() or 1
    real = [it for it in items if it["split"] != "synthetic"]
    if not args.skip_parallel and real:
        _init(engine, cores)
        times_all = [run_one(item)["ms"] for item in real]
        started = time.perf_counter()
        # spawn, not fork: a child forked from a process whose OpenCV threads hold a lock hangs
        with ProcessPoolExecutor(cores, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init, initargs=(engine, 1)) as pool:
            list(pool.map(run_one, real, chunksize=8))
        fps = len(real) / (time.perf_counter() - started)

    table = summarise(items, measures, reading)
    print(f"{len(items)} labelled plates; recogniser: {engine or 'none (detection only)'}; {cores} core(s)")
    print(f"{'group':42} {'n':>5} {'located':>8} {'false/img':>9} {'exact':>7} {'chars':>7}")
    for key in sorted(table, key=lambda k: (k != "all", k)):
        row = table[key]
        print(f"{key:42} {row['n']:5d} {fmt(row.get('located')):>8} {fmt(row.get('false')):>9} "
              f"{fmt(row.get('exact')):>7} {fmt(row.get('chars')):>7}")
    median_1t, p90_1t = float(np.median(times_1t)), float(np.percentile(times_1t, 90))
    print(f"ms per frame, 1 thread: median {median_1t:.1f}, p90 {p90_1t:.1f}, p99 "
          f"{np.percentile(times_1t, 99):.1f} (n={len(times_1t)})")
    if times_all:
        print(f"ms per frame, {cores} OpenCV threads: median {np.median(times_all):.1f}, "
              f"p90 {np.percentile(times_all, 90):.1f}; {cores} processes: {fps:.1f} frames/s")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (this process): {peak_mb:.0f} MB")
    overall = table["all"]
    print(f"RESULT located={fmt(overall.get('located'))} exact={fmt(overall.get('exact'))} "
          f"chars={fmt(overall.get('chars'))} median_ms_1t={median_1t:.1f} p90_ms_1t={p90_1t:.1f} "
          f"median_ms_all={np.median(times_all) if times_all else float('nan'):.1f} "
          f"fps_all={fps or float('nan'):.1f} peak_mb={peak_mb:.0f}")


if __name__ == "__main__":
    main()
