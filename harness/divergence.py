"""When a trial with a finite loss has diverged: the rule the trainer applies after every epoch, in one place.
(A NaN or infinite loss is divergence too; the trainer stops on it before evaluating.)

A classifier that outputs the uniform distribution over C classes has a cross-entropy of ln C. The rule: the
epoch-mean task loss (a strategy's loss term not counted: it may be large by design) is above 100 x ln C, AND no
epoch of the phase so far has scored above chance level on validation (1/C plus three binomial standard deviations
for the validation split's size). Either alone can happen in a run that learns: the test suite's deliberately high
learning rates on a tiny random backbone spike to 50 x ln 4 for an epoch and recover, and the first epochs of a
slow run sit at chance. Together they mean the weights blew up before anything was learnt: a full fine-tune at
lr 10 scores 734.9 nats (530 x ln 4) in its first epoch at chance, and goes on to 25,872 (docs/cli.md).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

LOSS_FACTOR = 100.0  # above this multiple of ln(num_classes), the loss of a uniform guess...
CHANCE_SIGMAS = 3.0  # ...while validation top-1 never rose this many binomial sigmas above 1/C


def chance_level(num_classes: int, val_size: int) -> float:
    """Validation top-1 that guessing reaches with ~99.9% probability: 1/C + 3 binomial standard deviations."""
    p = 1.0 / max(num_classes, 2)
    return p + CHANCE_SIGMAS * math.sqrt(p * (1 - p) / max(val_size, 1))


def finite_divergence(history: Sequence[Mapping[str, Any]], num_classes: int, val_size: int) -> str | None:
    """Why the phase whose per-epoch ``history`` (``train_loss``, optional ``loss_term``, ``val_top1``) is given
    has diverged, or None."""
    if not history:
        return None
    last = history[-1]
    task_loss = last["train_loss"] - (last.get("loss_term") or 0.0)
    limit = LOSS_FACTOR * math.log(max(num_classes, 2))
    chance = chance_level(num_classes, val_size)
    best = max(entry["val_top1"] for entry in history)
    if task_loss > limit and best <= chance:
        return (f"training loss {task_loss:.4g} in epoch {last['epoch']} is above {LOSS_FACTOR:g} x ln({num_classes}) "
                f"= {limit:.3g} with validation top-1 at chance level (best {100 * best:.1f}% <= {100 * chance:.1f}%); "
                f"lower the learning rate")
    return None
