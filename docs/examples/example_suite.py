"""A suite plugin: few-shot transfer on the two offline datasets, one task at two training-set sizes.

`tlbench run --suite few-shot-offline -s frozen -s full` runs every task; each trial records its suite, task and
group (`trial.suite`), and a second run resumes like any grid.
"""
from tlbench import Suite, SuiteTask, hookimpl

FEW_SHOT = {"train_size": 100, "val_size": 100}  # dataset options: what --set data.KEY=VALUE would set

FEW_SHOT_OFFLINE = Suite(
    name="few-shot-offline",
    description="100 (and 1,000) training images per task on fashion-mnist and digits",
    tasks=[
        SuiteTask("fashion-mnist", "clothing", FEW_SHOT, name="fashion-100"),
        SuiteTask("fashion-mnist", "clothing", {**FEW_SHOT, "train_size": 1000}, name="fashion-1000"),
        SuiteTask("digits", "handwriting", FEW_SHOT),
    ],
    groups=["clothing", "handwriting"],  # the order reports show them in
    notes="digits needs the digits extra",
)


@hookimpl
def register_suites(register):
    register(FEW_SHOT_OFFLINE)
