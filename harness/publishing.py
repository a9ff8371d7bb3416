"""The public types of the publishing hooks: a leaderboard format and a report section, and what each is given.

Built-in formats (``plugins/leaderboard_formats.py``) and report sections (``plugins/report_sections.py``) are
registered through the same hooks as a third-party plugin's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence


@dataclass
class LeaderboardTable:
    """What a leaderboard format renders.

    ``rows``: one dict per configuration, column header -> display text (dataset, backbone and strategy first).
    ``values``: the same rows as machine values (column name -> number, or for accuracy columns a dict with mean,
    std, ci95 and n; ``vs`` holds the paired comparison when one was asked for). ``notes``: lines that must travel
    with the table (which sources of variance the intervals cover, the reference of the paired comparison).
    """

    rows: list[dict[str, Any]]
    values: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LeaderboardFormat:
    """``render(table) -> str``; ``name`` is what ``--format`` takes."""

    name: str
    description: str
    render: Callable[[LeaderboardTable], str]


@dataclass
class ReportContext:
    """What a report section is given for one dataset.

    ``records``: the dataset's records (ok and failed; read fields with :func:`tlbench.record_fields.get`).
    ``table``: its leaderboard (with the paired comparison against ``reference`` when that strategy exists).
    ``comparisons``: strategy label -> :class:`tlbench.stats.PairedComparison` against the reference.
    ``variance``: one line saying which sources of variance the intervals cover.
    ``figure(fig, alt)``: embeds a matplotlib figure as inline SVG (closes it) and returns the HTML.
    ``sweeps``: the ``tlbench run --tune`` sweeps of these records (``tlbench.sweeps.Sweep``), for sections that
    group records as the leaderboard does (``group_records(records, sweeps=...)``: tuned rows).
    """

    dataset: str
    records: Sequence[Mapping[str, Any]]
    table: LeaderboardTable
    reference: str
    comparisons: Mapping[str, Any]
    variance: str
    figure: Callable[[Any, str], str]
    sweeps: Sequence[Any] = ()


@dataclass(frozen=True)
class ReportSection:
    """``render(context) -> str``: an HTML fragment for one dataset ("" leaves the section out). Sections appear in
    ascending ``order`` (built-ins use 10, 20, ... 100), each under its ``title``. ``requires`` maps optional
    modules the section imports to an install hint (see :mod:`tlbench.requirements`): while one is missing the
    report shows a note in the section's place, and says so once. ``scope``: ``"dataset"`` renders the section once
    per dataset; ``"all"`` once over every dataset's records, under "Across tasks" after the datasets (its context's
    ``dataset`` is "" and its ``table`` empty: such a section computes what it shows from ``records``)."""

    name: str
    title: str
    order: int
    render: Callable[[ReportContext], str]
    requires: Mapping[str, Any] = field(default_factory=dict)
    scope: str = "dataset"
