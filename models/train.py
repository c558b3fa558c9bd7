"""Train the plate recogniser: `python -m models.train` (seeded, reproducible on one machine).

Data: synthetic plates of every kind (models/synth.py, provinces drawn evenly,
a share of them double-row) plus the real crops in ../shared/data/plates minus
the fixed validation split (models/dataset.py), drawn province-balanced
(`real_order`). Real crops are re-cut with jittered boxes and degraded on the
fly each epoch. At the end it prints exact and
per-character accuracy per plate kind on the held-out real crops and on a fixed
synthetic validation set, then writes the weights and exports them
(models/export.py: easyocr files, ONNX, manifest).

Two networks are shipped, trained by two recipes from the same data:

    python -m models.train                   # models/: the first reader (about 40 min on 2 idle cores)
    python -m models.train --second-opinion  # models/second/: asked when the first is unsure (about 45 min)
    python -m models.train --epochs 1 --synth 2000 --out /tmp/try   # a smoke run

--second-opinion stands for the options in SECOND_OPINION: real crops also tilted to
12 degrees and sheared (--tilt), bolder synthetic characters (--bold), 48 epochs, and an
average of the weights over the steps (--ema). Its network misses other crops than the
first one's, which is what makes the pair better than either (models/recognizer.py).
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import random
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from agent.platecodes import ALPHABET, normalise
from models import synth
from models.dataset import Sample, load_real
from models.recognizer import (INPUT_H, INPUT_W, MODEL_DIR, NETWORK, SECOND_OPINION_DIR, char_accuracy, ctc_decode,
                               preprocess, to_blob)

DEFAULT_DATA = Path(os.environ.get("GATE_SHARED", Path(__file__).resolve().parent.parent.parent / "shared")) / "data" / "plates"
NETWORK_PARAMS = {"input_channel": 1, "output_channel": 128, "hidden_size": 0}
NUM_CLASS = len(ALPHABET) + 1
STROKES = (0, 1, 1, 2)  # --bold: extra ink on synthetic characters; most plates are bolder than the fonts draw them
SECOND_OPINION = ("--epochs", "48", "--tilt", "--bold", "--ema", "0.999", "--out", str(MODEL_DIR / SECOND_OPINION_DIR))


def load_network_class(model_dir: Path = MODEL_DIR):
    """The Model class from the very file easyocr will import."""
    path = Path(model_dir) / "easyocr" / f"{NETWORK}.py"
    spec = importlib.util.spec_from_file_location(f"_{NETWORK}_net", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Model


class Progress:
    """A one-line progress bar on stderr (no dependency)."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.start, self.n = total, label, time.time(), 0
        self._last = 0.0

    def update(self, n: int = 1, **info):
        self.n += n
        now = time.time()
        if now - self._last < 0.5 and self.n < self.total:
            return
        self._last = now
        frac = self.n / max(1, self.total)
        elapsed = now - self.start
        eta = elapsed / frac - elapsed if frac else 0
        bar = "#" * int(30 * frac)
        extra = " ".join(f"{k}={v}" for k, v in info.items())
        sys.stderr.write(f"\r{self.label} [{bar:<30}] {self.n}/{self.total} {elapsed:5.0f}s eta {eta:4.0f}s {extra}   ")
        if self.n >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


# ----------------------------------------------------------------- data
def synth_sample(rng: np.random.Generator, kind: str | None = None, rows: int | None = None, bold: bool = False):
    """(input image, text, kind, rows): one degraded synthetic plate through the runtime preprocessing."""
    if kind is None:
        kind = "small" if rng.random() < 0.25 else synth.KINDS[1 + rng.integers(len(synth.KINDS) - 1)]
    text, kind = synth.random_plate(rng, kind)
    if rows is None:
        rows = 2 if kind in synth.DOUBLE_ROW_KINDS and rng.random() < 0.35 else 1
    stroke = int(rng.choice(STROKES)) if bold else 0
    img, _ = synth.render_plate(text, kind, rng, rows=rows, degrade=True, stroke=stroke)
    return preprocess(img, rows), text, kind, rows


def make_synth(n: int, seed: int, label: str, per_kind: bool = False, bold: bool = False):
    rng = np.random.default_rng(seed)
    images, texts, kinds = np.empty((n, INPUT_H, INPUT_W), np.uint8), [], []
    bar = Progress(n, label)
    for i in range(n):
        if per_kind:  # an even validation set: every kind, then double-row ones
            k = synth.KINDS[i % (len(synth.KINDS) + 1)] if i % (len(synth.KINDS) + 1) < len(synth.KINDS) else None
            img, text, kind, rows = synth_sample(rng, k or synth.DOUBLE_ROW_KINDS[i % len(synth.DOUBLE_ROW_KINDS)],
                                                 1 if k else 2, bold)
            kind = kind if rows == 1 else f"{kind} (2 rows)"
        else:
            img, text, kind, rows = synth_sample(rng, bold=bold)
        images[i], _ = img, texts.append(text)
        kinds.append(kind)
        bar.update()
    return images, texts, kinds


def jitter_real(sample: Sample, rng: np.random.Generator, tilt: bool = False) -> np.ndarray:
    """A fresh cut of a real plate: box edges moved, a small rotation, camera faults; with
    `tilt`, now and then turned by up to 12 degrees or seen from the side (tilted_jitter).

    The two cut differently and draw from the generator in a different order; each is what
    one shipped network was trained with, so neither can change without retraining it."""
    if tilt:
        return tilted_jitter(sample, rng)
    img = sample.image
    h, w = img.shape[:2]
    l, t, r, b = sample.context
    x1, y1, x2, y2 = l, t, w - r, h - b
    bw, bh = x2 - x1, y2 - y1
    x1 += bw * rng.uniform(-0.06, 0.05)
    x2 += bw * rng.uniform(-0.05, 0.06)
    y1 += bh * rng.uniform(-0.12, 0.08)
    y2 += bh * rng.uniform(-0.08, 0.12)
    out_w, out_h = max(8, int(x2 - x1)), max(8, int(y2 - y1))
    angle = rng.normal(0, 2.0)
    M = cv2.getRotationMatrix2D(((x1 + x2) / 2, (y1 + y2) / 2), angle, 1.0)
    M[:, 2] -= [x1, y1]
    crop = cv2.warpAffine(img, M, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return preprocess(synth.degrade_image(crop, rng, strength=0.5), 1)


def tilted_jitter(sample: Sample, rng: np.random.Generator) -> np.ndarray:
    angle = rng.normal(0, 2.0) if rng.random() < 0.7 else rng.uniform(-12, 12)
    shear = rng.uniform(-0.2, 0.2) if rng.random() < 0.3 else 0.0
    left, right = rng.uniform(-0.06, 0.05), rng.uniform(-0.05, 0.06)
    top, bottom = rng.uniform(-0.12, 0.08), rng.uniform(-0.08, 0.12)
    crop = tilted_cut(sample.image, sample.context, angle, shear, (left, top, right, bottom))
    return preprocess(synth.degrade_image(crop, rng, strength=0.5), 1)


def tilted_cut(img: np.ndarray, context, angle: float, shear: float, moves) -> np.ndarray:
    """The plate (the image less its `context` margins l, t, r, b) turned by `angle` degrees and
    sheared vertically by `shear` (seen from the side: its horizontal edges slope), cut by the
    axis-aligned box around it with its edges moved by `moves` (l, t, r, b, fractions of the
    box's size, positive to the right and down).

    That box is what a detector without corners cuts: the held-out crops include plates tilted
    by 10 degrees and more, which a network that only ever saw +-2 degrees misreads."""
    h, w = img.shape[:2]
    l, t, r, b = context
    centre = ((l + w - r) / 2, (t + h - b) / 2)
    M = np.vstack([cv2.getRotationMatrix2D(centre, angle, 1.0), [0, 0, 1]])
    M = np.float64([[1, 0, 0], [shear, 1, -shear * centre[0]], [0, 0, 1]]) @ M
    corners = np.float64([[l, t, 1], [w - r, t, 1], [w - r, h - b, 1], [l, h - b, 1]]) @ M[:2].T
    (x1, y1), (x2, y2) = corners.min(axis=0), corners.max(axis=0)
    bw, bh = x2 - x1, y2 - y1
    x1, y1, x2, y2 = x1 + bw * moves[0], y1 + bh * moves[1], x2 + bw * moves[2], y2 + bh * moves[3]
    M = M[:2].copy()
    M[:, 2] -= [x1, y1]
    return cv2.warpAffine(img, M, (max(8, int(x2 - x1)), max(8, int(y2 - y1))), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def real_order(samples: list[Sample], repeat: int, balance: float, rng: np.random.Generator) -> list[int]:
    """Which real crops one epoch trains on: `repeat` draws per crop on average.

    With `balance` > 0 a crop is drawn with weight (crops of its province)^-balance, because
    the real crops are half 皖 and a handful of provinces have one or two: unweighted, the
    network learns to answer 皖 for a province it cannot quite read."""
    if balance <= 0 or not samples:
        return list(range(len(samples))) * repeat
    counts = collections.Counter(s.text[0] for s in samples)
    weights = np.array([counts[s.text[0]] ** -balance for s in samples])
    return rng.choice(len(samples), size=len(samples) * repeat, p=weights / weights.sum()).tolist()


def encode(texts):
    targets = [ALPHABET.index(c) + 1 for t in texts for c in t]
    return targets, [len(t) for t in texts]


# ----------------------------------------------------------------- evaluation
def predict(net, images: np.ndarray, batch: int = 256) -> list[str]:
    import torch
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            logits = net(torch.from_numpy(to_blob(images[i:i + batch]))).numpy()
            out += [normalise(ctc_decode(l)[0]) for l in logits]
    return out


def score(preds, texts, groups):
    """{group: (n, exact rate, char accuracy)} plus "all"."""
    acc = collections.defaultdict(lambda: [0, 0, 0.0])
    for p, t, g in zip(preds, texts, groups):
        for key in (g, "all"):
            a = acc[key]
            a[0] += 1
            a[1] += p == t
            a[2] += char_accuracy(p, t)
    return {k: (n, e / n, c / n) for k, (n, e, c) in acc.items()}


def print_table(title: str, table: dict):
    print(f"\n{title}")
    print(f"  {'group':<28}{'n':>6}{'exact':>9}{'chars':>9}")
    for k in sorted(table, key=lambda k: (k == "all", k)):
        n, e, c = table[k]
        print(f"  {k:<28}{n:>6}{e:>9.2%}{c:>9.2%}")


# ----------------------------------------------------------------- training
def need_export_tools() -> None:
    """torch's ONNX export needs the onnx package, which it imports only when it exports: found
    missing then, an hour's training would end in a traceback with no ONNX file."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise SystemExit("error: training needs the train extra (torch, onnx, easyocr): "
                         "pip install -e '.[train]' (onnx is missing)") from None


def train(args) -> dict:
    import torch
    from torch import nn

    from models.export import export_all   # here, not at the end: an export that cannot load would lose the run
    need_export_tools()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)   # and a folder that cannot be made

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    rng = np.random.default_rng(args.seed)

    t0 = time.time()
    real_train = load_real(args.data, "train", context=0.15)
    real_val = load_real(args.data, "val")
    if not real_train:
        print(f"warning: no real plates found under {args.data}; training on synthetic plates only",
              file=sys.stderr)
    print(f"real crops: {len(real_train)} train, {len(real_val)} held out (models/dataset.py split)")
    syn_x, syn_y, _ = make_synth(args.synth, args.seed + 1, "synth train", bold=args.bold)
    val_x, val_y, val_k = make_synth(args.synth_val, args.seed + 2, "synth val  ", per_kind=True, bold=args.bold)
    real_val_x = np.stack([preprocess(s.image, 1) for s in real_val]) if real_val else np.empty((0, INPUT_H, INPUT_W), np.uint8)
    print(f"data ready in {time.time() - t0:.0f}s")

    Model = load_network_class()
    net = Model(num_class=NUM_CLASS, **NETWORK_PARAMS)
    params = sum(p.numel() for p in net.parameters())
    print(f"network: {params:,} parameters")
    ctc = nn.CTCLoss(blank=0, zero_infinity=True)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    per_epoch = len(real_train) * args.real_repeat + args.synth_per_epoch
    steps = args.epochs * ((per_epoch + args.batch - 1) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.15)
    averaged = None
    if args.ema:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
        averaged = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(args.ema), use_buffers=True)
    shipped = averaged.module if averaged else net

    synth_cursor = 0
    t_train = time.time()
    for epoch in range(args.epochs):
        net.train()
        order = [("r", i) for i in real_order(real_train, args.real_repeat, args.province_balance, rng)]
        idx = (synth_cursor + np.arange(args.synth_per_epoch)) % len(syn_x)
        synth_cursor += args.synth_per_epoch
        order += [("s", int(i)) for i in idx]
        rng.shuffle(order)
        bar = Progress((len(order) + args.batch - 1) // args.batch, f"epoch {epoch + 1}/{args.epochs}")
        losses = []
        for b in range(0, len(order), args.batch):
            chunk = order[b:b + args.batch]
            imgs, texts = [], []
            for src, i in chunk:
                if src == "r":
                    imgs.append(jitter_real(real_train[i], rng, args.tilt))
                    texts.append(real_train[i].text)
                else:
                    imgs.append(syn_x[i])
                    texts.append(syn_y[i])
            x = torch.from_numpy(to_blob(np.stack(imgs)))
            targets, lengths = encode(texts)
            logp = net(x).log_softmax(2).permute(1, 0, 2)  # T, B, C
            loss = ctc(logp, torch.tensor(targets), torch.full((len(chunk),), logp.shape[0], dtype=torch.long),
                       torch.tensor(lengths))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            sched.step()
            if averaged:
                averaged.update_parameters(net)
            losses.append(loss.item())
            bar.update(loss=f"{np.mean(losses[-50:]):.3f}")
        if real_val:
            r = score(predict(shipped, real_val_x), [s.text for s in real_val], ["x"] * len(real_val))["all"]
            print(f"epoch {epoch + 1}: loss {np.mean(losses):.3f}, real held-out exact {r[1]:.2%} chars {r[2]:.2%}")
    train_s = time.time() - t_train

    report = {"train_seconds": round(train_s), "parameters": params}
    if averaged and real_val:
        last = score(predict(net, real_val_x), [s.text for s in real_val], ["x"] * len(real_val))["all"]
        print(f"\nthe last step's own weights (not shipped): real held-out exact {last[1]:.2%} chars {last[2]:.2%}")
        report["real_last_step"] = last
    if real_val:
        preds = predict(shipped, real_val_x)
        table = score(preds, [s.text for s in real_val], [f"{s.kind} ({s.color})" for s in real_val])
        print_table("real held-out crops, by kind", table)
        print_table("real held-out crops, by source",
                    score(preds, [s.text for s in real_val], [s.source for s in real_val]))
        misses = [(s.source, s.file, s.text, p) for s, p in zip(real_val, preds) if p != s.text]
        for m in misses[:30]:
            print("  miss:", *m)
        report["real"] = table["all"]
    table = score(predict(shipped, val_x), val_y, val_k)
    print_table("synthetic validation plates, by kind", table)
    report["synth"] = table["all"]
    print(f"\ntraining took {train_s / 60:.1f} min ({args.epochs} epochs, {args.threads} threads)")

    report["seed"] = args.seed
    report["epochs"] = args.epochs
    report["province_balance"] = args.province_balance
    report.update(tilt=args.tilt, bold=args.bold, ema=args.ema)
    export_all(shipped, out, {"training": report})
    print(f"model files written to {out}")
    return report


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m models.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="folder of labelled plate folders (default $GATE_SHARED/data/plates, else ../shared/data/plates)")
    p.add_argument("--out", type=Path, default=MODEL_DIR, help="where the model files go (default models/)")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--synth", type=int, default=30000, help="synthetic training plates rendered up front")
    p.add_argument("--synth-per-epoch", type=int, default=9000)
    p.add_argument("--synth-val", type=int, default=1200)
    p.add_argument("--real-repeat", type=int, default=4, help="draws per real crop per epoch (on average with --province-balance)")
    p.add_argument("--province-balance", type=float, default=0.5, metavar="ALPHA",
                   help="draw real crops with weight (crops of their province)^-ALPHA (0: each crop equally)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--tilt", action="store_true",
                   help="real crops also turned by up to 12 degrees and sheared, cut by the box around them")
    p.add_argument("--bold", action="store_true", help="synthetic characters drawn bolder in three plates of four")
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="ship an exponential moving average of the weights, updated every step (0: the last step's)")
    p.add_argument("--second-opinion", action="store_true",
                   help="the second network's recipe: " + " ".join(SECOND_OPINION[:-2]) + " --out models/second "
                        "(options given as well override these)")
    p.add_argument("--seed", type=int, default=20261124)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.second_opinion:
        args = p.parse_args([*SECOND_OPINION, *(sys.argv[1:] if argv is None else argv)])
    return args


def main(argv=None):
    args = parse_args(argv)
    train(args)


if __name__ == "__main__":
    main()
