"""Progress while a trial trains: a bar on a terminal; one line per epoch (epoch, train loss, val top-1, img/s,
elapsed) when the output is a log (CI, nohup, a cluster job), where a bar would print nothing useful until the end;
nothing with ``--quiet``.

The runner asks ``progress(label, total_steps)`` for a context manager; what it yields has ``update(steps)``
(called after every training step) and, for the line reporter, ``epoch(entry)`` (called after every epoch with the
trial's history entry plus ``images_per_s`` and the trial's total ``epochs``).
"""
from __future__ import annotations

import contextlib
import sys
import time
from typing import IO, Any, Callable, ContextManager

import click

from tlbench.errors import printable


def _elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def epoch_line(label: str, entry: dict[str, Any], elapsed: float) -> str:
    """``<label>  epoch 3/8  train loss 0.4123  val top-1 81.2%  412 img/s  elapsed 0:00:41``"""
    total = f"/{entry['epochs']}" if entry.get("epochs") else ""
    phase = f" ({entry['phase']})" if entry.get("phase") else ""
    rate = f"{entry['images_per_s']:.0f} img/s" if entry.get("images_per_s") else "- img/s"
    return (f"{label}  epoch {entry['epoch']}{total}{phase}  train loss {entry['train_loss']:.4f}  "
            f"val top-1 {100 * entry['val_top1']:.1f}%  {rate}  elapsed {_elapsed(elapsed)}")


class EpochLines:
    """One line per epoch on ``stream``, flushed at once (so a log shows it while the trial runs)."""

    def __init__(self, label: str, stream: IO[str]):
        self.label = printable(label)  # user text: shown literally
        self.stream = stream
        self.started = time.perf_counter()

    def __enter__(self) -> "EpochLines":
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def update(self, steps: int) -> None:
        """Steps are not printed: a line per epoch is enough for a log."""

    def epoch(self, entry: dict[str, Any]) -> None:
        click.echo(epoch_line(self.label, entry, time.perf_counter() - self.started), file=self.stream)
        self.stream.flush()


def progress_factory(quiet: bool, stream: IO[str] | None = None
                     ) -> Callable[[str, int], ContextManager[Any]]:
    """What the CLI hands the runner: nothing (quiet), a bar (a terminal) or epoch lines (anything else)."""
    def progress(label: str, total: int) -> ContextManager[Any]:
        out = stream if stream is not None else sys.stderr
        if quiet:
            return contextlib.nullcontext(None)
        if out.isatty():
            return click.progressbar(length=total, label=printable(label), file=out, show_pos=True, show_eta=True,
                                     item_show_func=None)
        return EpochLines(label, out)
    return progress


PROGRESS_MODES = ("auto", "bar", "lines", "off")


def make_progress(mode: str = "auto", stream: IO[str] | None = None
                  ) -> Callable[[str, int], ContextManager[Any]] | None:
    """A worker's progress display by name: "bar", "lines" (one per epoch), "off" (None), or "auto" (a bar on a
    terminal, lines otherwise). Executors whose workers share a log (several processes, Ray actors) use lines:
    bars of concurrent trials would overwrite each other."""
    if mode == "off":
        return None
    if mode == "auto":
        return progress_factory(False, stream)

    def progress(label: str, total: int) -> ContextManager[Any]:
        out = stream if stream is not None else sys.stderr
        if mode == "bar":
            return click.progressbar(length=total, label=printable(label), file=out, show_pos=True, show_eta=True,
                                     item_show_func=None)
        return EpochLines(label, out)
    return progress
