"""The vision process keeps frame-sized buffers in its heap (agent/plates/heap.py)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A frame's working set (eight buffers of ~1.5 MB, written, then freed), twenty frames:
# prints the page faults a frame costs after the first.
FRAMES = """
import resource, sys
import numpy as np
from agent.plates.heap import keep_frame_buffers
if sys.argv[1] == "keep":
    assert keep_frame_buffers()
def frame():
    buffers = [np.ones(1_500_000 + 4096 * i, np.uint8) for i in range(8)]
    return sum(int(b[-1]) for b in buffers)
frame()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    frame()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 20)
"""


def faults_per_frame(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", FRAMES, mode], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")
def test_frames_reuse_their_buffers_instead_of_faulting_in_fresh_pages():
    kept = faults_per_frame("keep")
    # 12 MB of fresh pages is ~3,000 faults a frame; kept in the heap, a frame faults (almost) none
    assert kept < 100, f"{kept} page faults a frame with the buffers kept (default: {faults_per_frame('default')})"

