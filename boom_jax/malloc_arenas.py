"""Cap glibc's per-thread malloc arenas for a process whose big buffers are made by many threads.

glibc gives each thread that allocates its own arena (up to 8 per core) and returns memory to the OS
per arena, so buffers read by TensorStore's and the merge's reader threads and freed by the main
thread leave free but unreturned pages in several arenas at once. A streaming merge of 5 members of
a 510 MB model peaked 1476-1603 MB above its start with glibc's default and 1094-1206 MB with two
arenas, no slower (benchmarks/merge.py). `python -m boom_jax.merge` calls `cap_malloc_arenas` first;
a library caller decides for its own process (the cap applies to arenas made after the call).
The lowest layer: imports nothing of the project.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

ENV = "MALLOC_ARENA_MAX"  # glibc's own knob: when set, it wins and this module does nothing
_M_ARENA_MAX = -8  # mallopt parameter number, glibc's malloc.h


def cap_malloc_arenas(arenas: int = 2) -> bool:
    """Limit the process to `arenas` malloc arenas; True if the cap is now in force.

    False (and nothing changed) where the C library is not glibc or the user set MALLOC_ARENA_MAX.
    """
    if arenas < 1:
        raise ValueError(f"arenas={arenas}: expected at least 1")
    if os.environ.get(ENV):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt), or no C library to load
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_ARENA_MAX, arenas) == 1
