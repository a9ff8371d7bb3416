"""Per-trial progress on stderr: a bar on a terminal, nothing otherwise (placeholder until per-epoch log lines)."""
from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import Any, Callable


def make_progress(mode: str = "bar") -> Callable[[str, int], Any] | None:
    if mode == "off":
        return None

    def progress(label: str, total: int) -> Any:
        import click

        if mode == "bar" or sys.stderr.isatty():
            return click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True, show_eta=True)
        return nullcontext(None)
    return progress
