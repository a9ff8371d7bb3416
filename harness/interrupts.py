"""SIGINT and SIGTERM stop tlbench cleanly: finished records are kept, the summary and the resume command are shown.

The one owner of that rule: :func:`on_sigterm` turns SIGTERM into :class:`GridInterrupted` (SIGINT already is a
KeyboardInterrupt); ``tlbench``'s entry point installs it for the whole command, and :class:`raise_on_sigterm`
installs it around a grid run from the library (restoring what was there).
"""
from __future__ import annotations

import signal
import threading
from typing import Any


class GridInterrupted(BaseException):
    """SIGINT or SIGTERM reached the driver: stop dispatching, keep every finished record."""

    def __init__(self, signal_name: str, exit_code: int):
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.exit_code = exit_code


def on_sigterm(signum: int, frame: Any) -> None:
    raise GridInterrupted("SIGTERM", 143)


class raise_on_sigterm:
    """SIGTERM (like SIGINT) becomes an exception in the driver's main thread while the block runs, so the grid
    stops cleanly, keeps its records and reports; restored afterwards. Outside the main thread, nothing is
    installed (signals reach only the main thread)."""

    def __enter__(self) -> "raise_on_sigterm":
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, on_sigterm)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class keep_sigterm:
    """Around a library call that installs its own SIGTERM handler (``ray.init`` installs one that calls
    ``sys.exit``, which ends in Ray's own crash output with no summary): whatever handled SIGTERM before the block
    handles it again after it, so SIGTERM still stops the grid cleanly. Outside the main thread, nothing is done."""

    def __enter__(self) -> "keep_sigterm":
        self._handler = None
        if threading.current_thread() is threading.main_thread():
            self._handler = signal.getsignal(signal.SIGTERM)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handler is not None and signal.getsignal(signal.SIGTERM) is not self._handler:
            signal.signal(signal.SIGTERM, self._handler)


class deferred_sigterm:
    """For a loop that waits inside a C extension (``ray.wait``): an exception raised from a signal handler there
    comes out as a ``SystemError`` from the extension, not as :class:`GridInterrupted`. Between :meth:`start` and
    :meth:`stop` (or inside a ``with`` block) SIGTERM is only noted; the loop calls :meth:`check` after each wait,
    which raises :class:`GridInterrupted` then, in plain Python. :meth:`stop` restores the previous handler.
    Outside the main thread, nothing is installed."""

    def __init__(self) -> None:
        self.received = False
        self._previous: Any = None

    def start(self) -> "deferred_sigterm":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._note)
        return self

    def stop(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _note(self, signum: int, frame: Any) -> None:
        self.received = True

    def check(self) -> None:
        if self.received:
            raise GridInterrupted("SIGTERM", 143)

    def __enter__(self) -> "deferred_sigterm":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
