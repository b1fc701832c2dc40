"""CPU heap policy: keep freed activations in the process instead of handing them back to the OS.

glibc's malloc serves blocks above its mmap threshold with fresh ``mmap()``
pages and returns them with ``munmap()`` when they are freed, so every forward
pass page-faults its activations in again. On resnet20 at batch 16 that is a
third of the run time, and it hits the whole model (whose buffers are freed as
it goes) harder than its pieces timed one by one, so block latencies stop
adding up to the model's. Raising the mmap and trim thresholds lets freed
memory be reused, which is what jemalloc and tcmalloc do by default. The
policy changes latency, so it is part of the device fingerprint; a deployment
that wants the profiled latencies runs with the same policy
(:func:`retain_freed_memory` at start-up, or the environment in
:data:`RETAIN_ENV`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# mallopt() parameters from glibc's <malloc.h>.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
# glibc caps the mmap threshold at 32 MiB on 64-bit; larger blocks are mmapped whatever we ask.
_MMAP_THRESHOLD = 32 << 20
_TRIM_THRESHOLD = 1 << 30
_TOP_PAD = 64 << 20

#: The same policy set through the environment, for a process started from a shell.
RETAIN_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(_MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(_TRIM_THRESHOLD),
    "MALLOC_TOP_PAD_": str(_TOP_PAD),
}

#: Set to "1" to keep the C library's default policy (``prunerd --system-malloc`` sets it).
OPT_OUT_ENV = "PRUNERD_SYSTEM_MALLOC"

_retained = False


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def retain_freed_memory() -> bool:
    """Make this process's glibc malloc keep freed memory for reuse (see the module docstring).

    Returns True when the policy is in force, False where there is no glibc
    (another C library, or an allocator preloaded in its place) or the
    environment opts out (:data:`OPT_OUT_ENV` = "1") and nothing was changed.
    Safe to call more than once.
    """
    global _retained
    if _retained:
        return True
    if os.environ.get(OPT_OUT_ENV) == "1":
        return False
    if _preloaded():
        return False
    libc = _glibc()
    if libc is None:
        return False
    ok = all(
        libc.mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
            (_M_TOP_PAD, _TOP_PAD),
        )
    )
    _retained = ok
    return ok


def _preloaded() -> str | None:
    for lib in ("jemalloc", "tcmalloc", "mimalloc"):
        if lib in os.environ.get("LD_PRELOAD", ""):
            return lib
    return None


def allocator_policy() -> str:
    """The heap policy latencies are measured under: ``glibc-retain``, ``glibc``,
    ``glibc-env`` (thresholds from the environment), a preloaded allocator's
    name, or ``system`` (not glibc)."""
    if (lib := _preloaded()) is not None:
        return lib
    if _retained:
        return "glibc-retain"
    if _glibc() is None:
        return "system"
    if any(k in os.environ for k in RETAIN_ENV):
        return "glibc-env"
    return "glibc"
