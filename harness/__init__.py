"""tlbench: a benchmark harness for vision transfer learning.

A plugin needs only ``from tlbench import hookimpl`` plus the small public types below.
"""
from tlbench.hookspecs import hookimpl
from tlbench.publishing import LeaderboardFormat, LeaderboardTable, ReportContext, ReportSection
from tlbench.types import (LINEAR_DEFAULT_INIT, Backbone, BackboneFamily, DatasetFamily, Executor, ImageSplits,
                           ParamRef, Phase, Preprocessing, Strategy, TrainingContext, TrainPlan, UsageError)

__version__ = "0.2.0"
# Bump when a change alters what a trial measures: it is part of every trial key, so old records are not reused.
#   1: tlbench 0.1 and issues up to 10.
#   2: channels_last=auto means on for the CPU too (it was on for CUDA only): 1.4x faster per step on the 2-core
#      CPU at equal accuracy (README, Speed). A protocol-1 trial on the CPU is a protocol-2 trial with
#      channels_last=false.
PROTOCOL_VERSION = 2

from tlbench.grid import GridResult, run_grid  # noqa: E402  (the library entry point; needs the names above)
from tlbench.tuning import TuneResult, log_grid, tune_grid  # noqa: E402

__all__ = ["run_grid", "GridResult", "tune_grid", "TuneResult", "log_grid", "hookimpl", "LINEAR_DEFAULT_INIT", "Backbone", "BackboneFamily", "DatasetFamily", "Executor", "ImageSplits", "ParamRef", "Phase",
           "Preprocessing", "Strategy", "TrainingContext", "TrainPlan", "UsageError", "__version__",
           "PROTOCOL_VERSION", "LeaderboardFormat", "LeaderboardTable", "ReportContext", "ReportSection"]
