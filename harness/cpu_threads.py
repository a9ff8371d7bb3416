"""How tlbench's idle OpenMP threads wait, so that another busy process does not make training collapse.

torch's CPU kernels run on an OpenMP thread team (GNU libgomp in the PyPI wheels). Between two parallel regions an
idle libgomp thread spins ``GOMP_SPINCOUNT`` iterations before it sleeps: 300,000 by default, about 10 ms on the
2-core AMD EPYC this was measured on. On an idle machine that bridges the short gaps between the hundreds of small
kernels of a training step. When another process wants a core too, the spinning thread burns the time slice the
thread it waits for needs: train steps ran 4x slower next to one busy single-threaded process, 10-20x slower
next to another torch process (which spins too). No spinning (``OMP_WAIT_POLICY=PASSIVE``) holds up under that load
but pays a sleep and a wake-up per kernel: two thirds of the idle speed. No single spin count keeps both, so
tlbench looks once, when it is imported, at how busy the machine is: if other processes keep at least
:data:`SHARED_CORES` of its cores busy, idle threads spin :data:`SHARED_SPINCOUNT` iterations (about 10 us), else
:data:`IDLE_SPINCOUNT`, libgomp's own default, set explicitly so that child processes inherit it. (A shorter idle
spin, 5000, kept a bare step loop's idle speed but not tlbench's: on an idle 2-core AMD EPYC its threads slept
483,000 times in a run of eleven strategies, against 6,800 with the default, and the run kept 1.74 of the 2 cores
busy instead of 1.96.) Load that arrives after tlbench started meets the default, as it would a bare PyTorch loop.
Measured by ``benchmarks/test_speed_v3.py``; figures on docs/results.md, the user documentation on
docs/scaling-out.md. The spin count never changes a result: only the thread count does, and tlbench leaves that
alone.

libgomp reads its environment once, when it is loaded (when ``torch`` is imported), so
:func:`set_openmp_defaults` runs first thing in ``tlbench/__init__.py``. A user's own ``OMP_WAIT_POLICY`` or
``GOMP_SPINCOUNT`` always wins: then tlbench sets nothing. Child processes (the ``process`` executor's workers,
DataLoader workers) inherit the choice, so one grid runs with one setting; ``TLBENCH_OPENMP_SET`` tells them it was
tlbench's, not the user's. :func:`openmp_record` is what every record keeps, as ``environment.openmp``.

This module imports nothing but the standard library: importing it must not load torch.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from typing import Any

# libgomp's spin iterations before an idle thread sleeps, when the machine was idle when tlbench started (libgomp's
# own default), and when other processes kept at least SHARED_CORES cores busy.
LIBGOMP_DEFAULT_SPINCOUNT = "300000"
IDLE_SPINCOUNT = LIBGOMP_DEFAULT_SPINCOUNT
SHARED_SPINCOUNT = "300"
SHARED_CORES = 0.5
SAMPLE_S = 0.1  # how long tlbench watches the machine when it is imported
WHY = ("libgomp's default spin (300000 iterations) made train steps 4-20x slower when another process was using a "
       "core as tlbench started; no spin (OMP_WAIT_POLICY=PASSIVE) cost a third of the idle speed, and a short idle "
       "spin (5000) made an idle run's threads sleep and wake 70-120 times as often; so tlbench keeps libgomp's "
       f"default ({IDLE_SPINCOUNT}) when the machine is idle as it starts and spins {SHARED_SPINCOUNT} iterations "
       f"when other processes keep {SHARED_CORES:g} core or more busy (benchmarks/test_speed_v3.py)")
# How OpenMP threads wait: if the user set either, tlbench sets nothing.
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
# Recorded as the process was given them (tlbench never sets these): thread counts, binding, the other runtimes'
# spin knob.
RECORDED_VARIABLES = WAIT_VARIABLES + ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_DYNAMIC", "OMP_PROC_BIND",
                                       "KMP_BLOCKTIME")
MARKER = "TLBENCH_OPENMP_SET"  # "NAME=value,...": what a tlbench process set; its children inherit it
OPENMP_LIBRARIES = ("libgomp", "libiomp5", "libomp")  # GNU, Intel, LLVM

_STATE: dict[str, Any] = {}


def busy_elsewhere(window_s: float = SAMPLE_S) -> dict[str, Any]:
    """How many of this process's usable cores the rest of the machine kept busy over ``window_s`` seconds: the
    non-idle time of those cores in /proc/stat (steal time included: a host taking the core counts) minus this
    process's own CPU time. ``{"cores": None}`` where /proc/stat cannot be read."""
    try:
        usable = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = set(range(os.cpu_count() or 1))

    def busy_jiffies() -> int | None:
        try:
            with open("/proc/stat", encoding="ascii") as stat:
                total = 0
                for line in stat:
                    if line.startswith("cpu") and line[3:4].isdigit():
                        name, *fields = line.split()
                        if int(name[3:]) in usable:
                            values = [int(v) for v in fields[:8]]
                            total += sum(values) - values[3] - values[4]  # minus idle and iowait
                return total
        except (OSError, ValueError):
            return None

    start, own_start, clock = busy_jiffies(), sum(os.times()[:2]), time.perf_counter()
    if start is None:
        return {"cores": None, "usable_cores": len(usable), "window_s": 0.0}
    time.sleep(window_s)
    end, own_end, elapsed = busy_jiffies(), sum(os.times()[:2]), time.perf_counter() - clock
    if end is None:
        return {"cores": None, "usable_cores": len(usable), "window_s": 0.0}
    others = ((end - start) / os.sysconf("SC_CLK_TCK") - (own_end - own_start)) / elapsed
    return {"cores": round(max(0.0, others), 2), "usable_cores": len(usable), "window_s": round(elapsed, 3)}


def chosen(busy: Mapping[str, Any] | None = None) -> dict[str, str]:
    """What tlbench sets when the user set none of :data:`WAIT_VARIABLES`: the short spin where other processes
    kept at least :data:`SHARED_CORES` cores busy as tlbench started (``busy``: from :func:`busy_elsewhere`), else
    the idle one."""
    shared = busy is not None and busy.get("cores") is not None and busy["cores"] >= SHARED_CORES
    return {"GOMP_SPINCOUNT": SHARED_SPINCOUNT if shared else IDLE_SPINCOUNT}


def loaded_openmp() -> str | None:
    """The file name of the OpenMP runtime mapped into this process (it has read its environment), else None."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            names = {line.rsplit("/", 1)[-1].strip() for line in maps if ".so" in line}
    except OSError:  # no /proc (not Linux): torch loads its runtime on import
        return "an OpenMP runtime (torch is imported)" if "torch" in sys.modules else None
    for library in OPENMP_LIBRARIES:
        found = sorted(name for name in names if name.startswith((library + ".", library + "-")))
        if found:
            return found[0]
    return None


def inherited(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """What a tlbench process set and ``env`` (default: this process's environment) still holds unchanged."""
    env = os.environ if env is None else env
    pairs = (item.split("=", 1) for item in env.get(MARKER, "").split(",") if "=" in item)
    return {name: value for name, value in pairs if env.get(name) == value}


def without_tlbench_settings(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) minus what tlbench set in it: the environment of a process tlbench did not
    start (a user's own values stay). For comparisons with plain PyTorch code."""
    env = dict(os.environ if env is None else env)
    for name in inherited(env):
        env.pop(name)
    env.pop(MARKER, None)
    return env


def set_openmp_defaults() -> dict[str, Any]:
    """Choose and set ``GOMP_SPINCOUNT`` in ``os.environ`` unless the user set ``OMP_WAIT_POLICY`` or
    ``GOMP_SPINCOUNT`` or a tlbench parent process already chose; once per process, before torch is imported (it
    is then in effect for this process and every child). Returns what was found and done (for
    :func:`openmp_record`)."""
    if _STATE:
        return _STATE
    from_parent = inherited()
    given = {name: os.environ[name] for name in RECORDED_VARIABLES if name in os.environ}
    user = {name: value for name, value in given.items() if name in WAIT_VARIABLES and name not in from_parent}
    loaded = loaded_openmp()
    busy: dict[str, Any] | None = None
    if user:
        set_here, why = {}, f"the user set {', '.join(f'{k}={v}' for k, v in sorted(user.items()))}"
    elif from_parent:  # one grid, one setting: a worker keeps its driver's choice
        set_here, why = from_parent, f"inherited from the tlbench process that started this one; {WHY}"
    else:
        busy = busy_elsewhere()
        set_here, why = chosen(busy), WHY
        os.environ.update(set_here)
        os.environ[MARKER] = ",".join(f"{k}={v}" for k, v in set_here.items())
    if loaded is None:  # the runtime loads later and reads the environment as it is now
        in_effect = {name: os.environ[name] for name in WAIT_VARIABLES if name in os.environ}
    else:  # it read the environment this process started with
        in_effect = {name: value for name, value in given.items() if name in WAIT_VARIABLES}
        if set_here != in_effect:
            why += (f"; but {loaded} was loaded before tlbench was imported (torch imported first), so this process "
                    "runs with the environment it started with and only its child processes get the setting")
    _STATE.update({"set_by_tlbench": set_here, "user": user, "given": given, "in_effect": in_effect,
                   "busy_elsewhere": busy, "why": why})
    return _STATE


def openmp_record() -> dict[str, Any]:
    """What a record keeps: the OpenMP runtime, the wait settings it runs with, who chose them and why."""
    state = set_openmp_defaults()
    runtime = loaded_openmp()
    why = state["why"]
    if runtime and "libgomp" not in runtime and "GOMP_SPINCOUNT" in state["in_effect"]:
        why += f"; {runtime} does not read GOMP_SPINCOUNT (its knob is KMP_BLOCKTIME)"
    return {
        "runtime": runtime,
        "in_effect": dict(state["in_effect"]) or {"GOMP_SPINCOUNT": f"{LIBGOMP_DEFAULT_SPINCOUNT} (libgomp's default)"},
        "set_by_tlbench": dict(state["set_by_tlbench"]),
        "user": dict(state["user"]),
        "given": dict(state["given"]),
        # cores other processes kept busy while tlbench started (None: not measured, the choice was inherited or
        # the user's)
        "busy_elsewhere": state["busy_elsewhere"],
        "why": why,
    }
