"""Protocol 2: channels_last=auto is on for the CPU as well as CUDA. What ran is recorded, the protocol version is
in every key (a protocol-1 record is never resumed as a protocol-2 trial), and the leaderboard never shows or pairs
a protocol-1 configuration as if it were today's default."""
import hashlib
import json
import pytest
import torch
from click.testing import CliRunner

import tlbench
import tlbench.runner
from tlbench.cli import cli
from tlbench.leaderboard import build_table, leaderboard_rows
from tlbench.records import Record
from tlbench.trainer import resolve_channels_last


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_channels_last_auto_is_on_for_the_cpu_and_cuda_and_explicit_values_win(device):
    assert resolve_channels_last(torch.device(device), "auto") is True
    assert resolve_channels_last(torch.device(device), "auto", protocol_version=2) is True
    assert resolve_channels_last(torch.device(device), "auto", protocol_version=1) is (device == "cuda")
    assert resolve_channels_last(torch.device(device), False) is False
    assert resolve_channels_last(torch.device(device), True) is True


def _run(tmp_path, tiny_backbone, *settings):
    out = tmp_path / "r"
    args = ["run", "-q", "-s", "full", "-b", tiny_backbone, "-d", "synthetic", "--device", "cpu",
            "--set", "epochs=1", "--set", "data.train_size=64", "--results-dir", str(out)]
    for setting in settings:
        args += ["--set", setting]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return {json.loads(p.read_text())["key"]: json.loads(p.read_text()) for p in out.glob("*.json")}


def test_a_cpu_trial_trains_in_channels_last_by_default_and_records_what_ran(tmp_path, tiny_backbone, monkeypatch):
    """The model and the batches it trains on are really in channels_last memory (checked inside the trial), the
    record says so under runtime, and channels_last=false runs contiguous under a different key."""
    seen: list[tuple[bool, bool]] = []
    original = tlbench.runner.run_plan

    def spy(built, *args, **kwargs):
        conv = next(m for m in built.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
        batch = built.prep.train(built.splits.train_images[:2])
        seen.append((conv.weight.is_contiguous(memory_format=torch.channels_last) and
                     not conv.weight.is_contiguous(),
                     batch.is_contiguous(memory_format=torch.channels_last) and not batch.is_contiguous()))
        return original(built, *args, **kwargs)

    monkeypatch.setattr(tlbench.runner, "run_plan", spy)
    (default,) = _run(tmp_path / "a", tiny_backbone).values()
    (contiguous,) = _run(tmp_path / "b", tiny_backbone, "channels_last=false").values()
    assert seen == [(True, True), (False, False)]
    assert default["runtime"]["channels_last"] is True and default["trial"]["protocol"]["channels_last"] == "auto"
    assert contiguous["runtime"]["channels_last"] is False
    assert default["trial"]["protocol_version"] == contiguous["trial"]["protocol_version"] == 2
    assert default["key"] != contiguous["key"]
    for record in (default, contiguous):
        assert record["status"] == "ok"


def _record(strategy: str, seed: int, acc: float, version: int | None) -> Record:
    trial = {"dataset": "d", "backbone": "b", "strategy": strategy, "label": strategy, "seed": seed,
             "group": f"{strategy}-{version}", "key": hashlib.sha256(f"{strategy}-{seed}-{version}".encode()).hexdigest()[:20], "protocol": {}, "hparams": {},
             "data": {}}
    if version is not None:  # records older than the field have none: protocol 1
        trial["protocol_version"] = version
    return Record.from_json_dict({
        "schema": 2, "key": trial["key"], "status": "ok", "trial": trial,
        "metrics": {"test_top1": acc, "val_top1": acc, "best_epoch": 1, "epochs": 1, "time_s": {"total": 1.0}}})


@pytest.mark.parametrize("old_version", [1, None])
def test_older_protocol_rows_are_labelled_and_paired_only_with_their_own_protocol(old_version):
    records = [_record("full", s, 0.80 + 0.01 * s, old_version) for s in range(3)]
    records += [_record("bitfit", s, 0.70 + 0.01 * s, old_version) for s in range(3)]
    records += [_record("full", s, 0.90 + 0.01 * s, 2) for s in range(3)]
    records += [_record("bitfit", s, 0.95 + 0.01 * s, 2) for s in range(3)]
    labels = [row["strategy"] for row in leaderboard_rows(records, columns=("test",))]
    assert sorted(labels) == ["bitfit", "bitfit (protocol 1)", "full", "full (protocol 1)"]
    table = build_table(records, columns=("test",), vs="full")  # two `full`s, one per protocol: no ambiguity
    diffs = {row["strategy"]: row["Δ test vs full (pts, 95% bootstrap)"] for row in table.rows}
    assert diffs["full"] == diffs["full (protocol 1)"] == "reference"
    assert diffs["bitfit"].startswith("+5.0") and diffs["bitfit (protocol 1)"].startswith("-10.0"), diffs


@pytest.mark.parametrize("runtime, expected", [
    ({"device": "cpu", "channels_last": False}, "full.channels_last=false"),
    ({"device": "cuda:0", "channels_last": True}, "full.channels_last=true"),
    ({"device": "cuda"}, "full.channels_last=true"),  # no resolved value recorded: protocol 1's rule for the device
    ({"device": "cpu"}, "full.channels_last=false"),
    ({}, "full.channels_last=false"),
])
def test_rerun_of_a_protocol_1_record_passes_what_ran_not_todays_auto(tmp_path, make_record, runtime, expected):
    """`tlbench rerun` reproduces a record: under protocol 2, channels_last=auto would turn the CPU's contiguous run
    of a protocol-1 record into a channels_last one, so the value that ran is passed instead."""
    import shlex

    old = make_record(key="a" * 20)
    old["trial"].update(protocol={"channels_last": "auto", "epochs": 2}, protocol_version=1)
    old["runtime"] = runtime
    new = make_record(key="b" * 20)
    new["trial"].update(protocol={"channels_last": "auto", "epochs": 2}, protocol_version=2)
    new["runtime"] = {"device": "cpu", "channels_last": True}
    for record in (old, new):
        (tmp_path / f"{record['key']}.json").write_text(json.dumps(record))

    def printed(key: str) -> list[str]:
        result = CliRunner().invoke(cli, ["rerun", key, "--results-dir", str(tmp_path), "--print-only"])
        assert result.exit_code == 0, result.output
        return shlex.split(result.stdout.strip())

    assert expected in printed("a" * 20) and "full.epochs=2" in printed("a" * 20)
    assert "full.channels_last=auto" in printed("b" * 20)  # today's protocol: auto means what it says today
