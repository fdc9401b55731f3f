"""Defer Ctrl-C while the store is being written, so that an interrupted ingest leaves nothing half-written."""
from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any


class DeferredInterrupt:
    """``with DeferredInterrupt(): ...`` — a SIGINT that arrives inside is held and raised on exit.

    Only the main thread can install signal handlers; elsewhere this does nothing (the caller's
    thread cannot receive SIGINT anyway).
    """

    def __init__(self) -> None:
        self.received = False
        self._previous: Any = None
        self._installed = False

    def _hold(self, signum: int, frame: FrameType | None) -> None:
        self.received = True

    def __enter__(self) -> "DeferredInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._hold)
            self._installed = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self._installed:
            return
        signal.signal(signal.SIGINT, self._previous)
        self._installed = False
        if self.received and exc_type is None and self._previous is not signal.SIG_IGN:
            if callable(self._previous):
                self._previous(signal.SIGINT, None)
            else:
                raise KeyboardInterrupt
