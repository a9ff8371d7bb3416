"""The whole plugin contract of tlbench, in one place.

A plugin is a module (or object) with functions decorated by ``@tlbench.hookimpl`` whose names and argument names
match the specifications below. Built-in plugins (``tlbench.plugins.*``) use exactly these hooks; third-party
plugins are found through the ``tlbench`` entry-point group. Every hook is called once per plugin (none is
``firstresult``); the return values are ignored: plugins hand their objects to ``register``, which validates the
type and the uniqueness of the name. ``record_finished`` is the one hook that receives data instead of a
``register`` callback.

Any registered object may declare ``requires = {"<module>": <install hint>}`` (a :class:`tlbench.Extra` or a
string) for optional packages it imports: where one is missing the object is listed as unavailable, ``run --all``
leaves such a strategy out with the hint, and naming it stops with the hint (:mod:`tlbench.requirements`).
"""
from __future__ import annotations

from typing import Callable

import click
import pluggy

PROJECT_NAME = "tlbench"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_strategies(register: Callable) -> None:
    """Register transfer strategies.

    Call ``register(strategy)`` once per strategy, with a :class:`tlbench.Strategy` subclass or instance. Its
    ``name`` must be unique across all plugins. Not firstresult; the return value is ignored.

    A strategy's ``plan(group_names, hparams)`` returns a :class:`tlbench.TrainPlan`: learning rates per group and a
    BatchNorm policy, optionally narrowed to some parameters (``select``, over :class:`tlbench.ParamRef`), split
    into ordered :class:`tlbench.Phase` s, with a ``surgery`` before training, a ``loss_term`` and an
    ``after_training`` step (both over :class:`tlbench.TrainingContext`), and what it does to each batch: a
    ``batch_transform``, a ``task_loss``, a ``step_loss`` over :class:`tlbench.StepContext`, ``callbacks``
    (:class:`tlbench.Callback`) and a per-parameter ``lr_scale``. ``validate(hparams, protocol)`` rejects
    impossible settings before anything runs. Each part is documented on its type in ``tlbench.types``.
    """


@hookspec
def register_backbones(register: Callable) -> None:
    """Register backbone families.

    Call ``register(family)`` with an object satisfying :class:`tlbench.BackboneFamily`: a ``name`` (``timm``
    resolves ``timm:<model>``; a family with ``takes_argument = False`` is one backbone), a ``description`` and
    ``build(argument, num_classes, pretrained) -> tlbench.Backbone``. Names must be unique. Not firstresult.
    """


@hookspec
def register_datasets(register: Callable) -> None:
    """Register dataset families.

    Call ``register(family)`` with an object satisfying :class:`tlbench.DatasetFamily`: ``name``, ``description``,
    ``takes_argument``, ``defaults``, ``fingerprint(argument, options) -> str`` and
    ``load(argument, options) -> tlbench.ImageSplits``. Names must be unique. Not firstresult.
    """


@hookspec
def register_executors(register: Callable) -> None:
    """Register executors (``local``, ``process``, ``ray`` and ``slurm`` are built in).

    Call ``register(executor)`` with an object satisfying :class:`tlbench.Executor`: ``name``, ``description`` and
    ``execute(jobs, session)``; optionally ``options`` (defaults of its ``--set executor.KEY=VALUE`` settings) and
    ``check_options(options)``. Jobs are plain data (:class:`tlbench.jobs.TrialJob`) run anywhere by
    :func:`tlbench.jobs.run_job`; only the driver, through ``session``, claims trials and writes records. Names must
    be unique. Not firstresult.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the ``tlbench`` command line: ``cli.add_command(my_command)``. Not firstresult."""


@hookspec
def register_leaderboard_formats(register: Callable) -> None:
    """Register leaderboard formats (``tlbench leaderboard --format NAME``; the built-in ones use this hook too).

    Call ``register(fmt)`` with a :class:`tlbench.LeaderboardFormat`: ``name``, ``description`` and
    ``render(table) -> str`` over a :class:`tlbench.LeaderboardTable` (display rows, machine values, notes).
    Names must be unique. Not firstresult.
    """


@hookspec
def register_report_sections(register: Callable) -> None:
    """Register sections of the HTML report (``tlbench report``; the built-in sections use this hook too).

    Call ``register(section)`` with a :class:`tlbench.ReportSection`: ``name``, ``title``, ``order`` and
    ``render(context) -> str``, an HTML fragment for one dataset over a :class:`tlbench.ReportContext`
    ("" leaves the section out). The report must stay self-contained: embed images (``context.figure``), link
    nothing remote. Names must be unique. Not firstresult.
    """


@hookspec
def register_suites(register: Callable) -> None:
    """Register suites: named sets of tasks run as one study (``tlbench run --suite NAME``; ``vtab-1k`` and
    ``offline-small`` are built in and use this hook too).

    Call ``register(suite)`` with a :class:`tlbench.Suite`: ``name``, ``description``, ``tasks`` (each a
    :class:`tlbench.SuiteTask`: a dataset name, its group and its split protocol as dataset options), ``groups`` in
    report order and ``notes`` (what it leaves out and why). The datasets are resolved when the suite runs, so a
    suite may name datasets of other plugins. Names must be unique. Not firstresult.
    """


@hookspec
def record_finished(record: dict) -> None:
    """Called with each record the driver has just written (ok, failed or diverged), e.g. to log it to MLflow or
    Weights & Biases. ``record`` is a copy in the JSON layout of the result files. A plugin that raises is reported
    in one warning line; the record stays written and the grid goes on. Not firstresult; return value ignored.
    """
