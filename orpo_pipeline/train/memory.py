"""Keep the CPU peak RSS at the live peak: glibc's malloc otherwise holds freed tensors' memory."""

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3
"""`mallopt` parameter number, from glibc's malloc.h."""
MMAP_THRESHOLD_BYTES = 64 * 1024


def return_freed_memory() -> bool:
    """Make glibc serve every block of 64 KiB or more with its own mmap, unmapped when freed.

    By default glibc raises this threshold up to 32 MiB as big blocks are freed, so activation
    tensors then live in its heaps, where fragmentation holds their pages: measured on the default
    model at max_length 1024 with gradient checkpointing, the peak RSS grew from 2.7 to 3.5 GB over
    four steps, against a flat 2.75 GB with this. Each new tensor then starts on fresh pages, which
    costs about a third more time per step on CPU. Returns False (and logs why) where the C library
    is not glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        done = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    except (OSError, AttributeError, TypeError):
        done = False
    if not done:
        logger.warning("return_freed_memory: needs glibc's mallopt (C library %s); left off", name)
    return done
