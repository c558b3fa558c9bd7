"""make test refuses, before any download, to build its virtual environment on a disk too full for it."""
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / ".ci" / "check-space.sh"


def run(*args):
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_a_disk_with_room_passes(tmp_path):
    done = run(tmp_path, 0)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_a_disk_without_room_is_named_with_what_is_needed(tmp_path):
    done = run(tmp_path, 10 ** 7)   # ten million GB: more than any disk here
    assert done.returncode == 1
    assert str(tmp_path) in done.stderr and "10000000 GB" in done.stderr and "VENV" in done.stderr


def test_the_makefile_checks_before_it_creates_the_environment(tmp_path):
    venv = tmp_path / "venv"
    done = subprocess.run(["make", "-n", "install", f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True)
    lines = done.stdout.splitlines()
    check = next(i for i, line in enumerate(lines) if "check-space.sh" in line)
    create = next(i for i, line in enumerate(lines) if "-m venv" in line)
    assert check < create
    refused = subprocess.run(["make", "install", f"VENV={venv}", "NEED_GB=10000000"], cwd=ROOT,
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "10000000 GB" in refused.stderr
    assert not venv.exists()
