"""Trial grid, --set resolution and validation, stable keys."""
from types import SimpleNamespace

import pytest

from tlbench.plan import PROTOCOL_DEFAULTS, Trial, build_trials, parse_overrides
from tlbench.plugins.strategies import Frozen, Full, Partial
from tlbench.types import UsageError

DATA = SimpleNamespace(name="synthetic", defaults={"train_size": 64, "augment": "none", "image_size": 32})


def grid(overrides=None, seeds=(0,), strategies=(("frozen", Frozen()), ("full", Full()))):
    return build_trials(datasets=[("synthetic", DATA)], backbones=["b1", "b2"], strategies=list(strategies),
                        seeds=list(seeds), overrides=overrides or {})


def test_grid_is_sorted_by_dataset_then_backbone_and_keys_are_stable():
    trials = grid(seeds=(0, 1))
    assert len(trials) == 8
    assert [t.backbone for t in trials] == ["b1"] * 4 + ["b2"] * 4
    assert len({t.key for t in trials}) == 8
    again = grid(seeds=(0, 1))
    assert [t.key for t in trials] == [t.key for t in again]
    same_group = [t for t in trials if t.backbone == "b1" and t.strategy == "full"]
    assert same_group[0].group == same_group[1].group and same_group[0].key != same_group[1].key


def test_overrides_reach_protocol_strategy_and_data_and_change_the_key():
    base = {t.strategy: t for t in grid() if t.backbone == "b1"}
    trials = {t.strategy: t for t in grid(parse_overrides(
        ["epochs=3", "full.lr=3e-4", "frozen.epochs=20", "data.train_size=128"])) if t.backbone == "b1"}
    assert trials["full"].protocol["epochs"] == 3 and trials["frozen"].protocol["epochs"] == 20
    assert trials["full"].hparams["lr"] == 3e-4 and trials["frozen"].hparams == Frozen.defaults
    assert trials["full"].data_options["train_size"] == 128
    assert trials["full"].label == "full[data.train_size=128,epochs=3,lr=0.0003]"
    assert trials["full"].key != base["full"].key
    # setting a value to its default changes nothing: same key, plain label
    same = {t.strategy: t for t in grid(parse_overrides(["full.lr=1e-4"])) if t.backbone == "b1"}
    assert same["full"].key == base["full"].key and same["full"].label == "full"


@pytest.mark.parametrize("setting, message", [
    ("epochs=0", "epochs must be an integer >= 1"),
    ("batch_size=0", "batch_size must be an integer >= 1"),
    ("full.lr=0", "full.lr must be a number > 0"),
    ("frozen.head_lr=-1", "frozen.head_lr must be a number > 0"),
    ("epoch=3", "did you mean 'epochs'"),
    ("full.lrr=3", "did you mean 'lr'"),
    ("fulll.lr=3", "did you mean 'full'"),
    ("data.train_sise=3", "did you mean 'train_size'"),
    ("schedule=linear", "schedule must be one of"),
])
def test_invalid_settings_are_one_line_usage_errors(setting, message):
    with pytest.raises(UsageError, match=message) as info:
        grid(parse_overrides([setting]))
    assert "\n" not in str(info.value)


def test_parse_overrides_types_and_errors():
    assert parse_overrides(["a=3", "b=3e-4", "c=true", "d=none", "e=cosine", "f=[1, 2]"]) == {
        "a": 3, "b": 3e-4, "c": True, "d": None, "e": "cosine", "f": [1, 2]}
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_overrides(["epochs"])


@pytest.mark.parametrize("overrides", [[], ["epochs=3", "partial.lr=3e-4", "partial.batchnorm=train",
                                              "data.augment=flip", "image_size=none"]])
def test_trial_record_carries_everything_needed_to_rerun(overrides):
    """A record is JSON on disk: the trial rebuilt from the parsed JSON alone has the same key, group and label."""
    import json

    trial = grid(parse_overrides(overrides), strategies=(("partial", Partial()),))[0]
    rec = json.loads(json.dumps(trial.to_record()))
    assert rec["key"] == trial.key and rec["seed"] == 0
    assert rec["protocol"] == {**PROTOCOL_DEFAULTS, **trial.protocol} and rec["data"] == dict(trial.data_options)
    rebuilt = Trial(dataset=rec["dataset"], backbone=rec["backbone"], strategy=rec["strategy"], seed=rec["seed"],
                    protocol=rec["protocol"], hparams=rec["hparams"], data_options=rec["data"],
                    overrides=rec["overrides"])
    assert (rebuilt.key, rebuilt.group, rebuilt.label) == (rec["key"], rec["group"], rec["label"])
    # and the same settings given again as --set values (what `tlbench rerun` does) build the same trial
    again = [f"partial.{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in rec["protocol"].items()]
    again += [f"partial.{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in rec["hparams"].items()]
    again += [f"data.{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in rec["data"].items()]
    assert grid(parse_overrides(again), strategies=(("partial", Partial()),))[0].key == rec["key"]


def test_string_settings_keep_the_word_none():
    trial = grid(parse_overrides(["data.augment=none", "image_size=none"]))[0]
    assert trial.data_options["augment"] == "none" and trial.protocol["image_size"] is None


def test_a_setting_that_changes_no_number_keeps_old_keys_at_its_default_and_is_still_recorded():
    base = {k: v for k, v in PROTOCOL_DEFAULTS.items() if k != "prefix_cache_mib"}  # as protocol version 1 had it
    old = Trial("synthetic", "b", "frozen", 0, base, {"head_lr": 1e-3}, {})
    new = Trial("synthetic", "b", "frozen", 0, dict(PROTOCOL_DEFAULTS), {"head_lr": 1e-3}, {})
    assert new.key == old.key and new.group == old.group
    assert new.to_record()["protocol"]["prefix_cache_mib"] == PROTOCOL_DEFAULTS["prefix_cache_mib"]
    off = Trial("synthetic", "b", "frozen", 0, {**PROTOCOL_DEFAULTS, "prefix_cache_mib": 0}, {"head_lr": 1e-3}, {})
    assert off.key != new.key, "a non-default value is part of the key"
