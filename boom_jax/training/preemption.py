"""SIGTERM (and SIGINT) handling: note the signal so the loop saves a checkpoint and stops cleanly."""

from __future__ import annotations

import signal
import threading
from types import FrameType


class PreemptionGuard:
    """Context manager: while active, SIGTERM/SIGINT set `requested` instead of killing the process.

    A second SIGINT restores the default behaviour (so Ctrl-C twice still aborts at once).
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
