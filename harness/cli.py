"""The ``tlbench`` command line (click). Bad input: one line naming the problem and the fix, exit code 2."""
from __future__ import annotations

import shlex
import shutil
import signal
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import click
from tabulate import tabulate

from tlbench import export as exporting
from tlbench.across import AXES as ACROSS_AXES, render_across
from tlbench.errors import one_line, printable
from tlbench.export import load_export
from tlbench.files import remove_stale_temporaries
from tlbench.grid import DEFAULT_BACKBONES, DEFAULT_DATASET, run_grid
from tlbench.interrupts import GridInterrupted, on_sigterm
from tlbench.leaderboard import COLUMNS, DEFAULT_COLUMNS, WIDE_COLUMNS, chosen_format, render
from tlbench.pivot import render_pivot
from tlbench.predict import find_images, predict as run_predict, render as render_predictions
from tlbench.progress import make_progress
from tlbench.registry import Plugins
from tlbench.report import write_report
from tlbench.rerun import other_processor, rerun_spec
from tlbench.search_space import search_space
from tlbench.spec import AXES_NOT_TUNED, DEFAULT_BUDGET, DEFAULT_EXTENSIONS, RunSpec, TuneSpec
from tlbench.splits import DataWarning
from tlbench.store import ResultStore, default_results_dir
from tlbench.suites import describe_protocol, find_suite, suite_table
from tlbench.tuning import budget_lines, tune_grid
from tlbench.types import UsageError

LIST_KINDS = ("strategies", "backbones", "datasets", "executors", "suites")


def _plugins():
    return Plugins()


def _echo(text: Any = "", err: bool = False) -> None:
    """Every line tlbench prints goes through here: user text in it (labels, file names, settings, a plugin's
    error) is shown literally, its control characters escaped (:func:`tlbench.errors.printable`)."""
    click.echo(printable(text), err=err)


class BadInput(click.ClickException):
    """Bad input: click prints "Error: <one line>" and exits 2 (no usage preamble: the line says the fix)."""

    exit_code = 2

    def format_message(self) -> str:
        return printable(self.message)


class WriteFailed(click.ClickException):
    """A file could not be written (a full disk, an I/O error): "Error: <one line>", exit 1, nothing half-written."""

    def format_message(self) -> str:
        return printable(self.message)


def _fail(message: str) -> None:
    raise BadInput(message)


def _parse_error(exc: click.UsageError) -> click.ClickException:
    """Click's own parse errors (unknown option, bad value, bad choice, missing or extra argument, unknown command)
    as one line: click's message, with its "did you mean" suggestion, plus where help is; exit code 2. Click would
    print its usage and a "Try ... for help" line above it, four lines for one mistake."""
    if isinstance(exc, getattr(click.exceptions, "NoArgsIsHelpError", ())):
        return exc  # a bare `tlbench`: the help text is the answer
    hint = ""
    ctx = exc.ctx
    if ctx is not None and ctx.help_option_names:
        hint = f" (see '{ctx.command_path} {ctx.help_option_names[-1]}')"
    return BadInput(one_line(exc.format_message()) + hint)


class _ParseErrorsKnowTheirCommand:
    """Gives click's parse errors the context of the command they belong to, for the "see ... --help" hint."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)  # type: ignore[misc]
        except click.UsageError as exc:
            if exc.ctx is None:  # some parser errors ("requires an argument") come without it: whose help helps
                exc.ctx = ctx
            raise


class TlbenchCommand(_ParseErrorsKnowTheirCommand, click.Command):
    pass


class TlbenchGroup(_ParseErrorsKnowTheirCommand, click.Group):
    """Turns every usage error, tlbench's and click's own, into one "Error:" line with exit code 2, and adds plugin
    commands lazily."""

    command_class = TlbenchCommand

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:  # parse errors of the group itself: `tlbench --bogus`
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise _parse_error(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as exc:  # one line, even when it quotes a multi-line message (e.g. pluggy's)
            raise BadInput(one_line(str(exc))) from None
        except click.UsageError as exc:  # a subcommand's parse errors, and unknown commands
            raise _parse_error(exc) from None
        except (KeyboardInterrupt, GridInterrupted) as exc:  # outside a grid's trials: before or after them
            name = exc.signal_name if isinstance(exc, GridInterrupted) else "SIGINT"
            _echo(f"tlbench: stopped by {name}; finished records are kept; run the same command again to "
                       f"resume", err=True)
            raise click.exceptions.Exit(143 if name == "SIGTERM" else 130) from None

    @staticmethod
    def _plugin_commands() -> dict[str, click.Command]:
        """Commands plugins add, collected on a scratch group each time (the plugin set depends on the
        environment, so nothing is cached on the module-level group)."""
        scratch = click.Group()
        try:
            _plugins().add_commands(scratch)
        except UsageError:
            pass  # `tlbench plugins` shows what is broken
        return scratch.commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugin_commands()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return super().get_command(ctx, name) or self._plugin_commands().get(name)


@click.group(cls=TlbenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tlbench")
def cli() -> None:
    """Benchmark transfer-learning strategies x pretrained backbones on your image data.

    \b
    Quick start:
      tlbench run --all              every strategy x default backbone on Fashion-MNIST
      tlbench leaderboard            the table of all results so far
      tlbench list strategies        what can be compared
    """


class _PrintingReporter:
    """Prints the grid as it goes, on stderr: one line per trial, the same whichever executor ran it."""

    def grid_started(self, result: Any) -> None:
        where = result.device if result.executor == "local" else f"executor {result.executor}"
        for line in result.left_out:
            _echo(f"tlbench: {line}", err=True)
        _echo(f"tlbench: {len(result.trials)} trial(s), {result.skipped} already done, {result.pending} to run "
                   f"on {where}; results in {result.results_dir}", err=True)

    def trial_finished(self, record: Any) -> None:
        _echo(_trial_line(record), err=True)

    def trial_busy(self, job: Any) -> None:
        _echo(f"    busy  {job.key}: another tlbench process is running it", err=True)

    def message(self, text: str) -> None:
        _echo(f"tlbench: {text}", err=True)


def _progress_factory(quiet: bool):
    return make_progress("off" if quiet else "auto")


def _warn_line(message: str) -> None:
    _echo(f"Warning: {message}", err=True)


def _trial_line(record: Any) -> str:
    trial, metrics = record.trial, record.metrics
    where = trial.title
    if not record.ok:
        return f"{record.status.upper():>8}  {where}: {record.error or ''}"
    return (f"      ok  {where}: val {100 * metrics.val_top1:.1f}%  test {100 * metrics.test_top1:.1f}%  "
            f"(best epoch {metrics.best_epoch}/{metrics.epochs}, {metrics.wall_s or 0.0:.1f} s"
            f"{', cached features' if metrics.feature_cache else ''}{_weights_note(record)})")


def _weights_note(record: Any) -> str:
    """The size of the trial's saved weights (--save-models), or why none could be written."""
    saved = record.saved_model
    if saved.get("bytes"):
        return f", weights {saved['bytes'] / 1e6:.1f} MB"
    return f", weights not saved: {saved['error']}" if saved.get("error") else ""


@cli.command()
@click.option("--all", "run_all", is_flag=True,
              help="Every registered strategy x the default backbones on the default dataset.")
@click.option("-s", "--strategy", "strategies", multiple=True, help="Strategy name (repeatable).")
@click.option("-b", "--backbone", "backbones", multiple=True,
              help=f"Backbone, e.g. efficientnet_lite0, timm:resnet18, torchvision:resnet50 (repeatable; "
                   f"default {', '.join(DEFAULT_BACKBONES)}).")
@click.option("-d", "--dataset", "datasets", multiple=True,
              help=f"Dataset, e.g. fashion-mnist, imagefolder:PATH (repeatable; default {DEFAULT_DATASET}).")
@click.option("--suite", default=None, metavar="NAME",
              help="Run a suite's tasks (see `tlbench list suites`), each with its split protocol; -d then picks "
                   "tasks of the suite.")
@click.option("--seeds", type=int, default=1, show_default=True, help="Number of seeds per configuration.")
@click.option("--seed", "first_seed", type=int, default=0, show_default=True, help="First seed.")
@click.option("--epochs", type=int, default=None, help="Shortcut for --set epochs=N.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Override a setting: epochs=5, full.lr=3e-4, frozen.epochs=20, data.train_size=2000, "
                   "executor.workers=2.")
@click.option("--vary", "axes", multiple=True, metavar="KEY=V1,V2,...",
              help="A setting as an axis of the grid: every combination of the --vary values is an ordinary trial, "
                   "the same trial as --set KEY=V (repeatable; any --set key, e.g. data.train_size=100,300,1000; "
                   "not with --tune).")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where records go [default: $TLBENCH_RESULTS_DIR or ./tlbench-results].")
@click.option("--executor", default="local", show_default=True,
              help="How trials are run: local, process, ray, slurm (see `tlbench list executors`).")
@click.option("--workers", type=int, default=None,
              help="Trials at a time, for executors that run several (shortcut for --set executor.workers=N).")
@click.option("--device", default=None, help="cpu or cuda[:N] [default: cuda if available].")
@click.option("--compile", "use_compile", is_flag=True, help="torch.compile the model (recorded).")
@click.option("--deterministic", is_flag=True, help="Deterministic algorithms, no cudnn benchmarking (recorded).")
@click.option("--force", is_flag=True, help="Re-run trials that already have a record.")
@click.option("--retry-failed", is_flag=True, help="Re-run trials whose record says failed or diverged.")
@click.option("-q", "--quiet", is_flag=True, help="No progress (bars on a terminal, one line per epoch otherwise).")
@click.option("--format", "fmt", default="github", show_default=True, help="Leaderboard format at the end.")
@click.option("--tune", is_flag=True,
              help="Give every strategy the same tuning budget: --tune-budget configurations of its search space "
                   "on the selection seed(s), the best on validation re-run on --seeds fresh seeds (reported).")
@click.option("--tune-budget", type=int, default=None, metavar="K",
              help="Configurations per strategy with --tune (the same K for every strategy) [default: 4].")
@click.option("--tune-extensions", type=int, default=None, metavar="N",
              help="With --tune: times a choice on the edge of an ordered axis extends it one step [default: "
                   f"{DEFAULT_EXTENSIONS}].")
@click.option("--tune-halving", is_flag=True,
              help="With --tune: successive halving on validation (fewer epochs first, the better half continued).")
@click.option("--save-models", type=click.Choice(["none", "best", "all"]), default="best", show_default=True,
              help="Keep trained weights (the restored best-epoch weights the test split scored) as "
                   "<key>.safetensors beside the records, their sha256 in the record: best = per dataset x backbone "
                   "only the trial best on validation over the results directory's records (never chosen on test), "
                   "the others pruned when the grid ends; all = every trial; none = no weights. The size is "
                   "printed per trial (efficientnet_lite0: about 14 MB). Export with `tlbench export`.")
@click.option("--selection-seeds", type=int, default=None, metavar="S",
              help="Seeds each configuration is trained on to choose, with --tune [default: 1]; the reporting "
                   "seeds come after them.")
def run(run_all: bool, strategies: tuple[str, ...], backbones: tuple[str, ...], datasets: tuple[str, ...],
        seeds: int, first_seed: int, epochs: int | None, settings: tuple[str, ...], axes: tuple[str, ...],
        results_dir: Path | None, executor: str, workers: int | None, device: str | None, use_compile: bool,
        deterministic: bool, force: bool, retry_failed: bool, quiet: bool, fmt: str, tune: bool,
        tune_budget: int | None, selection_seeds: int | None, save_models: str, tune_extensions: int | None,
        tune_halving: bool, suite: str | None) -> None:
    """Run a grid of trials: dataset x backbone x strategy x seed. Finished trials are skipped.

    The grid logic is the library call ``tlbench.run_grid`` (``tlbench.tune_grid`` with --tune); this command
    builds the run's :class:`tlbench.RunSpec` from its options, prints and sets the exit code.
    """
    spec, tuning = spec_from_options(click.get_current_context().params)
    _execute(spec, tuning, fmt)


def spec_from_options(options: dict[str, Any]) -> tuple[RunSpec, TuneSpec | None]:
    """``tlbench run``'s options (click's parameters) as the run's spec, built once (``--set`` parsed here, with the
    shortcuts --epochs, --compile, --deterministic and --workers), and the tuning spec with --tune."""
    o = options
    if not o["strategies"] and not o["run_all"]:
        _fail("choose strategies with -s NAME (see `tlbench list strategies`) or run everything with --all")
    given = [flag for flag, key in (("--tune-budget", "tune_budget"), ("--selection-seeds", "selection_seeds"),
                                    ("--tune-extensions", "tune_extensions"), ("--tune-halving", "tune_halving"))
             if o.get(key) not in (None, False)]
    if not o["tune"] and given:
        _fail(f"{given[0]} only applies with --tune; add --tune or drop it")
    if o["tune"] and o["axes"]:
        _fail(AXES_NOT_TUNED)
    shortcuts = ([f"epochs={o['epochs']}"] if o["epochs"] is not None else []) \
        + (["compile=true"] if o["use_compile"] else []) + (["deterministic=true"] if o["deterministic"] else [])
    spec = RunSpec(strategies=o["strategies"], backbones=o["backbones"], datasets=o["datasets"], seeds=o["seeds"],
                   first_seed=o["first_seed"], settings=[*o["settings"], *shortcuts], executor=o["executor"],
                   executor_options={"workers": o["workers"]} if o["workers"] is not None else {},
                   results_dir=o["results_dir"], device=o["device"], progress="off" if o["quiet"] else "auto",
                   redo="all" if o["force"] else "failed" if o["retry_failed"] else "none",
                   save_models=o["save_models"], axes=o["axes"], suite=o["suite"])
    tuning = TuneSpec(budget=DEFAULT_BUDGET if o["tune_budget"] is None else o["tune_budget"],
                      selection_seeds=1 if o["selection_seeds"] is None else o["selection_seeds"],
                      extensions=DEFAULT_EXTENSIONS if o.get("tune_extensions") is None else o["tune_extensions"],
                      halving=bool(o.get("tune_halving"))) if o["tune"] else None
    return spec, tuning


def _execute(spec: RunSpec, tuning: TuneSpec | None, fmt: str) -> None:
    """Run a spec as ``tlbench run`` does (``tlbench rerun`` too): the grid or the tuned grid, the leaderboard, the
    summary, the exit code."""
    plugins = _plugins()
    formats = dict(plugins.leaderboard_formats.items())
    chosen_format(formats, fmt)  # a bad --format stops the run before anything runs
    common = dict(reporter=_PrintingReporter(), plugins=plugins, warn=_warn_line)
    if tuning is not None:
        tuned = tune_grid(spec, tuning, **common)
        _report_tuning(tuned, fmt, formats)
        sys.exit(tuned.exit_code)
    result = run_grid(spec, **common)
    table = render(result.records, fmt, formats=formats)
    if table:
        _echo(table)
    _report_grid(result)
    if result.exit_code:
        sys.exit(result.exit_code)


def _report_tuning(tuned: Any, fmt: str, formats: dict[str, Any]) -> None:
    """The end of a tuned run: the leaderboard of its records with the tuned rows apart, each stage's summary, and
    what each sweep spent against its maximum, and the strategies that could not be tuned (the maxima were printed
    when it started)."""
    if tuned.sweeps:
        table = render(tuned.records, fmt, formats=formats, sweeps=tuned.sweeps)
        if table:
            _echo(table)
    for grid in tuned.grids:
        _report_grid(grid)
    for line in budget_lines(tuned):
        _echo(f"tlbench: {line}", err=True)
    for line in tuned.not_selected:
        _echo(f"tlbench: not tuned: {line}", err=True)
    if tuned.aborted:
        _echo(f"tlbench: stopped: {tuned.aborted}", err=True)
    if tuned.left_out:
        _echo(f"tlbench: {len(tuned.left_out)} strategy(ies) left out: they need an optional package (see the "
                   f"lines at the start)", err=True)


def _report_grid(result: Any) -> None:
    """A grid's counts, its failed trials and how to resume, on stderr."""
    left_out = f"{len(result.left_out)} left out (optional package missing), " if result.left_out else ""
    counts = (f"{len(result.ok)} ok, {len(result.failed)} failed, {left_out}{result.skipped} skipped (done before), "
              f"{result.done_elsewhere} done by another process, in {result.elapsed_s:.1f} s")
    _echo(f"tlbench: {counts}", err=True)
    for record in result.failed + result.failed_before:
        earlier = " (earlier run; --retry-failed re-runs it)" if record in result.failed_before else ""
        _echo(f"  {record.status}: {record.trial.label} seed {record.trial.seed} on {record.trial.backbone}"
                   f"{earlier}: {record.error}", err=True)
    if result.interrupted or result.aborted:
        why = f" by {result.interrupted}" if result.interrupted else f": {result.aborted}"
        _echo(f"tlbench: stopped{why}; finished records are kept; resume with: {result.resume_command}",
                   err=True)
    elif result.missing:
        _echo(f"tlbench: {len(result.missing)} trial(s) have no record: {', '.join(result.missing[:5])}", err=True)


@cli.command(name="list")
@click.argument("kind", required=False, type=click.Choice(LIST_KINDS))
@click.option("--wide", is_flag=True, help="One line per entry, however wide (for grep); default: fit the terminal.")
def list_(kind: str | None, wide: bool) -> None:
    """List what is registered, with descriptions, defaults and search spaces; entries that need an optional
    package not installed here are marked with * and the command that installs it."""
    plugins = _plugins()
    registries = {"strategies": plugins.strategies, "backbones": plugins.backbones, "datasets": plugins.datasets,
                  "executors": plugins.executors}
    width = shutil.get_terminal_size().columns
    for name in [kind] if kind else LIST_KINDS:
        if name == "suites":
            _list_suites(plugins, wide, width)
            continue
        registry = registries[name]
        unavailable = registry.unavailable()
        rows = []
        for item_name, item in registry.items():
            shown = f"{item_name}:<{'model' if name == 'backbones' else 'arg'}>" if getattr(
                item, "takes_argument", False) else item_name
            defaults = dict(getattr(item, "defaults", None) or getattr(item, "options", None) or {})
            if name == "strategies" and item.protocol:
                defaults.update(item.protocol)
            row = [shown + (" *" if item_name in unavailable else ""), item.description,
                   ", ".join(f"{k}={v}" for k, v in defaults.items())]
            if name == "strategies":
                space, source = search_space(item)
                shown_space = " x ".join(f"{k} {v}" for k, v in space.items()) or "none"
                row.append(shown_space + (" (derived)" if source.startswith("derived") else ""))
            rows.append(row + [registry.owner(item_name)])
        headers = (["name", "description", "defaults"] + (["search space (--tune)"] if name == "strategies" else [])
                   + ["plugin"])
        _echo(f"{name}:")
        _echo(tabulate(rows if wide else _fit_to_width(rows, headers, width), headers=headers,
                            tablefmt="simple"))
        for item_name, hint in unavailable.items():
            _echo(f"* {item_name} is unavailable here: it needs an optional package: {hint}")
        _echo()


def _list_suites(plugins: Any, wide: bool, width: int) -> None:
    """``tlbench list suites``: per suite its groups with their tasks and the split protocol; a task whose dataset
    is unknown or needs an optional package here is marked with *, with the reason below."""
    datasets = plugins.datasets
    unavailable = datasets.unavailable()
    rows, footnotes = [], []
    for name, suite in plugins.suites.items():
        marked = {}
        for task in suite.tasks:
            family = task.dataset.split(":", 1)[0]
            why = (unavailable.get(family) if family in datasets.names()
                   else f"dataset {family!r} is not registered here")
            marked[task.name] = task.name + (" *" if why else "")
            if why:
                footnotes.append(f"* {name}: {task.name} cannot run here: {why}")
        groups = "; ".join(f"{group}: {', '.join(marked[t.name] for t in suite.tasks if t.group == group)}"
                           for group in suite.groups)
        rows.append([name, suite.description, groups, describe_protocol(suite), plugins.suites.owner(name)])
    headers = ["name", "description", "groups: tasks", "split protocol (data.*)", "plugin"]
    _echo("suites:")
    _echo(tabulate(rows if wide else _fit_to_width(rows, headers, width), headers=headers, tablefmt="simple"))
    for line in footnotes:
        _echo(line)
    for name, suite in plugins.suites.items():
        if suite.notes:
            _echo(textwrap.fill(f"{name}: {suite.notes}", width) if not wide else f"{name}: {suite.notes}")
    _echo()


def _fit_to_width(rows: list[list[str]], headers: list[str], width: int) -> list[list[str]]:
    """The rows with their text columns wrapped so the table fits ``width`` columns where it can: the first (name)
    and last (plugin) columns keep their width; the columns between share the rest in proportion to their length,
    each at least as wide as its longest word (a setting is never split, so it stays copyable)."""
    header = [len(h) + 2 for h in headers]  # tabulate keeps two spaces beside a header in its column
    natural = [max([header[i]] + [len(str(r[i])) for r in rows]) for i in range(len(headers))]
    middle = range(1, len(headers) - 1)
    spare = width - natural[0] - natural[-1] - 2 * (len(headers) - 1)
    if sum(natural[i] for i in middle) <= spare:
        return rows
    longest_word = {i: max([len(w) for r in rows for w in str(r[i]).split()] + [header[i]]) for i in middle}
    longest_word[1] = min(longest_word[1], 16)  # the description is prose: a long word may break there
    total = sum(natural[i] for i in middle)
    share = {i: max(longest_word[i], spare * natural[i] // total) for i in middle}
    while sum(share.values()) > spare:  # a column widened to its longest word: narrow the others that can give
        slack = max(middle, key=lambda i: share[i] - longest_word[i])
        if share[slack] <= longest_word[slack]:
            break
        share[slack] -= 1
    return [[textwrap.fill(str(cell), share[i], break_long_words=i == 1, break_on_hyphens=False) if i in share
             else cell for i, cell in enumerate(row)] for row in rows]


@cli.command()
def plugins() -> None:
    """Installed plugins, their versions, the hooks they implement, and load errors."""
    loaded = _plugins()
    rows = [[i.name, i.version, "built-in" if i.builtin else "third-party", ", ".join(i.hooks) or "-",
             i.error or ""] for i in loaded.info.values()]
    _echo(tabulate(rows, headers=["plugin", "version", "kind", "hooks", "error"], tablefmt="simple"))


@cli.command()
@click.option("--format", "fmt", default="github", show_default=True,
              help="github, plain, simple, html, latex, csv, json, or one a plugin adds (see --help-formats).")
@click.option("--dataset", default=None, help="Only this dataset.")
@click.option("--columns", default=None, help="Comma-separated columns (see --help-columns).")
@click.option("--wide", is_flag=True, help="All measurement columns (FLOPs, params, top-5, cache...).")
@click.option("--vs", "reference", default=None, metavar="STRATEGY",
              help="Paired comparison with this strategy: per-seed difference, bootstrap 95% interval, P(better); "
                   "with --across, the reference of P(better) [default: full, else the best-ranked].")
@click.option("--across", type=click.Choice(ACROSS_AXES), default=None,
              help="One table over tasks (datasets per backbone, backbones per dataset, or every dataset x "
                   "backbone cell): mean top-1, mean rank, IQM with a stratified-bootstrap 95% CI, P(better).")
@click.option("--pivot", default=None, metavar="KEY",
              help="Strategy x value tables of a varied setting (a --set key: data.train_size, epochs, full.lr): "
                   "mean test top-1 ± its 95% t-interval and n per cell, per dataset x backbone.")
@click.option("--candidates", is_flag=True,
              help="Also list the configurations --tune tried only to choose (on their selection seeds).")
@click.option("--suite", default=None, metavar="NAME",
              help="A suite's view: per strategy each task's test top-1, the group means and the overall means.")
@click.option("--help-columns", is_flag=True, help="List the available columns and exit.")
@click.option("--help-formats", is_flag=True, help="List the available formats (plugins' too) and exit.")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where records are [default: $TLBENCH_RESULTS_DIR or ./tlbench-results].")
def leaderboard(fmt: str, dataset: str | None, columns: str | None, wide: bool, reference: str | None,
                across: str | None, pivot: str | None, candidates: bool, help_columns: bool, help_formats: bool,
                results_dir: Path | None, suite: str | None) -> None:
    """The leaderboard: mean ± std over seeds per dataset/backbone/strategy, sorted by test accuracy; after
    `tlbench run --tune`, the tuned rows follow the others, with a "tuning" column."""
    if help_columns:
        for name, (header, _, _) in COLUMNS.items():
            _echo(f"{name:10} {header}")
        return
    formats = dict(_plugins().leaderboard_formats.items())
    if help_formats:
        for name, item in formats.items():
            _echo(f"{name:10} {item.description}")
        return
    chosen = [c.strip() for c in columns.split(",") if c.strip()] if columns else (
        WIDE_COLUMNS if wide else DEFAULT_COLUMNS)
    store = ResultStore(results_dir or default_results_dir(), warn=_warn_line)
    if not store.root.is_dir():
        _fail(f"no results directory at {str(store.root)!r}; run `tlbench run` first or pass --results-dir")
    if across is not None and suite is not None:
        _fail("--across and --suite are two views; choose one")
    if pivot is not None:
        if across or columns or wide or candidates or reference or suite:
            _fail("--pivot prints its own columns; leave out --across, --suite, --columns, --wide, --vs and "
                  "--candidates")
        _echo(render_pivot(store.records(), pivot, fmt, formats, dataset))
        return
    if across is not None:
        if columns or wide or candidates:
            _fail("--across prints its own columns; leave out --columns, --wide and --candidates")
        _echo(render_across(store.records(), across, fmt, formats, reference, dataset, store.sweeps()))
        return
    if suite is not None:
        if columns or wide or candidates or reference or dataset:
            _fail("--suite prints each task, its group means and the overall mean; leave out --columns, --wide, "
                  "--candidates, --vs and --dataset")
        chosen = chosen_format(formats, fmt)
        table = suite_table(store.records(), find_suite(_plugins(), suite))
        if not table.rows:
            _fail(f"no ok records of suite {suite!r} in {str(store.root)!r}; run `tlbench run --suite {suite}` first")
        _echo(chosen.render(table))
        return
    text = render(store.records(), fmt, chosen, dataset, vs=reference, formats=formats,
                  sweeps=store.sweeps(), candidates=candidates)
    if not text:
        _fail(f"no records in {str(store.root)!r}" + (f" for dataset {dataset!r}" if dataset else ""))
    _echo(text)


@cli.command()
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where records are [default: $TLBENCH_RESULTS_DIR or ./tlbench-results].")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("report.html"),
              show_default=True, help="The HTML file to write (self-contained: no network request of any kind).")
@click.option("--dataset", default=None, help="Only this dataset [default: every dataset in the records].")
@click.option("--reference", default=None, metavar="STRATEGY",
              help="The strategy the paired comparisons are made against [default: full where a dataset has it; "
                   "across tasks, the best-ranked strategy when full misses a task].")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def report(results_dir: Path | None, out: Path, dataset: str | None, reference: str | None, quiet: bool) -> None:
    """A self-contained HTML report: leaderboard, plots, paired statistics, protocol, environment."""
    store = ResultStore(results_dir or default_results_dir(), warn=_warn_line)
    if not store.root.is_dir():
        _fail(f"no results directory at {str(store.root)!r}; run `tlbench run` first or pass --results-dir")
    plugins = _plugins()
    plugins.require_valid()
    if out.parent.is_dir():  # a report's temporary file that a killed `tlbench report` left
        remove_stale_temporaries(out.parent.glob(f".{out.name}.*.tmp"))
    try:
        written = write_report(store.records(), out, sections=[s for _, s in plugins.report_sections.items()],
                               dataset=dataset, reference=reference, progress=_progress_factory(quiet),
                               source=str(store.root), sweeps=store.sweeps(), warn=_warn_line)
    except OSError as exc:  # a full disk, an I/O error: the old file (if any) is untouched
        raise WriteFailed(f"could not write {str(out)!r}: {exc.strerror or exc}; nothing was written") from None
    _echo(f"tlbench: report written to {written}", err=True)


@cli.command()
@click.argument("key")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--print-only", is_flag=True, help="Print the command instead of running it.")
def rerun(key: str, results_dir: Path | None, print_only: bool) -> None:
    """Re-run the trial of a record (by key) with exactly its recorded settings."""
    store = ResultStore(results_dir or default_results_dir(), warn=_warn_line)
    candidates = [r for r in store.records() if r.key.startswith(key)] if key else []
    matches = sorted({r.key for r in candidates})
    if len(matches) != 1:
        _fail(f"{'no valid' if not matches else 'more than one'} record matches key {key!r} in "
              f"{str(store.root)!r}")
    record = next(r for r in candidates if r.key == matches[0])
    why_different = other_processor(record)
    if why_different:
        _warn_line(why_different)
    spec = rerun_spec(record, store.root)
    if print_only:
        _echo("tlbench " + " ".join(shlex.quote(a) for a in spec.arguments()))
        return
    _execute(spec, None, "github")


@cli.command()
@click.argument("key", required=False)
@click.option("--best", is_flag=True, help="The trial best on validation (per dataset x backbone) instead of KEY.")
@click.option("--dataset", default=None, help="With --best: only this dataset.")
@click.option("--backbone", default=None, help="With --best: only this backbone.")
@click.option("--format", "formats", multiple=True, default=("timm",), show_default=True,
              help="timm (model.safetensors + config.json, loads with timm.create_model(\"local-dir:DIR\", "
                   "pretrained=True)), torchscript or onnx (needs the export extra); repeatable or comma-separated.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="The folder to write (new or empty; --overwrite replaces it).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it holds files.")
@click.option("--accept-different", is_flag=True,
              help="When the trial has no saved weights and its re-run scores another validation top-1 than the "
                   "record (another processor), export the re-run's weights anyway (the card says so).")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where records are [default: $TLBENCH_RESULTS_DIR or ./tlbench-results].")
@click.option("--device", default=None, help="Device for a re-run (cpu or cuda[:N]) [default: cuda if available].")
def export(key: str | None, best: bool, dataset: str | None, backbone: str | None, formats: tuple[str, ...],
           out: Path, overwrite: bool, accept_different: bool, results_dir: Path | None, device: str | None) -> None:
    """Export a trial's trained model (by KEY, or --best) for timm, TorchScript or ONNX, with a model card.

    The weights are those `tlbench run --save-models` kept (default: the best on validation per dataset x
    backbone); without them the trial is re-run, and refused if the re-run's validation top-1 differs. LoRA
    adapters are merged; a model otherwise changed by surgery exports as TorchScript/ONNX only. Every file is
    scored on the trial's test split before the folder appears (README.md, config.json["tlbench"]["checks"]).

    \b
    Load it without tlbench:
      model = timm.create_model("local-dir:DIR", pretrained=True).eval()
      model = torch.jit.load("DIR/model.torchscript.pt")
      session = onnxruntime.InferenceSession("DIR/model.onnx")
    or: tlbench predict DIR IMAGES_OR_FOLDER
    """
    if bool(key) == best:
        _fail("name the trial to export by KEY or pass --best (not both)")
    if not best and (dataset or backbone):
        _fail("--dataset/--backbone choose among the best models: add --best, or export by KEY alone")
    chosen = [f.strip() for value in formats for f in value.split(",") if f.strip()]
    unknown = [f for f in chosen if f not in exporting.FORMATS]
    if unknown or not chosen:
        _fail(f"unknown --format {unknown[0] if unknown else ''!r}; choose from {', '.join(exporting.FORMATS)}")
    if "onnx" in chosen:
        exporting.require_onnx()
    exporting.check_out_folder(out, overwrite)
    store = ResultStore(results_dir or default_results_dir(), warn=_warn_line)
    if not store.root.is_dir():
        _fail(f"no results directory at {str(store.root)!r}; run `tlbench run` first or pass --results-dir")
    record = exporting.best_record(store, dataset, backbone) if best else exporting.find_record(store, key or "")
    say = lambda line: _echo(f"tlbench: {line}", err=True)  # noqa: E731
    plugins = _plugins()
    trained = exporting.trained_model(record, store.root, plugins, device=device, accept_different=accept_different,
                                      progress="auto", say=say)
    result = exporting.export(trained, out, chosen, plugins, overwrite=overwrite, say=say)
    for note in result.notes:
        say(note)
    say(f"wrote {result.folder} ({', '.join(result.formats)}, config.json, README.md): trial {record.key} "
        f"({record.trial.dataset} / {record.trial.backbone} / {record.trial.label} seed {record.trial.seed}: val "
        f"{100 * record.metrics.val_top1:.2f}%, test {100 * record.metrics.test_top1:.2f}%)")


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--top-k", type=int, default=5, show_default=True, help="Classes per image.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option("--use", type=click.Choice(["timm", "torchscript", "onnx"]), default=None,
              help="Which exported file runs [default: the first of timm, torchscript, onnx in MODEL_DIR].")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def predict(model_dir: Path, images: tuple[Path, ...], top_k: int, fmt: str, use: str | None, quiet: bool) -> None:
    """Classify image files (or folders of them) with a model from `tlbench export`: its class names and exactly
    the preprocessing the harness evaluated with (an image the harness evaluated gets the harness's label)."""
    exported = load_export(model_dir)
    files = find_images(images)
    if quiet or len(files) < 2 * 32 or not sys.stderr.isatty():
        _, predictions = run_predict(exported, files, top_k, use)
    else:
        with click.progressbar(length=len(files), label="predicting", file=sys.stderr) as bar:
            _, predictions = run_predict(exported, files, top_k, use, progress=bar.update)
    _echo(render_predictions(predictions, fmt))


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    """tlbench's own warnings about data and caches (:class:`tlbench.splits.DataWarning` and its kinds) as one
    ``Warning:`` line, like every other warning of the command; anything else as Python shows it."""
    if issubclass(category, DataWarning):
        _warn_line(one_line(str(message)))
    else:
        _PYTHON_SHOWWARNING(message, category, filename, lineno, file, line)


_PYTHON_SHOWWARNING = warnings.showwarning


def main() -> None:
    signal.signal(signal.SIGTERM, on_sigterm)  # like Ctrl-C: a clean stop with the summary, exit 143
    warnings.showwarning = _show_warning
    cli(prog_name="tlbench")


if __name__ == "__main__":
    main()
