"""Persistent XLA compilation cache: the 2nd..Nth run (or bag member) with the same shapes loads the
compiled train step from disk instead of recompiling it (about 20 s per MiniLM step shape on CPU, and
length buckets give several shapes).

Call :func:`enable_compilation_cache` once, early in an entry point (before the first jit). A cache
folder the user already chose (``JAX_COMPILATION_CACHE_DIR`` or ``jax_compilation_cache_dir``) wins
over the one passed here; ``JAX_ENABLE_COMPILATION_CACHE=false`` turns the cache off. Entries are keyed
by the program, the compile options, the XLA flags and the jax/jaxlib versions, so a stale or foreign
entry is never used.
"""

from __future__ import annotations

import os

import jax

DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "boom_jax", "xla")
CACHE_DIR_ENV = "JAX_COMPILATION_CACHE_DIR"
MIN_COMPILE_TIME_SECS = 0.5
"""Programs that compile faster than this are not written (the cache is for the train / eval steps)."""


def enable_compilation_cache(
    cache_dir: str | None = DEFAULT_CACHE_DIR, min_compile_time_secs: float = MIN_COMPILE_TIME_SECS
) -> str | None:
    """Turns on JAX's persistent compilation cache and returns the folder in use (None = off).

    ``cache_dir``: the folder ("~" expanded, created when missing); "" or None leaves the cache off
    unless the user set one. ``min_compile_time_secs``: only programs that took at least this long to
    compile are stored."""
    chosen = os.environ.get(CACHE_DIR_ENV) or jax.config.jax_compilation_cache_dir
    folder = chosen or (os.path.abspath(os.path.expanduser(cache_dir)) if cache_dir else None)
    if not folder:
        return None
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise OSError(f"compilation cache folder {folder!r} cannot be created: {err}") from err
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


def cache_entries(folder: str) -> list[str]:
    """The compiled programs stored in a cache folder (file names), for reports and tests."""
    if not os.path.isdir(folder):
        return []
    return sorted(name for name in os.listdir(folder) if not name.startswith("."))


__all__ = ["CACHE_DIR_ENV", "DEFAULT_CACHE_DIR", "MIN_COMPILE_TIME_SECS", "cache_entries", "enable_compilation_cache"]
