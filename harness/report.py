"""``tlbench report``: one self-contained HTML file over result records, per dataset a sequence of sections.

Every section, the built-in ones included, is a :class:`tlbench.ReportSection` registered through the
``register_report_sections`` hook. The page loads nothing: styles are inline, plots are matplotlib SVGs embedded as
``data:`` images, and there is no script. The file is written atomically (temporary file, then rename).
"""
from __future__ import annotations

import base64
import html
import io
import os
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from tlbench.errors import printable
from tlbench.leaderboard import (DEFAULT_REFERENCE, build_table, check_reference, group_id, group_records,
                                 is_reference, paired_comparisons, variance_note)
from tlbench.publishing import LeaderboardTable, ReportContext, ReportSection
from tlbench.record_fields import as_dict, get
from tlbench.requirements import Extra, missing_requirements, module_available
from tlbench.store import atomic_write_text
from tlbench.types import UsageError
from tlbench.version import __version__

ACROSS_ANCHOR = "across-tasks"  # the heading of the sections with scope "all"
REPORT_COLUMNS = ("test", "n", "ci95", "val", "train_ips", "eval_ips", "memory", "trainable", "time", "status")

STYLE = """
:root { color-scheme: light; --ink: #1d232b; --muted: #5b6672; --rule: #d8dde3; --band: #f4f6f8; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1100px; padding: 0.75rem; font: 15px/1.45 system-ui, -apple-system, "Segoe UI",
       Roboto, "DejaVu Sans", sans-serif; color: var(--ink); background: #fff; }
h1 { font-size: 1.5rem; margin: 0.5rem 0; } h2 { font-size: 1.3rem; margin-top: 2rem; border-bottom: 2px solid
var(--ink); } h3 { font-size: 1.08rem; margin: 1.4rem 0 0.4rem; }
p, li { max-width: 75ch; overflow-wrap: anywhere; } .muted, figcaption, .note { color: var(--muted); font-size: 0.9rem; }
.table-wrap { overflow-x: auto; -webkit-overflow-scrolling: touch; margin: 0.5rem 0; }
table { border-collapse: collapse; font-size: 0.88rem; min-width: 100%; }
th, td { border-bottom: 1px solid var(--rule); padding: 0.3rem 0.5rem; text-align: left; white-space: nowrap; }
th { background: var(--band); position: sticky; top: 0; } td.num { text-align: right;
font-variant-numeric: tabular-nums; }
figure.plot { margin: 0.8rem 0; } figure.plot img { display: block; width: 100%; max-width: 860px; height: auto; }
code, pre { font: 0.85rem/1.4 ui-monospace, "DejaVu Sans Mono", monospace; } pre { background: var(--band);
padding: 0.6rem; overflow-x: auto; white-space: pre-wrap; word-break: break-all; }
nav a { margin-right: 0.8rem; }
table.protocol td, table.protocol-strategies td, table.environment td { white-space: normal; word-break: break-word; }
@media (max-width: 600px) { body { font-size: 14px; padding: 0.5rem; } th, td { padding: 0.25rem 0.35rem; } }
"""


def embed_figure(fig: Any, alt: str, name: str = "") -> str:
    """A matplotlib figure as an inline SVG ``data:`` image (no file, no request); the figure is closed."""
    import matplotlib.pyplot as plt  # deferred: optional (the report extra)

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue().encode("utf-8")).decode("ascii")
    return (f'<figure class="plot" data-plot="{html.escape(name)}"><img alt="{html.escape(alt)}" '
            f'src="data:image/svg+xml;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>')


PLOTS = Extra("report", "the report's plots are drawn with matplotlib")


def _configure_matplotlib() -> None:
    import matplotlib  # deferred: optional (the report extra)

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "tlbench"  # the same records give the same file
    matplotlib.rcParams["svg.fonttype"] = "path"  # text as outlines: the file needs no font
    matplotlib.rcParams["text.parse_math"] = False  # labels are user text: "$x$" is drawn as written, not as maths


def configuration_name(backbone: str | None, label: str, several_backbones: bool) -> str:
    """How the report names a configuration: the strategy label, with the backbone where a dataset has several;
    control characters shown as their escapes (:func:`tlbench.errors.printable`), so a plot or a table draws the
    user's text literally."""
    return printable(f"{label} / {backbone}" if several_backbones else label)


def _check_out(out: Path) -> Path:
    out = Path(out)
    if out.exists() and out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a directory; give a file name such as {str(out / 'report.html')!r}")
    if (out.exists() or out.is_symlink()) and not out.is_file():
        raise UsageError(f"--out {str(out)!r} exists and is not a regular file (a FIFO, a device, a dangling "
                         f"symlink); give the name of a file to write")
    if not out.parent.is_dir():
        raise UsageError(f"--out {str(out)!r}: directory {str(out.parent)!r} does not exist; create it or choose "
                         f"another --out")
    if not os.access(out.parent, os.W_OK):
        raise UsageError(f"--out {str(out)!r}: directory {str(out.parent)!r} is not writable; choose another --out")
    return out


def dataset_contexts(records: Sequence[Any], reference: str | None, dataset: str | None,
                     figure: Callable[[Any, str], str], sweeps: Sequence[Any] = ()) -> list[ReportContext]:
    """One context per dataset (sorted by name): its records, its leaderboard and the paired comparisons against
    ``reference`` (an error when no record has it; None: against ``full`` in the datasets that have it). With
    ``sweeps`` (``tlbench run --tune``) the leaderboard has tuned rows, and the records a sweep ran only to choose
    are left out of the context, as from the leaderboard."""
    names = sorted({get(r, "trial.dataset") for r in records if get(r, "trial.dataset")})
    if dataset is not None:
        if dataset not in names:
            raise UsageError(f"no records for dataset {dataset!r}; choose --dataset from {', '.join(names)}")
        names = [dataset]
    if reference is not None:
        check_reference(records, reference, option="--reference")
    reference = reference or DEFAULT_REFERENCE
    contexts = []
    for name in names:
        own_sweeps = [s for s in sweeps if s.dataset == name]
        own_groups = group_records([r for r in records if get(r, "trial.dataset") == name], sweeps=own_sweeps)
        shown = {get(r, "key") for g in own_groups for r in g["ok"] + g["failed"]}
        own = [r for r in records if get(r, "trial.dataset") == name and get(r, "key") in shown]
        has_reference = any(is_reference(g, reference) for g in own_groups)
        table = build_table(own, REPORT_COLUMNS, vs=reference if has_reference else None, sweeps=own_sweeps)
        comparisons = {}
        if has_reference:
            by_group = paired_comparisons(own, reference, sweeps=own_sweeps)
            multi = len({g["backbone"] for g in own_groups}) > 1
            comparisons = {configuration_name(g["backbone"], g["strategy"], multi) + (" (tuned)" if g["tuned"]
                                                                                      else ""): by_group[group_id(g)]
                           for g in own_groups if by_group[group_id(g)] is not None}
        contexts.append(ReportContext(name, own, table, reference if has_reference else "", comparisons,
                                      variance_note(own) or "one seed per configuration: no intervals", figure,
                                      own_sweeps))
    return contexts


def render_report(records: Iterable[Any], sections: Sequence[ReportSection], dataset: str | None = None,
                  reference: str | None = None, progress: Callable[[str, int], Any] | None = None,
                  source: str = "", sweeps: Sequence[Any] = (), warn: Callable[[str], None] | None = None) -> str:
    """The report's HTML text. ``progress(label, total)`` is a context manager yielding a bar with ``update(n)``
    (or None), advanced once per section per dataset. A section whose optional packages are missing (its
    ``requires``, or an ImportError while it renders) is left out with a note saying what to install, and
    ``warn`` is told once. ``reference``: the strategy of the paired comparisons and of P(better) across tasks
    (None: ``full`` where there is one, and across tasks the best-ranked strategy when ``full`` misses a task).
    """
    if module_available("matplotlib"):
        _configure_matplotlib()
    records = [as_dict(r) for r in records]
    if not records:
        raise UsageError(f"no records{f' in {source!r}' if source else ''}; run `tlbench run` first or pass "
                         f"--results-dir")
    figure: Callable[[Any, str], str] = embed_figure
    contexts = dataset_contexts(records, reference, dataset, figure, sweeps)
    ordered = sorted((s for s in sections if s.scope != "all"), key=lambda s: (s.order, s.name))
    overall = sorted((s for s in sections if s.scope == "all"), key=lambda s: (s.order, s.name))
    body = []
    left_out: dict[str, str] = {}  # section name -> what it needs
    total = len(contexts) * len(ordered) + len(overall)
    with (progress or (lambda label, total: nullcontext(None)))("report", total) as bar:
        for context in contexts:
            anchor = _anchor(context.dataset)
            body.append(f'<h2 id="{anchor}">{html.escape(context.dataset)}</h2>')
            for section in ordered:
                body.append(_section_html(section, _render_section(section, context, left_out), anchor))
                if bar is not None:
                    bar.update(1)
        shown = [r for context in contexts for r in context.records]
        across = ReportContext("", shown, LeaderboardTable([], []), reference or "", {}, "", figure,
                               [s for context in contexts for s in context.sweeps])
        fragments = []
        for section in overall:
            fragments.append(_section_html(section, _render_section(section, across, left_out), ACROSS_ANCHOR))
            if bar is not None:
                bar.update(1)
        if any(fragments):
            body.append(f'<h2 id="{ACROSS_ANCHOR}">Across tasks</h2>' + "".join(fragments))
    if left_out and warn is not None:
        needs = sorted(set(left_out.values()))
        warn(f"the report leaves out {len(left_out)} section(s) ({', '.join(sorted(left_out))}): they need "
             f"{'; '.join(needs)}")
    nav = " ".join(f'<a href="#{_anchor(c.dataset)}">{html.escape(c.dataset)}</a>' for c in contexts)
    if any(f'id="{ACROSS_ANCHOR}"' in part for part in body):
        nav += f' <a href="#{ACROSS_ANCHOR}">across tasks</a>'
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            f"style-src 'unsafe-inline'\">"
            f"<title>tlbench report</title><style>{STYLE}</style></head><body>"
            f"<h1>tlbench report</h1><p class=\"muted\">{len(records)} records"
            f"{f' from {html.escape(source)}' if source else ''}; written {created} by tlbench {__version__}. "
            f"{_comparisons_line(contexts)}</p><nav>{nav}</nav>"
            + "".join(body) + "</body></html>\n")


def _comparisons_line(contexts: Sequence[ReportContext]) -> str:
    """The header's sentence on what the paired comparisons are made against."""
    compared = sorted({c.reference for c in contexts if c.reference})
    if not compared:
        return (f"No paired comparisons: no dataset has records of {DEFAULT_REFERENCE}; choose a reference with "
                f"<code>--reference STRATEGY</code>.")
    return f"Paired comparisons against <code>{html.escape(', '.join(compared))}</code>."


def _section_html(section: ReportSection, fragment: str, anchor: str) -> str:
    if not fragment:
        return ""
    return (f'<section class="section" data-section="{html.escape(section.name)}" id="{anchor}-'
            f'{_anchor(section.name)}"><h3>{html.escape(section.title)}</h3>{fragment}</section>')


def _render_section(section: ReportSection, context: ReportContext, left_out: dict[str, str]) -> str:
    """One section's fragment, or a note saying which optional package it needs (recorded in ``left_out``)."""
    missing = missing_requirements(section)
    if not missing:
        try:
            return section.render(context)
        except ImportError as exc:  # a section without ``requires`` that imports what is not installed
            missing = [f"the Python package {exc.name or exc}, which is not installed"]
    left_out[section.name] = missing[0]
    return f'<p class="note">Left out: this section needs {html.escape(missing[0])}.</p>'


def write_report(records: Iterable[Any], out: Path, sections: Sequence[ReportSection], dataset: str | None = None,
                 reference: str | None = None, progress: Callable[[str, int], Any] | None = None,
                 source: str = "", sweeps: Sequence[Any] = (), warn: Callable[[str], None] | None = None) -> Path:
    """Renders the report and writes it atomically to ``out``; nothing is written when anything fails."""
    out = _check_out(out)
    text = render_report(records, sections, dataset, reference, progress, source, sweeps, warn)
    atomic_write_text(out, text, readable_by_all=True)  # mkstemp's 0600 would hide the report from its readers
    return out


def _anchor(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-") or "x"


__all__ = ["embed_figure", "render_report", "write_report", "dataset_contexts", "REPORT_COLUMNS"]
