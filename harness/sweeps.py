"""A sweep: what ``tlbench run --tune`` chose for one dataset x backbone x strategy, and the rule it chose by.

Its file format (``Sweep.to_json_dict`` / ``from_json_dict``) is read and written by :class:`tlbench.store.ResultStore`,
which owns the results folder's layout (``<results>/tuning/<sweep key>.json``); ``tlbench.tuning`` runs the sweep.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

SWEEP_SCHEMA = 1
SELECTION_RULE = ("highest mean validation top-1 over the selection seeds (a diverged configuration counts as "
                  "-inf); ties go to the configuration earlier in the search space's order; test top-1 is never "
                  "read to choose")


class SweepError(ValueError):
    """A sweep file that is not valid; readers skip it with one warning line."""


@dataclass
class Candidate:
    """One configuration tried on the selection seeds: its settings, its group, its trial keys, and what
    selection saw (mean validation top-1; None until every selection trial has a record)."""

    config: dict[str, Any]
    group: str
    label: str
    keys: list[str]
    val_top1: float | None = None
    statuses: list[str] = field(default_factory=list)
    epochs: int | None = None  # the epochs it trained for (fewer than the protocol's in a halving rung)
    rung: int = 0  # its successive-halving rung (0 without halving)
    extension: int = 0  # 0: drawn from the space; k: added by the k-th extension of an edge (the edge rule)


@dataclass
class Sweep:
    """The tuning of one dataset × backbone × strategy: the space, the budget, every candidate with its validation
    score, the chosen configuration, and the reporting trials (fresh seeds) whose test top-1 is reported."""

    key: str
    dataset: str
    backbone: str
    strategy: str
    space: dict[str, list[Any]]
    space_source: str
    budget: dict[str, Any]
    sampling: str
    candidates: list[Candidate]
    chosen: int  # index into candidates
    selection_seeds: list[int]
    reporting_seeds: list[int]
    reporting_keys: list[str]
    reporting_group: str
    reporting_label: str
    selection_rule: str = SELECTION_RULE
    created: str = ""
    edges: list[str] = field(default_factory=list)  # the choice still on an edge after the last extension
    extensions: int = 0  # the most extensions the edge rule allowed
    halving: list[list[int]] = field(default_factory=list)  # [configurations, epochs] per rung; [] without
    axes: dict[str, dict[str, Any]] = field(default_factory=dict)  # the ordered axes (Axis.to_json_dict)

    @property
    def chosen_config(self) -> dict[str, Any]:
        return self.candidates[self.chosen].config

    @property
    def configurations(self) -> int:
        """Distinct configurations tried (a configuration in several halving rungs counts once)."""
        return distinct_configurations(self.candidates)

    @property
    def tuning_text(self) -> str:
        values = ", ".join(f"{k}={v}" for k, v in self.chosen_config.items()) or "the defaults"
        extended = sum(1 for c in self.candidates if c.extension)
        how = [f"{extended} by extension" if extended else "", "successive halving" if self.halving else ""]
        shown = f" ({', '.join(h for h in how if h)})" if any(how) else ""
        return f"best of {self.configurations} on val{shown}: {values}"

    @property
    def tuning_settings(self) -> dict[str, str]:
        """What the ``tlbench run --tune`` that ran this sweep was given, as its options name it (two sweeps of one
        strategy are told apart by the entries that differ)."""
        return {"budget": str(self.budget.get("configurations", "?")), "extensions": str(self.extensions),
                "halving": "on" if self.halving else "off",
                "selection seeds": ",".join(map(str, self.selection_seeds)),
                "reporting seeds": ",".join(map(str, self.reporting_seeds))}

    @property
    def edge_text(self) -> str:
        """How the leaderboard and the report mark a choice still on an edge ("" when it is not)."""
        return "; ".join(f"edge: {edge}" for edge in self.edges)

    @property
    def edge_suffix(self) -> str:
        """The edge text as the end of a line that says what was chosen ("; edge: ..."; "" when not on an edge)."""
        return f"; {self.edge_text}" if self.edges else ""

    def to_json_dict(self) -> dict[str, Any]:
        return {"schema": SWEEP_SCHEMA, "kind": "tlbench sweep", "key": self.key, "dataset": self.dataset,
                "backbone": self.backbone, "strategy": self.strategy, "space": self.space,
                "space_source": self.space_source, "budget": self.budget, "sampling": self.sampling,
                "candidates": [vars(c) for c in self.candidates], "chosen": self.chosen,
                "chosen_config": self.chosen_config, "selection_rule": self.selection_rule,
                "selection_seeds": self.selection_seeds, "reporting_seeds": self.reporting_seeds,
                "reporting_keys": self.reporting_keys, "reporting_group": self.reporting_group,
                "reporting_label": self.reporting_label, "created": self.created, "edges": self.edges,
                "extensions": self.extensions, "halving": self.halving, "axes": self.axes}

    @classmethod
    def from_json_dict(cls, raw: Any) -> "Sweep":
        if not isinstance(raw, dict):
            raise SweepError(f"not a JSON object but {type(raw).__name__}")
        if raw.get("kind") != "tlbench sweep":
            raise SweepError("not a tlbench sweep ('kind' is not 'tlbench sweep')")
        if raw.get("schema") != SWEEP_SCHEMA:
            raise SweepError(f"schema {raw.get('schema')!r}, this tlbench reads schema {SWEEP_SCHEMA}")

        def need(name: str, kind: type | tuple[type, ...], source: Mapping[str, Any] = raw) -> Any:
            value = source.get(name)
            if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
                raise SweepError(f"{name!r} is missing or not a {getattr(kind, '__name__', kind)}")
            return value

        candidates = []
        for item in need("candidates", list):
            if not isinstance(item, dict):
                raise SweepError("a candidate is not an object")
            val = item.get("val_top1")
            if val is not None and (not isinstance(val, (int, float)) or isinstance(val, bool)):
                raise SweepError("a candidate's val_top1 is not a number")
            keys = need("keys", list, item)
            if not keys or not all(isinstance(k, str) and k for k in keys):
                raise SweepError("a candidate's keys are not trial keys")
            numbers = [item.get(name, default) for name, default in (("epochs", None), ("rung", 0), ("extension", 0))]
            if not all(n is None or isinstance(n, int) and not isinstance(n, bool) for n in numbers):
                raise SweepError("a candidate's epochs, rung or extension is not an integer")
            candidates.append(Candidate(dict(need("config", dict, item)), need("group", str, item),
                                        need("label", str, item), list(keys), val,
                                        [str(s) for s in item.get("statuses") or []], *numbers))
        chosen = need("chosen", int)
        if not candidates or not 0 <= chosen < len(candidates):
            raise SweepError(f"'chosen' is {chosen}, not one of {len(candidates)} candidates")
        seeds = [need("selection_seeds", list), need("reporting_seeds", list)]
        if not all(isinstance(s, int) and not isinstance(s, bool) for part in seeds for s in part):
            raise SweepError("seeds must be integers")
        if set(seeds[0]) & set(seeds[1]):
            raise SweepError("reporting seeds overlap the selection seeds")
        reporting_keys = need("reporting_keys", list)
        if not all(isinstance(k, str) and k for k in reporting_keys):
            raise SweepError("'reporting_keys' are not trial keys")
        return cls(need("key", str), need("dataset", str), need("backbone", str), need("strategy", str),
                   dict(need("space", dict)), need("space_source", str), dict(need("budget", dict)),
                   need("sampling", str), candidates, chosen, list(seeds[0]), list(seeds[1]),
                   list(reporting_keys), need("reporting_group", str), need("reporting_label", str),
                   need("selection_rule", str), str(raw.get("created", "")),
                   [str(e) for e in raw.get("edges") or []], int(raw.get("extensions") or 0),
                   [list(r) for r in raw.get("halving") or []],
                   {str(k): dict(v) for k, v in (raw.get("axes") or {}).items() if isinstance(v, dict)})


def distinct_configurations(candidates: Sequence[Candidate]) -> int:
    """How many distinct configurations ``candidates`` hold: a configuration that several halving rungs trained
    is one configuration (the count the leaderboard's "best of K" and a sweep's spent budget report)."""
    return len({json.dumps(c.config, sort_keys=True) for c in candidates})


def choose(candidates: Sequence[Candidate]) -> int:
    """The index of the configuration with the highest mean validation top-1 (earliest on ties). Reads only the
    candidates' validation scores: nothing here can see a test score."""
    best, best_val = 0, -math.inf
    for index, candidate in enumerate(candidates):
        val = -math.inf if candidate.val_top1 is None else candidate.val_top1
        if val > best_val:
            best, best_val = index, val
    return best


def validation_score(records: Sequence[Any]) -> tuple[float | None, list[str]]:
    """Mean validation top-1 of one configuration's selection records (a diverged one counts as -inf, so it is
    never chosen over one that trained), and their statuses."""
    statuses = [r.status for r in records]
    if any(r.status == "diverged" for r in records):
        return None, statuses
    values = [r.metrics.val_top1 for r in records]
    return (sum(values) / len(values) if values else None), statuses
