"""Keep frame-sized buffers in the process's heap between frames.

Every frame allocates a dozen buffers of 0.2-3 MB (the BGRA copy, the work-size
frame, its HSV planes, the masks) and frees them before the next. glibc's
malloc gives an allocation above its mmap threshold pages of its own, and gives
free memory at the top of the heap back to the kernel above its trim threshold.
Both thresholds start low (128 kB each) and only grow as large blocks come
and go, so whether a process settles where a frame's buffers are reused or
where each frame faults in fresh pages depends on what it allocated first. In
the second case, measured on the 2-core test machine: ~2,000 page faults and
3-4 ms a frame of a 19 ms budget (bench/plates.py: 23.7 ms median instead of
19.3), from one process to the next with the same code.

Fixing both thresholds keeps the buffers in the heap: the process holds on to
its largest frame's working set (tens of MB; peak memory unchanged) and frames
stop faulting. Elsewhere than glibc (musl, macOS) there is nothing to set.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # glibc's malloc.h
MMAP_THRESHOLD = 32 * 1024 * 1024   # glibc's ceiling on 64-bit; a 1080p BGRA frame is 8.3 MB
TRIM_THRESHOLD = 256 * 1024 * 1024


def keep_frame_buffers() -> bool:
    """Set glibc's malloc thresholds for a frame loop; False where they can't be set."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.debug("no glibc mallopt here: frame buffers left to the default allocator")
        return False
    if not mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD):   # a 32-bit glibc caps it at 512 kB
        log.info("malloc's mmap threshold cannot be raised to %d MB here: frames may fault in fresh pages",
                 MMAP_THRESHOLD >> 20)
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
