"""One run per workdir: a lock that names its holder, and removal of what killed writes left behind.

`WorkdirLock(workdir)` holds an exclusive `flock` on WORKDIR/.lock for the run's life and writes the
holder's pid, host and start time into it. The kernel releases the lock when the process ends, however
it ends, so a killed run never keeps its workdir locked; a second run finds the lock held and is refused
at once with the first one's pid and host. `remove_stale_temp(workdir)` deletes the `*.tmp-*` files and
folders that an interrupted atomic write (boom_jax.atomic_io, model_io.temp_sibling) leaves; call it
once the lock is held, so a live run's temporary files are never touched.
"""

from __future__ import annotations

import fcntl
import functools
import inspect
import json
import os
import shutil
import socket
import time

LOCK_FILE = ".lock"


class WorkdirLockedError(RuntimeError):
    """Another live process is running in this workdir (the message names its pid and host)."""


class WorkdirLock:
    """Context manager (or acquire/release) for the exclusive lock of one workdir."""

    def __init__(self, workdir: str):
        self.workdir = os.path.abspath(workdir)
        self.path = os.path.join(self.workdir, LOCK_FILE)
        self._fd: int | None = None

    def acquire(self) -> "WorkdirLock":
        os.makedirs(self.workdir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise WorkdirLockedError(
                f"{self.workdir}: another run is using this workdir (pid {holder.get('pid', '?')} on host "
                f"{holder.get('host', '?')}, started {holder.get('started', '?')}); wait for it to finish, stop "
                f"it, or choose another --workdir") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock; the file stays (harmless)
            self._fd = None

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def remove_stale_temp(workdir: str) -> list[str]:
    """Deletes the `*.tmp-*` entries (files and folders, also their `.old` swaps) directly in `workdir`;
    returns the removed names. Orbax cleans its own temporary checkpoint folders."""
    removed = []
    if not os.path.isdir(workdir):
        return removed
    for name in sorted(os.listdir(workdir)):
        if ".tmp-" not in name:
            continue
        path = os.path.join(workdir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        removed.append(name)
    return removed


def holds_workdir_lock(fn):
    """Decorator for a workflow `fn(config, workdir, ...)`: holds WORKDIR's lock while it runs, so a
    second run of the same workflow on the same folder is refused at once (WorkdirLockedError)."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        workdir = signature.bind(*args, **kwargs).arguments["workdir"]
        with WorkdirLock(workdir):
            return fn(*args, **kwargs)

    return wrapped
