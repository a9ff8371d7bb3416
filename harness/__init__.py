"""tlbench: a benchmark harness for vision transfer learning.

A plugin needs only ``from tlbench import hookimpl`` plus the small public types below.
"""
from tlbench.hookspecs import hookimpl
from tlbench.jobs import WorkerRefused
from tlbench.publishing import LeaderboardFormat, LeaderboardTable, ReportContext, ReportSection
from tlbench.requirements import Extra
from tlbench.types import (LINEAR_DEFAULT_INIT, Backbone, BackboneFamily, DatasetFamily, Executor, ImageSplits,
                           ParamRef, Phase, Preprocessing, Strategy, TrainingContext, TrainPlan, UsageError)

__version__ = "0.2.0"
# What a trial measures, in every trial key: bumped when that changes, so no old record is reused (docs/protocol.md).
PROTOCOL_VERSION = 2

from tlbench.grid import GridResult, run_grid  # noqa: E402  (the library entry point; needs the names above)
from tlbench.tuning import TuneResult, log_grid, tune_grid  # noqa: E402

__all__ = ["run_grid", "GridResult", "tune_grid", "TuneResult", "log_grid", "hookimpl", "Extra", "LINEAR_DEFAULT_INIT", "Backbone", "BackboneFamily", "DatasetFamily", "Executor", "ImageSplits", "ParamRef", "Phase",
           "Preprocessing", "Strategy", "TrainingContext", "TrainPlan", "UsageError", "__version__",
           "PROTOCOL_VERSION", "LeaderboardFormat", "LeaderboardTable", "ReportContext", "ReportSection",
           "WorkerRefused"]
