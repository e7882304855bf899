"""Checks of output paths made before any work: an hour of training must not end on an unwritable folder.

Layer 1 (imports only boom_jax.errors), so the training loop and the entry points share them. Each
check raises ConfigError naming the flag or config key and the path.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping

from boom_jax.errors import ConfigError


def _real(path: str | os.PathLike) -> str:
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether `path` is `folder` or lies inside it (symlinks resolved)."""
    path, folder = _real(path), _real(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_out_not_inside(out: str | os.PathLike, inputs: Mapping[str, str | os.PathLike] | Iterable[tuple[str, str]],
                         out_key: str = "--out") -> None:
    """Refuse an output equal to, inside, or holding one of the inputs (even with --overwrite: the
    replaced folder would be the one being read). `inputs`: (flag or key naming the input, path) pairs,
    or a dict of them."""
    for key, path in (inputs.items() if isinstance(inputs, Mapping) else inputs):
        if path is None:
            continue
        if is_inside(out, path) or is_inside(path, out):
            relation = "is" if _real(out) == _real(path) else "is inside" if is_inside(out, path) else "holds"
            raise ConfigError(f"{out_key}={os.fspath(out)}: {relation} the input {key}={os.fspath(path)}; "
                              f"choose an output folder outside every input (--overwrite does not allow this)")


def check_writable_folder(path: str | os.PathLike, key: str) -> None:
    """`path` (a folder to be created or written into) can be written: its nearest existing ancestor is
    a folder in which a file can be created. Nothing is left behind."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{key}={path}: is a file; expected a folder (or a path to create one at)")
    probe_dir = path
    while not os.path.exists(probe_dir):
        parent = os.path.dirname(probe_dir)
        if parent == probe_dir:
            break
        probe_dir = parent
    if not os.path.isdir(probe_dir):
        raise ConfigError(f"{key}={path}: cannot create a folder there, {probe_dir} is a file")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=probe_dir)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"{key}={path}: cannot write in {probe_dir} ({e.strerror}); choose a writable folder") from None
