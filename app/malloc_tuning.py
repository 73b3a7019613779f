"""glibc's malloc, set up for a process that handles large frames.

glibc serves allocations above its mmap threshold (128 KiB at start) with
mmap, and returns them to the system when freed. But the threshold is
dynamic: after the first free of such a block it rises to that block's
size (up to 32 MiB), so the 256 KiB - 1 MiB buffers of large agent frames
are from then on carved from the heap, which fragments and is rarely given
back: a flood of large frames grew the control plane by gigabytes that
stayed taken. Fixing the threshold (which also turns the dynamic
adjustment off) keeps every large buffer in its own mapping.

Called once at start-up, before any large allocation. An operator's own
MALLOC_MMAP_THRESHOLD_ (glibc reads it itself) is left alone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's <malloc.h>.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024
ENV_OVERRIDE = "MALLOC_MMAP_THRESHOLD_"


def tune_malloc(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold; True if it was set here. A no-op (False)
    off Linux, on another C library (musl, macOS, Windows), or when the
    environment already sets it."""
    if not sys.platform.startswith("linux") or os.environ.get(ENV_OVERRIDE):
        return False
    try:
        libc = ctypes.CDLL(None)
        version = libc.gnu_get_libc_version  # only glibc has it
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    version.restype = ctypes.c_char_p
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, threshold) != 1:  # mallopt returns 1 on success
        log.debug("mallopt(M_MMAP_THRESHOLD, %d) refused by glibc %s", threshold, version())
        return False
    return True
