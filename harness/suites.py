"""Suites as runs: ``tlbench run --suite NAME`` turns a registered :class:`tlbench.Suite` into ordinary trials.

Each task is its dataset with the suite's split protocol as data options (what ``--set data.KEY=VALUE`` sets; the
run's own ``--set`` still wins, and the trial's label then shows what differs from the suite), and its trials carry
``suite`` (name, task, group) in their identity: a suite's trials are its own records, resumed like any grid.
``-d`` with ``--suite`` runs only the named tasks of the suite. ``tlbench leaderboard --suite NAME`` is the view PEFT
papers print for VTAB-1k: per configuration each task's test top-1, each group's mean and the overall means.
"""
from __future__ import annotations

import difflib
from typing import Any, Mapping, Sequence

from tlbench.leaderboard import percent
from tlbench.plan import Trial, build_trials
from tlbench.publishing import LeaderboardTable
from tlbench.record_fields import get
from tlbench.types import Suite, SuiteTask, UsageError


def find_suite(plugins: Any, name: str) -> Suite:
    """The suite registered as ``name``; unknown: one line that lists the suites."""
    registry = plugins.suites
    if name in registry.names():
        return registry.get(name)
    try:  # a name registered twice: the registry says so
        return registry.get(name)
    except UsageError as exc:
        if "registered twice" in str(exc):
            raise
    close = difflib.get_close_matches(name, registry.names(), n=1, cutoff=0.6)
    suggestion = f"did you mean {close[0]!r}? " if close else ""
    raise UsageError(f"unknown suite {name!r}; {suggestion}suites: {', '.join(registry.names()) or 'none'} "
                     f"(see `tlbench list suites`){plugins.failure_hint()}")


def chosen_tasks(suite: Suite, only: Sequence[str] = ()) -> list[SuiteTask]:
    """The suite's tasks, or those ``only`` names (by task name or dataset name, ``-d`` with ``--suite``)."""
    if not only:
        return list(suite.tasks)
    chosen: list[SuiteTask] = []
    for name in only:
        matches = [t for t in suite.tasks if name in (t.name, t.dataset)]
        if not matches:
            raise UsageError(f"-d {name!r} is not a task of suite {suite.name!r}; its tasks: "
                             f"{', '.join(t.name for t in suite.tasks)} (drop -d to run them all)")
        chosen += [t for t in matches if t not in chosen]
    return chosen


def suite_of(suite: Suite, task: SuiteTask) -> dict[str, str]:
    """What a trial of ``task`` records as ``trial.suite``."""
    return {"name": suite.name, "task": task.name, "group": task.group}


def suite_trials(suite: Suite, tasks: Sequence[tuple[SuiteTask, Any]], *, backbones: Sequence[str],
                 strategies: Sequence[tuple[str, Any]], seeds: Sequence[int], overrides: Mapping[str, Any],
                 registered_strategies: Any = ()) -> list[Trial]:
    """The trials of ``tasks`` ((task, dataset family) pairs) with the suite's split protocol under the run's
    ``overrides``; labels show only what differs from the suite's protocol (so a re-run, which sets every option,
    keeps the label)."""
    trials: list[Trial] = []
    for task, family in tasks:
        protocol = {f"data.{key}": value for key, value in task.options.items()}
        try:
            built = build_trials(datasets=[(task.dataset, family)], backbones=backbones, strategies=strategies,
                                 seeds=seeds, overrides={**protocol, **overrides},
                                 registered_strategies=registered_strategies)
        except UsageError as exc:
            raise UsageError(f"suite {suite.name!r}, task {task.name!r}: {exc}") from None
        for trial in built:
            label_overrides = {key: value for key, value in trial.overrides.items()  # the suite's own: unsaid
                               if not (key in protocol
                                       and trial.data_options.get(key[len("data."):]) == protocol[key])}
            trials.append(Trial(trial.dataset, trial.backbone, trial.strategy, trial.seed, trial.protocol,
                                trial.hparams, trial.data_options, label_overrides, suite_of(suite, task)))
    return trials


def describe_protocol(suite: Suite) -> str:
    """The split protocol in a few words: options every task shares once (``train_size=800``), the others per task
    (``test_size: caltech101 6084, sun397 21750, others 0``), as ``tlbench list suites`` shows it."""
    keys = list(dict.fromkeys(key for task in suite.tasks for key in task.options))
    shared, varying = [], []
    for key in keys:
        values = [task.options.get(key, "default") for task in suite.tasks]
        if all(value == values[0] for value in values):
            shared.append(f"{key}={_text(values[0])}")
            continue
        common = max(values, key=values.count)
        cases = [f"{task.name} {_text(value)}" for task, value in zip(suite.tasks, values) if value != common]
        varying.append(f"{key}: {', '.join(cases)}, others {_text(common)}")
    return "; ".join([", ".join(shared)] * bool(shared) + varying) or "the datasets' defaults"


def _text(value: Any) -> str:
    return "none" if value is None else str(value)


def suite_table(records: Any, suite: Suite) -> LeaderboardTable:
    """Per backbone x strategy label: each task's test top-1 (mean over its ok seeds), each group's mean over its
    tasks, the mean over all tasks and the mean of the group means (VTAB-1k papers print one or the other). A group
    or overall mean with a task missing is left empty rather than averaged over fewer tasks."""
    scores: dict[tuple[str, str], dict[str, list[float]]] = {}
    for record in records:
        if get(record, "status") != "ok" or get(record, "trial.suite.name") != suite.name:
            continue
        task, score = get(record, "trial.suite.task"), get(record, "metrics.test_top1")
        if task in {t.name for t in suite.tasks} and score is not None:
            config = (str(get(record, "trial.backbone")), str(get(record, "trial.label")))
            scores.setdefault(config, {}).setdefault(task, []).append(float(score))
    rows, values = [], []
    for (backbone, label), by_task in sorted(scores.items()):
        task_means = {t.name: _mean(by_task[t.name]) if t.name in by_task else None for t in suite.tasks}
        group_means = {g: _mean_or_none([task_means[t.name] for t in suite.tasks if t.group == g])
                       for g in suite.groups}
        overall = _mean_or_none(list(task_means.values()))
        of_groups = _mean_or_none(list(group_means.values()))
        values.append({"backbone": backbone, "strategy": label,
                       "tasks": {name: {"mean": mean, "n": len(by_task.get(name, []))}
                                 for name, mean in task_means.items()},
                       "groups": group_means, "mean_of_tasks": overall, "mean_of_groups": of_groups})
        row = {"backbone": backbone, "strategy": label}
        row |= {name: percent(mean) for name, mean in task_means.items()}
        row |= {f"{group} mean": percent(mean) for group, mean in group_means.items()}
        row |= {"mean (tasks)": percent(overall), "mean (groups)": percent(of_groups)}
        rows.append(row)
    seeds = sorted({n for value in values for task in value["tasks"].values() if (n := task["n"])})
    notes = [f"suite {suite.name}: test top-1 %, each task the mean over its seeds ({'/'.join(map(str, seeds))} "
             f"seed(s)); a group's mean averages its tasks; mean (tasks) over all {len(suite.tasks)} tasks, mean "
             f"(groups) over the {len(suite.groups)} group means; empty where a task has no ok record"]
    return LeaderboardTable(rows, values, notes)


def _mean(scores: Sequence[float]) -> float:
    return sum(scores) / len(scores)


def _mean_or_none(means: Sequence[float | None]) -> float | None:
    return None if not means or any(m is None for m in means) else _mean([m for m in means if m is not None])
