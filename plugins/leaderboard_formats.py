"""The built-in leaderboard formats, registered through the same hook a plugin uses: tabulate's table formats,
CSV and JSON. Text formats carry the table's notes (which variance the intervals cover, the paired reference)."""
from __future__ import annotations

import csv
import html
import io
import json

from tabulate import tabulate

from tlbench import LeaderboardFormat, LeaderboardTable, hookimpl


def _tabulated(tablefmt: str):
    def render(table: LeaderboardTable) -> str:
        text = tabulate(table.rows, headers="keys", tablefmt=tablefmt, disable_numparse=True)
        if not table.notes:
            return text
        if tablefmt == "html":
            return text + "\n" + "\n".join(f"<p>{html.escape(note)}</p>" for note in table.notes)
        if tablefmt == "latex":
            return text + "\n" + "\n".join(f"% {note}" for note in table.notes)
        return text + "\n\n" + "\n".join(table.notes)
    return render


def _csv(table: LeaderboardTable) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(table.rows[0]))
    writer.writeheader()
    writer.writerows(table.rows)
    return buffer.getvalue()


def _json(table: LeaderboardTable) -> str:
    return json.dumps(table.values, indent=2)


TABULATE_FORMATS = {
    "github": "GitHub-flavoured Markdown table, notes below",
    "plain": "plain text columns, notes below",
    "simple": "text table with a header rule, notes below",
    "html": "a bare HTML <table> with the notes as <p> (for a full page: `tlbench report`)",
    "latex": "LaTeX tabular, notes as % comments",
}
BUILTIN_FORMATS = [LeaderboardFormat(name, description, _tabulated(name))
                   for name, description in TABULATE_FORMATS.items()]
BUILTIN_FORMATS += [
    LeaderboardFormat("csv", "one CSV row per configuration (display text; no notes)", _csv),
    LeaderboardFormat("json", "machine values per configuration: mean, std, ci95, n, the sources of variance, and "
                              "the paired comparison under `vs`", _json),
]


@hookimpl
def register_leaderboard_formats(register):
    for fmt in BUILTIN_FORMATS:
        register(fmt)
