"""tlbench: a benchmark harness for vision transfer learning.

A plugin needs only ``from tlbench import hookimpl`` plus the small public types below (the plugin contract:
``tlbench.types``, ``tlbench.hookspecs``, ``tlbench.publishing``); a library caller needs :class:`RunSpec` and
:func:`run_grid` (:class:`TuneSpec` and :func:`tune_grid` for ``--tune``). This module only re-exports: nothing
inside tlbench imports it, so it can sit above every module it names.
"""
# First, before any import loads torch: how OpenMP threads wait is read once, when torch loads (issue 28).
from tlbench.cpu_threads import set_openmp_defaults as _openmp; _openmp()  # noqa: E702, I001
from tlbench.grid import GridResult, run_grid
from tlbench.hookspecs import hookimpl
from tlbench.jobs import WorkerRefused
from tlbench.publishing import LeaderboardFormat, LeaderboardTable, ReportContext, ReportSection
from tlbench.requirements import Extra
from tlbench.search_space import Axis, linear_axis, log_axis, log_grid
from tlbench.spec import RunSpec, TuneSpec
from tlbench.tuning import TuneResult, tune_grid
from tlbench.types import (LINEAR_DEFAULT_INIT, Backbone, BackboneFamily, DatasetFamily, Executor, ImageSplits,
                           ParamRef, Phase, Preprocessing, Strategy, TrainingContext, TrainPlan, UsageError,
                           Callback, StepContext, Suite, SuiteTask)
from tlbench.version import PROTOCOL_VERSION, __version__

__all__ = ["run_grid", "GridResult", "RunSpec", "TuneSpec", "tune_grid", "TuneResult", "log_grid", "log_axis",
           "linear_axis", "Axis", "hookimpl", "Extra", "LINEAR_DEFAULT_INIT", "Backbone", "BackboneFamily",
           "DatasetFamily", "Executor", "ImageSplits",
           "ParamRef", "Phase", "Preprocessing", "Strategy", "TrainingContext", "TrainPlan", "UsageError",
           "__version__", "PROTOCOL_VERSION", "LeaderboardFormat", "LeaderboardTable", "ReportContext",
           "ReportSection", "WorkerRefused", "Callback", "StepContext", "Suite", "SuiteTask"]
