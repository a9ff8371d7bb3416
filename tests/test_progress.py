"""Progress: one line per epoch when the output is not a terminal, a bar on a terminal, nothing with --quiet."""
from __future__ import annotations

import io
import re

from click.testing import CliRunner

from tlbench.cli import cli
from tlbench.progress import EpochLines, progress_factory

LINE = re.compile(r"^synthetic / timm:test_efficientnet@\S+ / partial\S* / seed 0  epoch (\d+)/4  "
                  r"train loss \d+\.\d{4}  val top-1 \d+\.\d%  \d+ img/s  elapsed \d+:\d\d:\d\d$")


def _run(tiny_backbone, tmp_path, fast_settings, *extra):
    result = CliRunner().invoke(cli, ["run", "-s", "partial", "-b", tiny_backbone, "-d", "synthetic",
                                      "--results-dir", str(tmp_path / "r"), *fast_settings, *extra])
    assert result.exit_code == 0, result.output
    return result.stderr


def test_a_log_gets_one_line_per_epoch_with_loss_accuracy_speed_and_elapsed(tiny_backbone, tmp_path,
                                                                           fast_settings):
    lines = [line for line in _run(tiny_backbone, tmp_path, fast_settings).splitlines() if "  epoch " in line]
    assert all(LINE.match(line) for line in lines), lines
    assert [int(LINE.match(line).group(1)) for line in lines] == [1, 2, 3, 4], lines


def test_quiet_prints_no_progress(tiny_backbone, tmp_path, fast_settings):
    assert "  epoch " not in _run(tiny_backbone, tmp_path, fast_settings, "-q")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_and_a_log_gets_lines():
    with progress_factory(False, _Terminal())("trial", 10) as bar:
        bar.update(10)
        assert not hasattr(bar, "epoch")  # the bar shows steps; no epoch lines between its redraws
    log = io.StringIO()
    with progress_factory(False, log)("trial", 10) as lines:
        assert isinstance(lines, EpochLines)
        lines.epoch({"epoch": 2, "epochs": 8, "train_loss": 0.5, "val_top1": 0.75, "images_per_s": 123.4})
    assert log.getvalue().startswith("trial  epoch 2/8  train loss 0.5000  val top-1 75.0%  123 img/s  elapsed 0:00:0")
    with progress_factory(True, log)("trial", 10) as nothing:
        assert nothing is None
