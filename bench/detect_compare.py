"""Detection speed of this tree against a git revision, interleaved in one process.

    python bench/detect_compare.py --base HEAD~1
    python bench/detect_compare.py --base main --data ../shared/data/plates/ccpd_subdataset_julienkolani --rounds 6

On a shared 2-core machine, separate runs of the same code wander by 1-2 ms a
frame: more than most changes to the detector are worth. This bench loads the
base revision's agent/plates/detect.py (the detector is that one module, on
OpenCV and numpy) beside this tree's, runs both over the same frames in
alternating rounds with one OpenCV thread, and prints each one's median and
mean, the ratio, and on how many frames the two find the same plates (box,
colour, score within 0.002, corners within 0.05 px). Last line:
RESULT base_ms=... this_ms=... ratio=... same=...
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.plates.heap import keep_frame_buffers  # noqa: E402

DETECT = "agent/plates/detect.py"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "plates" / "ccpd_subdataset_julienkolani"


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def base_detector_source(rev: str) -> str:
    try:
        return subprocess.run(["git", "show", f"{rev}:{DETECT}"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout
    except subprocess.CalledProcessError as exc:
        sys.exit(f"detect_compare: git cannot show {DETECT} at {rev!r}: {exc.stderr.strip()}")


def load_frames(folders: list[Path], limit: int) -> list[np.ndarray]:
    files = sorted(p for folder in folders for p in folder.iterdir()
                   if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    frames = [image for image in (cv2.imread(str(p)) for p in files) if image is not None]
    if not frames:
        sys.exit(f"detect_compare: no readable images in {', '.join(map(str, folders))}")
    return frames[:limit]


def same_plates(a, b) -> bool:
    return len(a) == len(b) and all(
        x.box == y.box and x.color_hint == y.color_hint and abs(x.score - y.score) <= 0.002
        and np.allclose(x.corners, y.corners, atol=0.05) for x, y in zip(a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="HEAD", help="git revision to compare against (default HEAD)")
    parser.add_argument("--data", action="append", type=Path, default=[], help="folder of frames (repeatable)")
    parser.add_argument("--limit", type=int, default=150, help="first N frames (default 150)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds over the frames (default 4)")
    parser.add_argument("--keep", type=int, default=4, help="candidates asked for, as read_plates does")
    args = parser.parse_args()
    folders = args.data or [DEFAULT_DATA]
    for folder in folders:
        if not folder.is_dir():
            sys.exit(f"detect_compare: no such folder: {folder}")

    keep_frame_buffers()
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        base_path = Path(tmp) / "base_detect.py"
        base_path.write_text(base_detector_source(args.base), encoding="utf-8")
        detectors = {"base": load_module("base_detect", base_path).Detector(),
                     "this": load_module("this_detect", ROOT / DETECT).Detector()}
    frames = load_frames(folders, args.limit)
    same = sum(same_plates(detectors["base"].detect(f, keep=args.keep), detectors["this"].detect(f, keep=args.keep))
               for f in frames)
    times = {name: [] for name in detectors}
    for round_ in range(args.rounds):
        order = list(detectors) if round_ % 2 == 0 else list(detectors)[::-1]
        for name in order:
            for frame in frames:
                started = time.perf_counter()
                detectors[name].detect(frame, keep=args.keep)
                times[name].append((time.perf_counter() - started) * 1000)
    medians = {name: float(np.median(t)) for name, t in times.items()}
    print(f"{len(frames)} frames x {args.rounds} rounds, one OpenCV thread; base = {args.base}")
    for name, t in times.items():
        print(f"  {name:5} median {medians[name]:.2f} ms  mean {np.mean(t):.2f}  p90 {np.percentile(t, 90):.2f}")
    print(f"  same plates on {same} of {len(frames)} frames")
    print(f"RESULT base_ms={medians['base']:.2f} this_ms={medians['this']:.2f} "
          f"ratio={medians['this'] / medians['base']:.3f} same={same}/{len(frames)}")


if __name__ == "__main__":
    main()
