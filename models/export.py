"""Write one set of trained weights in both shipped forms, and the manifest.

    models/easyocr/plate_ocr.pth    easyocr weights (keys prefixed 'module.')
    models/easyocr/plate_ocr.yaml   easyocr network config (imgH, lang_list, character_list)
    models/easyocr/plate_ocr.py     the network class (source of truth, also used by training)
    models/plate_ocr.onnx           the same network for cv2.dnn (legacy exporter, dynamo=False)
    models/manifest.json            sha256 of each of those files

models/second/ holds the second network (models/train.py --second-opinion) in the same
files; its easyocr/plate_ocr.py is a link to the one definition.

`python -m models.export [--out DIR]` re-exports both networks from their plate_ocr.pth
(for example after an onnx or torch upgrade) without training again.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

from agent.platecodes import ALPHABET
from models.recognizer import INPUT_H, INPUT_W, MODEL_DIR, NETWORK, SECOND_OPINION_DIR

NETWORK_PARAMS = {"input_channel": 1, "output_channel": 128, "hidden_size": 0}
LANG_LIST = ["ch_sim", "en"]
SHIPPED = (f"{NETWORK}.onnx", f"easyocr/{NETWORK}.py", f"easyocr/{NETWORK}.yaml", f"easyocr/{NETWORK}.pth")


def write_yaml(path: Path):
    # JSON strings are valid YAML scalars: no PyYAML needed to write it
    lines = ["network_params:"]
    lines += [f"  {k}: {v}" for k, v in NETWORK_PARAMS.items()]
    lines += [f"imgH: {INPUT_H}", f"lang_list: {json.dumps(LANG_LIST)}",
              f"character_list: {json.dumps(ALPHABET, ensure_ascii=False)}", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def write_onnx(net, path: Path):
    import torch
    net.eval()
    dummy = torch.zeros(1, 1, INPUT_H, INPUT_W)
    torch.onnx.export(net, (dummy,), str(path), dynamo=False, input_names=["image"], output_names=["logits"],
                      opset_version=13, dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})


def write_manifest(out: Path, extra: dict | None = None):
    files = {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in SHIPPED}
    manifest = {"network": NETWORK, "input": {"height": INPUT_H, "width": INPUT_W, "channels": 1,
                                               "scale": "grey/255 then (x - 0.5) / 0.5"},
                "alphabet": ALPHABET, "blank": 0, "files": files, **(extra or {})}
    (out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return manifest


def export_all(net, out: Path = MODEL_DIR, extra: dict | None = None):
    import torch
    out = Path(out)
    (out / "easyocr").mkdir(parents=True, exist_ok=True)
    src = MODEL_DIR / "easyocr" / f"{NETWORK}.py"
    if (out / "easyocr" / f"{NETWORK}.py").resolve() != src.resolve():
        shutil.copyfile(src, out / "easyocr" / f"{NETWORK}.py")
    state = {"module." + k: v.detach().clone() for k, v in net.state_dict().items()}
    torch.save(state, out / "easyocr" / f"{NETWORK}.pth")
    write_yaml(out / "easyocr" / f"{NETWORK}.yaml")
    write_onnx(net, out / f"{NETWORK}.onnx")
    return write_manifest(out, extra)


def load_trained(model_dir: Path = MODEL_DIR):
    """The torch network with the shipped weights."""
    import torch
    from models.train import NUM_CLASS, load_network_class
    net = load_network_class(model_dir)(num_class=NUM_CLASS, **NETWORK_PARAMS)
    state = torch.load(Path(model_dir) / "easyocr" / f"{NETWORK}.pth", map_location="cpu")
    net.load_state_dict({k[len("module."):]: v for k, v in state.items()})
    return net.eval()


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m models.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=MODEL_DIR)
    args = p.parse_args(argv)
    for network in ("", SECOND_OPINION_DIR):
        source = MODEL_DIR / network
        old = json.loads((source / "manifest.json").read_text()) if (source / "manifest.json").is_file() else {}
        keep = {k: v for k, v in old.items() if k == "training"}
        files = export_all(load_trained(source), args.out / network, keep)["files"]
        print(f"{args.out / network}: " + json.dumps(files, indent=2))


if __name__ == "__main__":
    main()
