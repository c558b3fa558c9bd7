"""bench/recognize.py, the figures #6's targets are quoted from: it runs on a folder with
labels.csv and ends with one RESULT line carrying every figure it reports."""
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import need_plates

BENCH = Path(__file__).resolve().parent.parent / "bench" / "recognize.py"


def run_bench(*args):
    done = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


def result_line(stdout: str) -> dict:
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT "), last
    return {k: float(v) for k, v in (part.split("=") for part in last.split()[1:])}


def test_the_bench_reports_every_engine_and_the_loose_cuts():
    pytest.importorskip("easyocr", reason="easyocr not installed: pip install -e .[easyocr] (CI installs it)")
    code, out, err = run_bench("--data", str(need_plates() / "ccpd_samples_zhijucen"),
                               "--engines", "opencv,opencv-alone,easyocr")
    assert code == 0, err
    result = result_line(out)
    assert {"exact", "chars", "opencv_ms", "opencv_p90_ms", "alone_exact", "easyocr_ms", "easyocr_exact",
            "loose_exact", "loose_as_is_exact", "loose_ms", "colour"} <= set(result)
    assert result["exact"] == result["easyocr_exact"] >= 0.9
    assert 0 < result["opencv_ms"] <= result["opencv_p90_ms"]
    assert result["loose_exact"] > result["loose_as_is_exact"]
    assert "most common confusions" in out or result["exact"] == 1.0


def test_a_folder_without_labels_is_named(tmp_path):
    code, out, err = run_bench("--data", str(tmp_path), "--engines", "opencv")
    assert code != 0 and str(tmp_path) in err and "labels.csv" in err
    assert "Traceback" not in err
