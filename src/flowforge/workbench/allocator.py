"""The C allocator's settings for the ``flowforge`` process: freed memory kept for reuse.

PyTorch allocates CPU tensors with the C library's ``malloc``. glibc returns large freed blocks
to the operating system (``munmap``, or trimming the top of the heap) and takes fresh pages
back at the next allocation, which the kernel zero-fills on first touch: one page fault per
4 KiB. A training or scoring loop frees and reallocates the same large tensors every step, so
it pays those faults every step: scoring 10,000 digits in one call runs 1.2x (MAF) to 2.0x
(autoregressive NSF) faster with the memory kept (``benchmarks/allocator.py``; training at
batch 256 and 1,024-row calls are unchanged). :func:`reuse_freed_memory` asks glibc to keep
freed blocks in the process instead. The ``flowforge`` command calls it at start; Python users
can call it at the top of a script.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

__all__ = ["reuse_freed_memory", "ENV"]

ENV = "FLOWFORGE_KEEP_FREED_MEMORY"  # "0": leave the C library's defaults alone
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def reuse_freed_memory(limit: int = 1 << 30) -> bool:
    """On Linux with glibc, keep freed memory in the process for reuse: blocks below
    ``limit`` bytes come from the heap (not a fresh ``mmap``) and the heap is not trimmed
    until ``limit`` bytes lie free at its top. The process's resident memory then stays near
    its high-water mark instead of shrinking between steps, and its peak can be higher: freed
    heap blocks fragment and are not always reused (an audit, 2026-12-07: `eval` of a
    million-row table peaked at 820 MB against 612 MB by the median of five, once 1,370 MB; a
    sample of a million rows level).

    Returns whether the setting was applied: ``False`` on other systems and C libraries, or
    when the environment variable ``FLOWFORGE_KEEP_FREED_MEMORY`` is ``0`` (or ``false``,
    ``no``, ``off``, in any case; another value than these and ``1``, ``true``, ``yes``,
    ``on`` is a ValueError naming it).
    """
    if not (isinstance(limit, int) and 0 < limit < 1 << 31):
        raise ValueError(f"expected a limit in bytes in (0, 2**31), got {limit!r}")
    given = os.environ.get(ENV, "1").strip().lower()
    if given in ("0", "false", "no", "off"):
        return False
    if given not in ("1", "true", "yes", "on", ""):
        raise ValueError(
            f"{ENV}={os.environ[ENV]!r}: expected 0, false, no or off (leave the C "
            "library's defaults), or 1, true, yes or on (keep freed memory, the default)"
        )
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(mallopt(_M_TRIM_THRESHOLD, limit))
