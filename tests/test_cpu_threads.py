"""How tlbench's OpenMP threads wait (issue 28): tlbench sets GOMP_SPINCOUNT before torch loads unless the user
set OMP_WAIT_POLICY or GOMP_SPINCOUNT, every record says what was in effect, and child processes inherit it.

Each check runs in a fresh Python process: libgomp reads its environment once, when torch is imported, and this
test process imported tlbench long ago."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tlbench import cpu_threads

PROBE = r"""
import json, os, sys
for name in sys.argv[1:]:
    __import__(name)
from tlbench.cpu_threads import openmp_record
print(json.dumps({"env": {k: os.environ.get(k) for k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "TLBENCH_OPENMP_SET")},
                  "record": openmp_record()}))
"""


def clean_env(**values: str) -> dict[str, str]:
    """This process's environment without any OpenMP wait setting (nor tlbench's marker), plus ``values``."""
    env = {k: v for k, v in os.environ.items() if k not in (*cpu_threads.WAIT_VARIABLES, cpu_threads.MARKER)}
    return env | values


def probe(env: dict[str, str], *imports: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, *imports], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_tlbench_sets_its_spin_before_torch_loads():
    seen = probe(clean_env(), "tlbench", "torch")
    record = seen["record"]
    busy = record["busy_elsewhere"]
    assert busy["cores"] is not None and busy["usable_cores"] == len(os.sched_getaffinity(0))
    spin = cpu_threads.chosen(busy)["GOMP_SPINCOUNT"]  # the choice follows what tlbench measured as it started
    assert seen["env"]["GOMP_SPINCOUNT"] == spin  # set explicitly, libgomp's default included: children inherit it
    assert seen["env"]["TLBENCH_OPENMP_SET"] == f"GOMP_SPINCOUNT={spin}"
    assert seen["env"]["OMP_WAIT_POLICY"] is None
    assert record["set_by_tlbench"] == record["in_effect"] == {"GOMP_SPINCOUNT": spin}
    assert record["user"] == {} and "libgomp" in record["runtime"]


def test_the_spin_follows_how_busy_the_machine_is():
    assert cpu_threads.chosen({"cores": 0.0}) == {"GOMP_SPINCOUNT": cpu_threads.IDLE_SPINCOUNT}
    assert cpu_threads.chosen({"cores": cpu_threads.SHARED_CORES}) == {"GOMP_SPINCOUNT": cpu_threads.SHARED_SPINCOUNT}
    assert cpu_threads.chosen({"cores": None}) == cpu_threads.chosen(None) == cpu_threads.chosen({"cores": 0.1})
    # idle: libgomp's own default (a shorter idle spin cost tlbench's idle runs speed); busy: far shorter
    assert int(cpu_threads.SHARED_SPINCOUNT) < int(cpu_threads.IDLE_SPINCOUNT) == int(
        cpu_threads.LIBGOMP_DEFAULT_SPINCOUNT) == 300000


def test_one_busy_process_is_seen_and_gets_the_short_spin():
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        record = probe(clean_env(), "tlbench")["record"]
    finally:
        hog.kill()
        hog.wait()
    assert record["busy_elsewhere"]["cores"] >= cpu_threads.SHARED_CORES, record
    assert record["in_effect"] == {"GOMP_SPINCOUNT": cpu_threads.SHARED_SPINCOUNT}


@pytest.mark.parametrize("name, value", [("GOMP_SPINCOUNT", "12345"), ("OMP_WAIT_POLICY", "PASSIVE"),
                                         ("OMP_WAIT_POLICY", "active")])
def test_the_users_own_setting_wins(name, value):
    record_env = probe(clean_env(**{name: value}), "tlbench", "torch")
    assert record_env["env"][name] == value
    if name == "OMP_WAIT_POLICY":  # tlbench's spin count would override the user's policy: it sets nothing
        assert record_env["env"]["GOMP_SPINCOUNT"] is None
    assert record_env["env"]["TLBENCH_OPENMP_SET"] is None
    record = record_env["record"]
    assert record["user"] == {name: value} == record["in_effect"] and record["set_by_tlbench"] == {}
    assert f"{name}={value}" in record["why"]


def test_torch_imported_first_is_recorded_as_not_in_effect():
    """libgomp has read the environment already: the record must not claim tlbench's value is in effect."""
    record = probe(clean_env(), "torch", "tlbench")["record"]
    assert record["set_by_tlbench"] == cpu_threads.chosen(record["busy_elsewhere"])
    assert record["in_effect"] == {"GOMP_SPINCOUNT": "300000 (libgomp's default)"}
    assert "loaded before tlbench was imported" in record["why"]


def test_a_child_keeps_its_parents_choice_and_tells_it_from_the_users():
    spin = cpu_threads.SHARED_SPINCOUNT
    inherited = clean_env(GOMP_SPINCOUNT=spin, TLBENCH_OPENMP_SET=f"GOMP_SPINCOUNT={spin}")
    record = probe(inherited, "tlbench")["record"]
    assert record["user"] == {} and record["set_by_tlbench"] == record["in_effect"] == {"GOMP_SPINCOUNT": spin}
    assert "inherited" in record["why"] and record["busy_elsewhere"] is None  # not measured again
    # the marker names a value the variable no longer has: someone changed it since, so it is the user's
    changed = inherited | {"GOMP_SPINCOUNT": "5"}
    record = probe(changed, "tlbench")["record"]
    assert record["user"] == {"GOMP_SPINCOUNT": "5"} and record["set_by_tlbench"] == {}


def test_without_tlbench_settings_keeps_the_users_values():
    env = {"GOMP_SPINCOUNT": "300", "TLBENCH_OPENMP_SET": "GOMP_SPINCOUNT=300", "OMP_NUM_THREADS": "2", "X": "1"}
    assert cpu_threads.without_tlbench_settings(env) == {"OMP_NUM_THREADS": "2", "X": "1"}
    user = env | {"GOMP_SPINCOUNT": "7"}
    assert cpu_threads.without_tlbench_settings(user) == {"GOMP_SPINCOUNT": "7", "OMP_NUM_THREADS": "2", "X": "1"}


def run_cli(tmp_path: Path, tiny_backbone: str, env: dict[str, str], *extra: str) -> list[dict]:
    results = tmp_path / "results"
    args = [sys.executable, "-m", "tlbench.cli", "run", "-q", "-s", "frozen", "-b", tiny_backbone, "-d",
            "synthetic", "--results-dir", str(results), "--set", "epochs=1", "--set", "data.train_size=64",
            "--save-models", "none", *extra]
    done = subprocess.run(args, capture_output=True, text=True, env=env | {"OMP_NUM_THREADS": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr
    return [json.loads(p.read_text()) for p in results.glob("*.json")]


@pytest.mark.parametrize("executor", ["local", "process"])
def test_every_record_says_what_was_in_effect(tmp_path, tiny_backbone, executor):
    (record,) = run_cli(tmp_path, tiny_backbone, clean_env(), "--executor", executor)
    openmp = record["environment"]["openmp"]
    assert openmp["in_effect"] == openmp["set_by_tlbench"]
    assert openmp["in_effect"]["GOMP_SPINCOUNT"] in (cpu_threads.IDLE_SPINCOUNT, cpu_threads.SHARED_SPINCOUNT)
    assert openmp["user"] == {} and openmp["given"]["OMP_NUM_THREADS"] == "1"
    if executor == "process":  # a child process of the driver: it inherited the driver's choice
        assert record["executor"]["pid"] != os.getpid() and "inherited" in openmp["why"]
        assert openmp["busy_elsewhere"] is None
    else:
        assert openmp["in_effect"] == cpu_threads.chosen(openmp["busy_elsewhere"])


def test_a_process_worker_keeps_the_users_setting(tmp_path, tiny_backbone):
    (record,) = run_cli(tmp_path, tiny_backbone, clean_env(OMP_WAIT_POLICY="PASSIVE"), "--executor", "process")
    openmp = record["environment"]["openmp"]
    assert openmp["user"] == openmp["in_effect"] == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert openmp["set_by_tlbench"] == {}
