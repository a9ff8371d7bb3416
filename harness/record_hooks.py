"""Hands each finished record to the plugins' ``record_finished`` hooks (e.g. a logger to MLflow or W&B).

The record is already written when this runs, and a plugin that raises costs one warning line, never the record
or the rest of the grid; each plugin gets its own copy, so one cannot change what the next one sees.
"""
from __future__ import annotations

import copy
import sys
from typing import Any, Callable

from tlbench.errors import exception_line
from tlbench.record_fields import as_dict, get


def record_finished(plugins: Any, record: Any, warn: Callable[[str], None] | None = None) -> int:
    """Calls every ``record_finished`` implementation with a copy of ``record``; returns how many raised."""
    warn = warn or (lambda line: print(f"Warning: {line}", file=sys.stderr, flush=True))
    failures = 0
    data = as_dict(record)
    for impl in plugins.pm.hook.record_finished.get_hookimpls():
        try:
            impl.function(record=copy.deepcopy(data))
        except Exception as exc:  # a logging plugin must not cost the grid anything
            failures += 1
            reason = exception_line(exc)
            warn(f"plugin {impl.plugin_name!r} failed in record_finished for record "
                 f"{get(data, 'key', '?')} (the record is written; the grid goes on): {reason}")
    return failures
