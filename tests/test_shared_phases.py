"""Work shared across the trials of one run (issue 28): a phase another trial of the worker computed exactly is
reused, recorded, and the reusing trial's record is identical to computing it again; anything that could make
the computation differ (other settings, a loss term, surgery, a continuing optimizer) prevents the reuse."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import synthetic_grid

from tlbench import Callback, Phase, Strategy, TrainPlan
from tlbench.registry import Plugins
from tlbench.shared_phases import (SHARED_PHASES_ENV, SharedPhase, SharedPhases, keeps_epoch_ends, merge_best,
                                   state_digest)
from tlbench.trainer import BestEpoch, Evaluation

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SETTINGS = ["epochs=2", "data.train_size=64", "data.val_size=32", "data.test_size=32", "batch_size=16",
            "full.lr=0.01", "wise-ft.lr=0.01", "frozen.head_lr=0.03", "lp-ft.probe_lr=0.03", "lp-ft.lr=0.01"]
COMPARED = ("val_top1", "test_top1", "best_epoch", "best_epoch_val_top1", "epochs", "steps", "history",
            "train_gflops_total", "feature_cache")


def grid(results: Path, backbone: str, strategies, settings=(), plugins=None):
    return synthetic_grid(results, backbone, strategies, [*SETTINGS, *settings], plugins)


def same_results(a, b):
    return {k: a.metrics.to_json_dict().get(k) for k in COMPARED} == {k: b.metrics.to_json_dict().get(k)
                                                                         for k in COMPARED}


def shared(record):
    return [phase.get("shared_from") for phase in record.plan["phases"]]


@pytest.mark.parametrize("origin, reuser", [("full", "wise-ft"), ("frozen", "lp-ft")])
def test_a_phase_another_trial_computed_is_reused_and_the_record_is_identical(tmp_path, tiny_backbone, origin,
                                                                              reuser, monkeypatch):
    """The same grid twice, sharing on and off: the reusing trial's results are identical to computing it."""
    together = grid(tmp_path / "shared", tiny_backbone, [origin, reuser])
    monkeypatch.setenv(SHARED_PHASES_ENV, "0")
    computed = grid(tmp_path / "computed", tiny_backbone, [origin, reuser])
    assert shared(together[reuser])[0] == {"trial": together[origin].key, "phase": "1"}
    assert all(s is None for s in shared(computed[reuser]) + shared(together[origin]))
    for strategy in (origin, reuser):
        assert together[strategy].key == computed[strategy].key
        a, b = ({k: r.metrics.to_json_dict().get(k) for k in COMPARED} for r in (together[strategy],
                                                                                    computed[strategy]))
        assert a == b, {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    assert together[reuser].metrics.time_s["shared"] > 0 and computed[reuser].metrics.time_s.get("shared") is None
    assert together[reuser].runtime["shared_phases"] is True and computed[reuser].runtime["shared_phases"] is False


def test_the_phase_after_a_reused_probe_trains_from_the_probes_weights(tmp_path, tiny_backbone):
    """lp-ft's fine-tune phase after a reused probe: the same history as lp-ft alone, which computes its probe."""
    together = grid(tmp_path / "t", tiny_backbone, ["frozen", "lp-ft"])["lp-ft"]
    alone = grid(tmp_path / "a", tiny_backbone, ["lp-ft"])["lp-ft"]
    assert shared(together)[0] is not None and shared(alone) == [None, None]
    assert [h["phase"] for h in together.metrics.history] == ["probe", "probe", "fine-tune", "fine-tune"]
    assert together.metrics.history == alone.metrics.history
    assert (together.metrics.val_top1, together.metrics.test_top1) == (alone.metrics.val_top1, alone.metrics.test_top1)


def test_other_settings_are_not_shared(tmp_path, tiny_backbone):
    records = grid(tmp_path / "r", tiny_backbone, ["full", "wise-ft"], settings=["wise-ft.lr=0.003"])
    assert shared(records["wise-ft"]) == [None]


class FullWithLossTerm(Strategy):
    """``full``'s plan plus a loss term that is zero: the same numbers, but its computation reads the loss term,
    which a phase key does not describe, so it must never share."""

    name = "full-zero-term"
    description = "test only"
    defaults = {"lr": 0.01, "batchnorm": "frozen"}

    def plan(self, group_names, hparams):
        return TrainPlan({g: hparams["lr"] for g in group_names}, hparams["batchnorm"],
                         loss_term=lambda context: torch.zeros(()))


class TwoPhasesContinuing(Strategy):
    """The head alone, then everything with the optimizer continued: a shared first phase would lack the
    optimizer's moments the second phase continues from."""

    name = "head-then-all"
    description = "test only"
    defaults = {"lr": 0.03, "lr2": 0.01}

    def plan(self, group_names, hparams):
        return TrainPlan(phases=[Phase({"head": hparams["lr"]}, "frozen", 2),
                                 Phase({g: hparams["lr2"] for g in group_names}, "frozen", 1, restart=False)])


class TwoPhasesContinuingOther(TwoPhasesContinuing):
    """The same first phase (and schedule span) as head-then-all; another learning rate after it."""

    name = "head-then-all-other"
    defaults = {"lr": 0.03, "lr2": 0.003}


def plugins_with(*strategies) -> Plugins:
    plugins = Plugins(load_third_party=False)
    plugins.strategies.current_plugin = "test_shared_phases"
    for strategy in strategies:
        plugins.strategies.register(strategy)
    return plugins


def test_a_plan_with_a_loss_term_never_shares(tmp_path, tiny_backbone):
    records = grid(tmp_path / "r", tiny_backbone, ["full", "full-zero-term"], ["full-zero-term.lr=0.01"],
                   plugins=plugins_with(FullWithLossTerm))
    assert shared(records["full-zero-term"]) == [None]


def test_a_phase_whose_optimizer_continues_is_not_reused(tmp_path, tiny_backbone, monkeypatch):
    """head-then-all computes exactly head-then-all-other's first phase (the same key), but the second phase
    continues that phase's optimizer, whose moments a shared phase does not keep: it is computed again, and the
    trial is identical to a run that shares nothing."""
    plugins = plugins_with(TwoPhasesContinuing, TwoPhasesContinuingOther)
    names = ["head-then-all", "head-then-all-other"]
    together = grid(tmp_path / "t", tiny_backbone, names, ["epochs=2"], plugins=plugins)
    monkeypatch.setenv(SHARED_PHASES_ENV, "0")
    computed = grid(tmp_path / "c", tiny_backbone, names, ["epochs=2"], plugins=plugins)
    first = [r.metrics.history[:2] for r in (together["head-then-all"], together["head-then-all-other"])]
    assert first[0] == first[1]  # the first phases compute the same thing
    assert shared(together["head-then-all-other"]) == [None, None]
    assert same_results(together["head-then-all-other"], computed["head-then-all-other"])


def test_state_digest_is_by_value():
    state = {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(3)}
    same = {"w": torch.arange(6.0).reshape(2, 3).clone(), "n": torch.tensor(3)}
    assert state_digest(state) == state_digest(same)
    for changed in ({**state, "w": state["w"] + 1e-7}, {**state, "n": torch.tensor(4)},
                    {**state, "w": state["w"].double()}, {**state, "w": state["w"].reshape(3, 2)},
                    {"v": state["w"], "n": state["n"]}):
        assert state_digest(changed) != state_digest(state)


@pytest.mark.parametrize("earlier, epochs, selectable", [
    ([], [0.5, 0.7, 0.7, 0.6], True), ([0.8], [0.5, 0.9, 0.9], True), ([0.9], [0.5, 0.9], True),
    ([0.4], [0.5, 0.9], False)])
def test_merging_a_phases_best_equals_offering_its_epochs_one_by_one(earlier, epochs, selectable):
    module = torch.nn.Linear(1, 1)

    def evaluation(top1):
        return Evaluation(top1=top1, top5=None, images=10, seconds=0.0, images_per_s=None)

    one_by_one, merged, phase = BestEpoch(), BestEpoch(), BestEpoch()
    for epoch, top1 in enumerate(earlier, 1):
        for best in (one_by_one, merged):
            best.offer(epoch, evaluation(top1), module, "earlier")
    for epoch, top1 in enumerate(epochs, len(earlier) + 1):
        with torch.no_grad():
            module.weight.fill_(epoch)
        if selectable:
            one_by_one.offer(epoch, evaluation(top1), module, "phase")
        phase.offer(epoch, evaluation(top1), module, "phase")
    merge_best(merged, phase, selectable)
    assert (merged.top1, merged.epoch, merged.tag) == (one_by_one.top1, one_by_one.epoch, one_by_one.tag)
    assert torch.equal(merged.state["weight"], one_by_one.state["weight"])


def test_the_store_keeps_the_most_recently_used_entries_within_its_budget():
    def entry(mib):
        tensor = torch.zeros(int(mib * 1024 * 1024 / 4))
        best = BestEpoch()
        best.state = {"w": tensor}
        return SharedPhase("origin", "1", {"w": tensor}, best, fit=None)  # 2 x mib MiB of tensors

    store = SharedPhases(max_mib=5)
    store.put("a", entry(1))
    store.put("b", entry(1))
    assert store.get("a") is not None  # now "b" is the least recently used
    store.put("c", entry(1))  # 6 MiB: over the budget of 5, so "b" goes
    assert store.get("b") is None and store.get("a") is not None and store.get("c") is not None and len(store) == 2
    store.put("d", entry(10))  # alone over the budget: kept, every other entry dropped
    assert len(store) == 1 and store.get("d") is not None


def test_a_run_all_sized_gap_between_full_and_wise_ft_keeps_fulls_phase(tmp_path, tiny_backbone):
    """`run --all` runs a dozen strategies between full and wise-ft (alphabetical): full's phase must survive."""
    between = ["l2-sp", "llrd", "lp-ft", "partial", "scratch", "bitfit", "discriminative-lr"]
    records = grid(tmp_path / "r", tiny_backbone, ["full", *between, "wise-ft"],
                   ["l2-sp.lr=0.01", "llrd.lr=0.01", "partial.lr=0.01", "scratch.lr=0.01", "bitfit.lr=0.01"])
    assert shared(records["wise-ft"])[0] == {"trial": records["full"].key, "phase": "1"}


class EpochEndReader(Callback):
    """Reads the weights as each epoch ends, and changes nothing: what it saw must not depend on sharing."""

    reads_epoch_ends_only = True
    seen: list = []

    def on_epoch_end(self, ctx, epoch):
        EpochEndReader.seen.append((epoch, ctx.step, ctx.model.training, state_digest(ctx.model.state_dict())))


class FullWithReader(Strategy):
    name = "full-reader"
    description = "test only"
    defaults = {"lr": 0.01, "batchnorm": "frozen"}

    def plan(self, group_names, hparams):
        return TrainPlan({g: hparams["lr"] for g in group_names}, hparams["batchnorm"], callbacks=(EpochEndReader(),))


def test_a_callback_reading_epoch_ends_sees_the_same_weights_when_its_phase_is_reused(tmp_path, tiny_backbone,
                                                                                       monkeypatch):
    """full, then full with a read-only epoch-end callback: the second reuses full's phase, and its callback is
    replayed on full's weights at each epoch end, seeing what it sees when the phase is computed (epoch, step,
    mode and every tensor by value)."""
    plugins = plugins_with(FullWithReader)
    EpochEndReader.seen = []
    together = grid(tmp_path / "t", tiny_backbone, ["full", "full-reader"], ["epochs=3"], plugins=plugins)
    replayed = EpochEndReader.seen
    EpochEndReader.seen = []
    monkeypatch.setenv(SHARED_PHASES_ENV, "0")
    computed = grid(tmp_path / "c", tiny_backbone, ["full", "full-reader"], ["epochs=3"], plugins=plugins)
    assert shared(together["full-reader"]) == [{"trial": together["full"].key, "phase": "1",
                                                "epoch_ends_replayed": 3}]
    assert [s[:3] for s in replayed] == [(1, 4, True), (2, 8, True), (3, 12, True)]
    assert replayed == EpochEndReader.seen
    assert same_results(together["full-reader"], computed["full-reader"])


def test_swa_reuses_fulls_fine_tuning_and_averages_the_same_weights(tmp_path, tiny_backbone, monkeypatch):
    settings = ["epochs=4", "swa.lr=0.01"]
    together = grid(tmp_path / "t", tiny_backbone, ["full", "swa"], settings)
    monkeypatch.setenv(SHARED_PHASES_ENV, "0")
    computed = grid(tmp_path / "c", tiny_backbone, ["full", "swa"], settings)
    assert shared(together["swa"]) == [{"trial": together["full"].key, "phase": "1", "epoch_ends_replayed": 4}]
    assert shared(computed["swa"]) == [None]
    assert same_results(together["swa"], computed["swa"])
    averaged = [r.plan["after_training"] for r in (together["swa"], computed["swa"])]
    assert averaged[0] == averaged[1] and averaged[0]["averaged"] == 2  # epochs 3 and 4 (start 0.5 x 4 epochs)


def test_an_ema_or_a_callback_that_writes_never_shares(tmp_path, tiny_backbone):
    """The EMA reads the weights at every step; a callback that does not say it only reads may change anything."""
    records = grid(tmp_path / "r", tiny_backbone, ["full", "swa"], ["swa.lr=0.01", "swa.average=ema"])
    assert shared(records["swa"]) == [None]


def test_a_phase_keeps_its_epoch_ends_only_when_a_later_trial_replays_them(tmp_path, tiny_backbone, monkeypatch):
    """Epoch-end weights cost memory (and the trial's measured peak would count them): a trial keeps them only
    when a later trial of the run, on the same data and backbone, replays epoch-end callbacks."""
    import tlbench.grid

    kept = []
    real = tlbench.grid.keeps_epoch_ends

    def spy(trials, groups):
        kept.append(real(trials, groups))
        return kept[-1]

    put = SharedPhases.put
    stored = []

    def put_spy(self, key, entry):
        stored.append((entry.origin, entry.epoch_ends is not None))
        put(self, key, entry)

    monkeypatch.setattr(tlbench.grid, "keeps_epoch_ends", spy)
    monkeypatch.setattr(SharedPhases, "put", put_spy)
    alone = grid(tmp_path / "a", tiny_backbone, ["full"], [])
    assert kept == [[False]] and stored == [(alone["full"].key, False)]
    stored.clear()
    together = grid(tmp_path / "b", tiny_backbone, ["full", "swa", "wise-ft"], ["swa.lr=0.01"])
    assert kept[1] == [True, False, False] and stored == [(together["full"].key, True)]


def test_keeping_epoch_ends_looks_at_later_trials_with_the_same_data_and_backbone():
    trials = [("data-a", "full"), ("data-b", "full"), ("data-a", "swa"), ("data-a", "full-2"), ("data-b", "x")]
    assert keeps_epoch_ends(trials, {"swa"}) == [True, False, False, False, False]
    assert keeps_epoch_ends(trials, set()) == [False] * 5
    assert keeps_epoch_ends([("d", "swa"), ("d", "swa-2")], {"swa", "swa-2"}) == [True, False]


def test_the_store_drops_epoch_ends_before_entries():
    def entry(mib, epoch_ends):
        tensor = torch.zeros(int(mib * 1024 * 1024 / 4))
        best = BestEpoch()
        best.state = {"w": tensor}
        return SharedPhase("origin", "1", {"w": tensor}, best, fit=None, epoch_ends=[{"w": tensor}] * epoch_ends)

    store = SharedPhases(max_mib=7)
    store.put("a", entry(1, 2))  # 4 MiB
    store.put("b", entry(1, 2))  # 8 MiB: a's epoch ends go, a stays
    assert store.get("a") is not None and store.get("a", with_epoch_ends=True) is None
    assert store.get("b", with_epoch_ends=True) is not None and len(store) == 2
