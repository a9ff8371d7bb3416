"""Re-running a record's trial with exactly its recorded settings (``tlbench rerun KEY``): the run that reproduces
it, as a :class:`tlbench.RunSpec`. Every setting is passed explicitly, so a later change of defaults cannot change
what is re-run; a setting whose ``auto`` meant something else under the record's protocol gets the value that ran.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tlbench.devices import pick_device
from tlbench.measure import environment
from tlbench.record_fields import processor_label
from tlbench.records import Record
from tlbench.spec import RunSpec
from tlbench.trainer import resolve_channels_last


def rerun_spec(record: Record, results_dir: Path, save_models: str = "best") -> RunSpec:
    """The run of exactly the record's trial (its strategy, backbone, dataset, seed and every setting), forced, into
    ``results_dir``; ``save_models`` as ``tlbench run`` defaults it."""
    trial = record.trial
    settings: dict[str, Any] = {}
    for key, value in sorted(trial.protocol.items()):
        settings[f"{trial.strategy}.{key}"] = as_it_ran(record, key, value)
    for key, value in sorted(trial.hparams.items()):
        settings[f"{trial.strategy}.{key}"] = value
    for key, value in sorted(trial.data.items()):
        settings[f"data.{key}"] = value
    suite = trial.suite.get("name")  # a suite's trial: that suite's task (its identity includes the suite)
    return RunSpec(strategies=(trial.strategy,), backbones=(trial.backbone,),
                   datasets=(trial.suite["task"] if suite else trial.dataset,), first_seed=trial.seed,
                   settings=settings, results_dir=results_dir, redo="all", save_models=save_models, suite=suite)


def as_it_ran(record: Record, key: str, value: Any) -> Any:
    """A setting whose "auto" meant something else under the record's protocol is replaced by the value that ran:
    protocol 1's channels_last=auto was off on the CPU (the record's runtime section says what ran)."""
    if key == "channels_last" and value == "auto" and record.trial.protocol_version < 2:
        ran = record.runtime.get("channels_last")
        if isinstance(ran, bool):
            return ran
        on_cuda = str(record.runtime.get("device", "cpu")).startswith("cuda")
        return resolve_channels_last(torch.device("cuda" if on_cuda else "cpu"), value, record.trial.protocol_version)
    return value


def other_processor(record: Record) -> str | None:
    """Why a re-run will not reproduce the record's numbers exactly, or None: it was computed on another
    processor (differences of the size of seed noise)."""
    theirs = processor_label(record)
    ours = processor_label({"environment": environment(pick_device(None))})
    if theirs == ours:
        return None
    return (f"record {record.key} was computed on {theirs}, this machine is {ours}: the re-run's numbers will "
            f"differ from the record's (differences of the size of seed noise)")
