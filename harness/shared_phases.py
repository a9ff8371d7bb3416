"""Work shared across the trials of one run: a training phase whose computation another trial of this worker has
already done is not done again.

Two trials compute exactly the same phase when everything the phase reads is the same: the model's state when
training starts (every parameter and buffer, by value), the random generators' states, the data and its
preprocessing, the resolved protocol, the device and thread count, and each phase up to this one (its optimizer
groups with their learning rates, weight decay and parameters, the trainable parameters, which modules train,
its epochs, its place in the LR schedule, whether it runs on cached features). The key of a phase is a digest
of all of it, chained from the first phase, so a key that matches means the same inputs to the same
deterministic computation: ``wise-ft``'s fine-tuning is ``full``'s, ``lp-ft``'s probe is ``frozen``'s when
their settings agree. What is kept is what the phase leaves behind: the model's weights after it, its own best
validation epoch (weights included), its history and timings, and the generators' states after it; replaying it
gives the reusing trial the state it would have computed (tests/test_shared_phases.py checks the records are
identical to computing it again). The record of a reusing trial says which trial's phase it reused.

Not shared: a phase of a plan with parts this key does not describe (``TrainPlan.unshared_parts``: a loss term,
model surgery, a batch transform, a task loss, a step loss, callbacks, feature or reference layers), a phase on
the frozen-prefix cache, and a phase whose next phase continues its optimizer (the optimizer's moments are not
kept). Entries are per worker process (trials of one run on one worker share them)
and bounded (MAX_MIB of tensors; the least recently used dropped).
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Collection, Hashable, Mapping, Sequence

import torch
from torch import nn

from tlbench.digests import digest_of
from tlbench.trainer import BestEpoch, FitResult

# What a worker keeps, in MiB of tensors: each entry holds the model's state after the phase and at its best epoch
# (about 38 MiB for efficientnet_lite0). A count would be the wrong bound: `run --all` puts one entry per trial
# between full and wise-ft, and four entries let full's be dropped before wise-ft came.
MAX_MIB = 1024
SHARED_PHASES_ENV = "TLBENCH_SHARED_PHASES"  # 0: every trial computes every phase (the record says which ran)


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a state dict by value: names, dtypes, shapes and the bytes of every tensor."""
    digest = hashlib.sha256()
    for name, tensor in state.items():
        value = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def rng_states(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    """The random states a phase consumes: the trial's generator (batch order, augmentation), torch's global
    generator (dropout, drop-path) and, on CUDA, the device's."""
    states = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: Mapping[str, Any], generator: torch.Generator, device: torch.device) -> None:
    generator.set_state(states["generator"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def _rng_digest(states: Mapping[str, Any]) -> str:
    return digest_of({name: hashlib.sha256(state.numpy().tobytes()).hexdigest() for name, state in states.items()})


def start_key(base: str, model: nn.Module, generator: torch.Generator, device: torch.device) -> str:
    """The key before the first phase: the run-level description ``base`` (data, preprocessing, protocol,
    device, threads), the model's state by value and the random states."""
    return digest_of("tlbench shared phase", base, state_digest(model.state_dict()),
                     _rng_digest(rng_states(generator, device)))


def phase_key(previous: str, definition: Mapping[str, Any]) -> str:
    return digest_of(previous, definition)


@dataclass
class SharedPhase:
    """What a phase left behind, enough to continue as if it had been computed here."""

    origin: str  # the trial key that computed it
    label: str  # its phase name there
    end_state: dict[str, torch.Tensor] = field(repr=False)
    best: BestEpoch = field(repr=False)  # the phase's own best validation epoch
    fit: FitResult = field(repr=False)
    record: dict[str, Any] = field(default_factory=dict)
    flops_per_image: float = 0.0
    rng_after: dict[str, Any] = field(default_factory=dict, repr=False)
    # what changed in the model by each epoch's end (trainer.epoch_end_state), for replaying epoch-end callbacks
    # that only read the weights (Callback.reads_epoch_ends_only); None: not kept, or dropped for the budget
    epoch_ends: list[dict[str, torch.Tensor]] | None = field(default=None, repr=False)


class SharedPhases:
    """A worker's phases kept for reuse, by key, within ``max_mib`` of tensors: while over it, the epoch-end
    weights of the least recently used entries go first (only a trial that replays epoch-end callbacks needs
    them), then the least recently used entries."""

    def __init__(self, max_mib: float = MAX_MIB):
        self.max_bytes = max_mib * 1024 * 1024
        self._entries: OrderedDict[str, SharedPhase] = OrderedDict()
        self._sizes: dict[str, int] = {}

    def get(self, key: str, with_epoch_ends: bool = False) -> SharedPhase | None:
        """The entry of ``key``; with ``with_epoch_ends``, only one that still holds its epoch-end weights."""
        entry = self._entries.get(key)
        if entry is None or (with_epoch_ends and entry.epoch_ends is None):
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: SharedPhase) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        self._sizes[key] = _tensor_bytes(entry)
        for name, kept in self._entries.items():  # least recently used first
            if sum(self._sizes.values()) <= self.max_bytes:
                return
            if kept.epoch_ends is not None:
                kept.epoch_ends = None
                self._sizes[name] = _tensor_bytes(kept)
        while len(self._entries) > 1 and sum(self._sizes.values()) > self.max_bytes:
            dropped, _ = self._entries.popitem(last=False)
            del self._sizes[dropped]

    def __len__(self) -> int:
        return len(self._entries)


def _tensor_bytes(entry: SharedPhase) -> int:
    states = (entry.end_state, entry.best.state, *(entry.epoch_ends or ()))
    return sum(t.numel() * t.element_size() for state in states for t in state.values())


def keeps_epoch_ends(trials: Sequence[tuple[Hashable, str]], replaying_groups: Collection[str]) -> list[bool]:
    """For trials in the order they run, each given as (what it shares data and backbone by, its configuration
    group): whether a later trial with the same data and backbone replays epoch-end callbacks (its group is in
    ``replaying_groups``), so that this trial's phases keep their epoch-end weights for it."""
    later: set[Hashable] = set()
    keep = []
    for shares_by, group in reversed(trials):
        keep.append(shares_by in later)
        if group in replaying_groups:
            later.add(shares_by)
    return keep[::-1]


@dataclass
class TrialSharing:
    """One trial's access to its worker's shared phases: ``base`` describes the run-level inputs."""

    store: SharedPhases
    trial_key: str
    base: str
    keep_epoch_ends: bool = False  # keep the phases' epoch-end weights: a later trial replays callbacks on them


def merge_best(best: BestEpoch, phase_best: BestEpoch, selectable: bool) -> None:
    """Offer a phase's own best epoch to the trial's: the same outcome as offering each of its epochs in turn
    (the earliest best wins), since the phase's best is its earliest epoch of highest validation top-1."""
    if selectable and phase_best.evaluation is not None and phase_best.top1 > best.top1:
        best.top1, best.epoch, best.evaluation, best.tag = (phase_best.top1, phase_best.epoch,
                                                             phase_best.evaluation, phase_best.tag)
        best.state = {k: v.clone() for k, v in phase_best.state.items()}
