"""The ``tlbench`` command line (click). Bad input: one line naming the problem and the fix, exit code 2."""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Any

import click

from tlbench.types import UsageError

DEFAULT_DATASET = "fashion-mnist"
DEFAULT_BACKBONES = ("efficientnet_lite0",)
LIST_KINDS = ("strategies", "backbones", "datasets", "executors")


def _plugins():
    from tlbench.registry import Plugins

    return Plugins()


class BadInput(click.ClickException):
    """Bad input: click prints "Error: <one line>" and exits 2 (no usage preamble: the line says the fix)."""

    exit_code = 2


def _fail(message: str) -> None:
    raise BadInput(message)


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


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
    return BadInput(_one_line(exc.format_message()) + hint)


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
            raise BadInput(_one_line(str(exc))) from None
        except click.UsageError as exc:  # a subcommand's parse errors, and unknown commands
            raise _parse_error(exc) from None

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


def _progress_factory(quiet: bool):
    def progress(label: str, total: int):
        if quiet:
            from contextlib import nullcontext

            return nullcontext(None)
        return click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True, show_eta=True,
                                 item_show_func=None)
    return progress


def _trial_line(record: dict[str, Any]) -> str:
    trial = record["trial"]
    where = f"{trial['dataset']} / {trial['backbone']} / {trial['label']} / seed {trial['seed']}"
    metrics = record.get("metrics", {})
    if record["status"] != "ok":
        return f"{record['status'].upper():>8}  {where}: {record.get('error', '')}"
    return (f"      ok  {where}: val {100 * metrics['val_top1']:.1f}%  test {100 * metrics['test_top1']:.1f}%  "
            f"(best epoch {metrics['best_epoch']}/{metrics['epochs']}, {metrics['wall_s']:.1f} s"
            f"{', cached features' if metrics.get('feature_cache') else ''})")


@cli.command()
@click.option("--all", "run_all", is_flag=True,
              help="Every registered strategy x the default backbones on the default dataset.")
@click.option("-s", "--strategy", "strategies", multiple=True, help="Strategy name (repeatable).")
@click.option("-b", "--backbone", "backbones", multiple=True,
              help=f"Backbone, e.g. efficientnet_lite0, timm:resnet18, torchvision:resnet50 (repeatable; "
                   f"default {', '.join(DEFAULT_BACKBONES)}).")
@click.option("-d", "--dataset", "datasets", multiple=True,
              help=f"Dataset, e.g. fashion-mnist, imagefolder:PATH (repeatable; default {DEFAULT_DATASET}).")
@click.option("--seeds", type=int, default=1, show_default=True, help="Number of seeds per configuration.")
@click.option("--seed", "first_seed", type=int, default=0, show_default=True, help="First seed.")
@click.option("--epochs", type=int, default=None, help="Shortcut for --set epochs=N.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Override a setting: epochs=5, full.lr=3e-4, frozen.epochs=20, data.train_size=2000.")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where records go [default: $TLBENCH_RESULTS_DIR or ./tlbench-results].")
@click.option("--executor", default="local", show_default=True, help="How trials are run.")
@click.option("--device", default=None, help="cpu or cuda[:N] [default: cuda if available].")
@click.option("--compile", "use_compile", is_flag=True, help="torch.compile the model (recorded).")
@click.option("--deterministic", is_flag=True, help="Deterministic algorithms, no cudnn benchmarking (recorded).")
@click.option("--force", is_flag=True, help="Re-run trials that already have a record.")
@click.option("--retry-failed", is_flag=True, help="Re-run trials whose record says failed or diverged.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.option("--format", "fmt", default="github", show_default=True, help="Leaderboard format at the end.")
def run(run_all: bool, strategies: tuple[str, ...], backbones: tuple[str, ...], datasets: tuple[str, ...],
        seeds: int, first_seed: int, epochs: int | None, settings: tuple[str, ...], results_dir: Path | None,
        executor: str, device: str | None, use_compile: bool, deterministic: bool, force: bool,
        retry_failed: bool, quiet: bool, fmt: str) -> None:
    """Run a grid of trials: dataset x backbone x strategy x seed. Finished trials are skipped."""
    from tlbench.leaderboard import FORMATS, render
    from tlbench.devices import pick_device
    from tlbench.plan import build_trials, check_seeds, parse_overrides
    from tlbench.runner import TrialRunner, resolve
    from tlbench.store import ResultStore, default_results_dir

    plugins = _plugins()
    if run_all:  # "every registered strategy" is not every one while a plugin is broken
        plugins.require_valid()
    hint = plugins.failure_hint()
    if fmt not in FORMATS:
        _fail(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if not strategies and not run_all:
        _fail("choose strategies with -s NAME (see `tlbench list strategies`) or run everything with --all")
    check_seeds(first_seed, seeds)
    strategy_names = list(dict.fromkeys(strategies)) or plugins.strategies.names()
    chosen_strategies = [(name, plugins.strategies.get(name, hint)) for name in strategy_names]
    backbone_names = list(dict.fromkeys(backbones)) or list(DEFAULT_BACKBONES)
    for name in backbone_names:
        resolve(plugins.backbones, name, hint)
    dataset_names = list(dict.fromkeys(datasets)) or [DEFAULT_DATASET]
    chosen_datasets = [(name, resolve(plugins.datasets, name, hint)[0]) for name in dataset_names]
    chosen_executor = plugins.executors.get(executor, hint)

    overrides = parse_overrides(settings)
    if epochs is not None:
        overrides["epochs"] = epochs
    if use_compile:
        overrides["compile"] = True
    if deterministic:
        overrides["deterministic"] = True
    trials = build_trials(datasets=chosen_datasets, backbones=backbone_names, strategies=chosen_strategies,
                          seeds=list(range(first_seed, first_seed + seeds)), overrides=overrides,
                          registered_strategies=dict(plugins.strategies.items()))

    store = ResultStore(results_dir or default_results_dir())
    store.check_writable()
    command = "tlbench " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else ""
    runner = TrialRunner(plugins, store, pick_device(device), _progress_factory(quiet), command)

    def already_done(existing: dict[str, Any] | None) -> bool:
        """A record exists and this run is not asked to redo it (--force: all; --retry-failed: failed ones)."""
        return existing is not None and not force and (existing.get("status") == "ok" or not retry_failed)

    pending, skipped, failed_before = [], 0, []
    for trial in trials:
        existing = store.read(trial.key)
        if already_done(existing):
            skipped += 1
            if existing.get("status") != "ok":
                failed_before.append(existing)
            continue
        pending.append(trial)
    if pending:
        runner.check(pending)  # bad data or impossible plans fail here, before anything is written
    store.create()

    click.echo(f"tlbench: {len(trials)} trial(s), {skipped} already done, {len(pending)} to run "
               f"on {runner.device.type}; results in {store.root}", err=True)
    outcome = {"ok": 0, "failed": [], "busy": 0}
    started = time.perf_counter()

    def run_trial(trial):
        if not store.claim(trial.key):
            outcome["busy"] += 1
            click.echo(f"    busy  {trial.key}: another tlbench process is running it", err=True)
            return None
        try:
            existing = store.read(trial.key)  # another process may have finished it while we waited
            if already_done(existing):
                return existing
            record = runner.run(trial)
        finally:
            store.release(trial.key)
        click.echo(_trial_line(record), err=True)
        if record["status"] == "ok":
            outcome["ok"] += 1
        else:
            outcome["failed"].append(record)
        return record

    chosen_executor.execute(pending, run_trial)
    elapsed = time.perf_counter() - started
    keys = {t.key for t in trials}
    records = [r for r in store.records() if r["key"] in keys]
    table = render(records, fmt)
    if table:
        click.echo(table)
    failed = outcome["failed"]
    click.echo(f"tlbench: {outcome['ok']} ok, {len(failed)} failed, {skipped} skipped (done before), "
               f"{outcome['busy']} busy elsewhere, in {elapsed:.1f} s", err=True)
    for record in failed + failed_before:
        earlier = " (earlier run; --retry-failed re-runs it)" if record in failed_before else ""
        click.echo(f"  {record.get('status', 'failed')}: {record['trial']['label']} seed {record['trial']['seed']} "
                   f"on {record['trial']['backbone']}{earlier}: {record.get('error')}", err=True)
    if failed or failed_before:  # the grid is not all good while any of its cells failed, now or before
        sys.exit(1)


@cli.command(name="list")
@click.argument("kind", required=False, type=click.Choice(LIST_KINDS))
def list_(kind: str | None) -> None:
    """List what is registered, with one-line descriptions and defaults."""
    from tabulate import tabulate

    plugins = _plugins()
    registries = {"strategies": plugins.strategies, "backbones": plugins.backbones, "datasets": plugins.datasets,
                  "executors": plugins.executors}
    for name in [kind] if kind else LIST_KINDS:
        rows = []
        for item_name, item in registries[name].items():
            shown = f"{item_name}:<{'model' if name == 'backbones' else 'arg'}>" if getattr(
                item, "takes_argument", False) else item_name
            defaults = dict(getattr(item, "defaults", {}) or {})
            if name == "strategies" and item.protocol:
                defaults.update(item.protocol)
            description = item.description
            if name == "strategies" and item.missing_requirements():
                description += f" [not installed: {item.missing_requirements()[0]}]"
            rows.append([shown, description, ", ".join(f"{k}={v}" for k, v in defaults.items()),
                         registries[name].owner(item_name)])
        click.echo(f"{name}:")
        click.echo(tabulate(rows, headers=["name", "description", "defaults", "plugin"], tablefmt="simple"))
        click.echo()


@cli.command()
def plugins() -> None:
    """Installed plugins, their versions, the hooks they implement, and load errors."""
    from tabulate import tabulate

    loaded = _plugins()
    rows = [[i.name, i.version, "built-in" if i.builtin else "third-party", ", ".join(i.hooks) or "-",
             i.error or ""] for i in loaded.info.values()]
    click.echo(tabulate(rows, headers=["plugin", "version", "kind", "hooks", "error"], tablefmt="simple"))


@cli.command()
@click.option("--format", "fmt", default="github", show_default=True,
              help="github, plain, simple, html, latex, csv or json.")
@click.option("--dataset", default=None, help="Only this dataset.")
@click.option("--columns", default=None, help="Comma-separated columns (see --help-columns).")
@click.option("--wide", is_flag=True, help="All measurement columns (FLOPs, params, top-5, cache...).")
@click.option("--help-columns", is_flag=True, help="List the available columns and exit.")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where records are [default: $TLBENCH_RESULTS_DIR or ./tlbench-results].")
def leaderboard(fmt: str, dataset: str | None, columns: str | None, wide: bool, help_columns: bool,
                results_dir: Path | None) -> None:
    """The leaderboard: mean ± std over seeds per dataset/backbone/strategy, sorted by test accuracy."""
    from tlbench.leaderboard import COLUMNS, DEFAULT_COLUMNS, WIDE_COLUMNS, render
    from tlbench.store import ResultStore, default_results_dir

    if help_columns:
        for name, (header, _, _) in COLUMNS.items():
            click.echo(f"{name:10} {header}")
        return
    chosen = [c.strip() for c in columns.split(",") if c.strip()] if columns else (
        WIDE_COLUMNS if wide else DEFAULT_COLUMNS)
    store = ResultStore(results_dir or default_results_dir())
    if not store.root.is_dir():
        _fail(f"no results directory at {str(store.root)!r}; run `tlbench run` first or pass --results-dir")
    text = render(store.records(), fmt, chosen, dataset)
    if not text:
        _fail(f"no records in {str(store.root)!r}" + (f" for dataset {dataset!r}" if dataset else ""))
    click.echo(text)


@cli.command()
@click.argument("key")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--print-only", is_flag=True, help="Print the command instead of running it.")
def rerun(key: str, results_dir: Path | None, print_only: bool) -> None:
    """Re-run the trial of a record (by key) with exactly its recorded settings."""
    from tlbench.store import ResultStore, default_results_dir

    store = ResultStore(results_dir or default_results_dir())
    matches = [p for p in store.root.glob(f"{key}*.json")] if store.root.is_dir() else []
    if len(matches) != 1:
        _fail(f"{'no' if not matches else 'more than one'} record matches key {key!r} in {str(store.root)!r}")
    record = store.read(matches[0].stem)
    if record is None:
        _fail(f"{matches[0]} is not a readable tlbench record")
    args = rerun_arguments(record, store.root)
    if print_only:
        click.echo("tlbench " + " ".join(shlex.quote(a) for a in args))
        return
    ctx = click.get_current_context()
    ctx.invoke(run, **_run_params(args, ctx))


def rerun_arguments(record: dict[str, Any], results_dir: Path) -> list[str]:
    """The `tlbench run` arguments that reproduce a record's trial: every setting is passed explicitly, so a later
    change of defaults cannot change what is re-run."""
    trial = record["trial"]
    args = ["run", "-s", trial["strategy"], "-b", trial["backbone"], "-d", trial["dataset"], "--seed",
            str(trial["seed"]), "--results-dir", str(results_dir), "--force"]
    for key, value in sorted(trial["protocol"].items()):
        args += ["--set", f"{trial['strategy']}.{key}={_as_setting(value)}"]
    for key, value in sorted(trial["hparams"].items()):
        args += ["--set", f"{trial['strategy']}.{key}={_as_setting(value)}"]
    for key, value in sorted(trial["data"].items()):
        args += ["--set", f"data.{key}={_as_setting(value)}"]
    return args


def _as_setting(value: Any) -> str:
    import json

    from tlbench.plan import parse_value

    text = "none" if value is None else json.dumps(value) if not isinstance(value, str) else value
    return text if parse_value(text) == value else json.dumps(value)  # e.g. the string "none" must stay a string


def _run_params(args: list[str], ctx: click.Context) -> dict[str, Any]:
    sub_ctx = run.make_context("run", args[1:], parent=ctx)
    return dict(sub_ctx.params)


def main() -> None:
    cli(prog_name="tlbench")


if __name__ == "__main__":
    main()
