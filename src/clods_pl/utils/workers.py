"""Independent jobs (stage-3 models, groups of stage-2 batches, the novel-view fits, generated trajectories) in worker
processes.

On a CPU machine one process per core beats several threads in one process: the kernels here are small, and two
torch threads share too little work per op (BENCHMARKS.md). ``run_jobs`` runs ``fn`` over the jobs in ``workers``
spawned processes, each with its own torch/Numba threads, and returns the results in job order; one worker runs
them in this process, in order. Each job must set its own seed: then the result does not depend on the number of
workers, and ``workers`` is not a result setting.

The number: ``--workers`` when given, else ``CLODS_PL_WORKERS``, else the cores not busy right now (at most one per
job), so a busy machine runs the jobs in turn as before.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from clods_pl.errors import ClodsError, Interrupted

J = TypeVar("J")
R = TypeVar("R")
WORKERS_ENV = "CLODS_PL_WORKERS"


@dataclass(frozen=True)
class WorkerPlan:
    """How a stage runs its jobs: ``workers`` processes of ``threads`` torch threads each, and why."""

    workers: int
    threads: int
    why: str

    def describe(self, what: str, jobs: str) -> str:
        """One line for the console, e.g. ``stage 3: 2 models in 2 worker processes, 1 thread each (...)``."""
        hint = "" if self.why == "--workers" else "; --workers N to change"
        if self.workers <= 1:
            return f"[clods-pl] {what}: {jobs} in this process, one after another ({self.why}{hint})"
        return (
            f"[clods-pl] {what}: {jobs} in {self.workers} worker processes, {self.threads} thread"
            f"{'s' if self.threads > 1 else ''} each ({self.why}{hint})"
        )


def busy_cores(interval: float = 0.3) -> float | None:
    """Cores busy right now (over ``interval`` s) among those this process may use, from ``/proc/stat``; None where
    there is no ``/proc/stat``. Not the load average: a pipeline's own last stage keeps that near 1 for a minute
    after it ends, which would make every stage after the first run its jobs in turn."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None

    def sample() -> dict[str, tuple[int, int]] | None:
        try:
            lines = Path("/proc/stat").read_text().splitlines()
        except OSError:
            return None
        out = {}
        for line in lines:
            name, *fields = line.split()
            if name.startswith("cpu") and name != "cpu":
                ticks = [int(f) for f in fields[:8]]
                out[name] = (sum(ticks), ticks[3] + ticks[4])  # (total, idle + iowait)
        return out

    first = sample()
    if not first:
        return None
    time.sleep(interval)
    second = sample() or {}
    names = [f"cpu{c}" for c in cpus] if cpus is not None else list(first)
    busy = 0.0
    for name in names:
        if name in first and name in second:
            total = second[name][0] - first[name][0]
            idle = second[name][1] - first[name][1]
            busy += (total - idle) / total if total > 0 else 0.0
    return busy


def free_cores() -> tuple[int, str]:
    """(cores not busy right now, >= 1; how that was found): :func:`busy_cores`, else the 1-minute load average."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = busy_cores()
    if busy is not None:
        return max(1, int(cores - busy + 0.5)), f"{cores} cores, {busy:.1f} busy"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, int(cores - load + 0.5)), f"{cores} cores, load {load:.1f}"


def plan_workers(
    setting: int | None, jobs: int, threads: int, env: str | None = None, free: tuple[int, str] | None = None
) -> WorkerPlan:
    """Workers for ``jobs`` independent jobs: ``setting`` (``--workers``), else ``env`` (``CLODS_PL_WORKERS``), else
    the free cores; never more than the jobs. ``threads``: this process's torch threads, shared among the workers
    (at least one each)."""
    if setting is not None:
        if setting < 1:
            raise ClodsError(f"--workers={setting}; it must be >= 1 (1 runs every job in this process)")
        n, why = setting, "--workers"
    elif env:
        try:
            n, why = int(env), f"{WORKERS_ENV}={env}"
        except ValueError:
            raise ClodsError(f"{WORKERS_ENV}={env!r} is not a whole number; set it to e.g. 2, or unset it") from None
        if n < 1:
            raise ClodsError(f"{WORKERS_ENV}={env}; it must be >= 1 (1 runs every job in this process)")
    else:
        n, why = free if free is not None else free_cores()
    n = max(1, min(n, jobs))
    return WorkerPlan(n, max(1, threads // n) if n > 1 else threads, why)


def check_workers(setting: int | None, env: str | None = None) -> None:
    """``--workers`` and ``CLODS_PL_WORKERS`` checked when a command starts (one line naming the bad one), not when
    the first stage with jobs to share reaches them."""
    plan_workers(setting, 1, 1, os.environ.get(WORKERS_ENV) if env is None else env, free=(1, ""))


def stage_workers(ctx: Any, stage: str, jobs: int) -> WorkerPlan:
    """:func:`plan_workers` for ``stage`` of a run (``ctx``: a StageContext): one process unless the stage trains on
    one CPU device (several GPUs or processes are Lightning's business, not ours)."""
    import torch  # noqa: PLC0415  (this module loads without torch: the CLI's --help)

    trainer = ctx.section(f"{stage}.trainer")
    accelerator = str(trainer.get("accelerator", "auto"))
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    devices = trainer.get("devices", "auto")
    threads = torch.get_num_threads()
    if not on_cpu or devices not in (1, "1", "auto") or int(trainer.get("num_nodes", 1) or 1) > 1:
        return WorkerPlan(1, threads, f"{stage}.trainer: not one CPU device")
    setting, env = ctx.setting("workers"), os.environ.get(WORKERS_ENV)
    if setting is None and not env and str(ctx.setting("logger", "csv")) in ("wandb", "both"):
        # a stage's W&B runs get the run's manifest when the stage ends: only runs made in this process can
        return WorkerPlan(1, threads, "W&B logging: every run gets the manifest")
    return plan_workers(setting, jobs, threads, env)


def _init_worker(threads: int, lightning: bool, numba: bool) -> None:
    """A worker process: its thread count and, when the parent uses them, Numba's threads and Lightning's quiet
    console (a worker that needs neither skips the ~2 s of importing Lightning)."""
    import torch  # noqa: PLC0415  (only in the worker)

    torch.set_num_threads(threads)
    if numba:
        import numba as nb  # noqa: PLC0415  (the cpu rasterizer's kernels)

        nb.set_num_threads(min(threads, nb.config.NUMBA_NUM_THREADS))
    if lightning:
        from clods_pl.pipeline.console import quiet_console  # noqa: PLC0415  (imports lightning)

        quiet_console()


def run_jobs(fn: Callable[[J], R], jobs: Sequence[J], plan: WorkerPlan) -> list[R]:
    """``[fn(job) for job in jobs]``, in ``plan.workers`` spawned processes when more than one.

    ``fn`` and the jobs must pickle (a module-level function; dataclasses of paths and settings). A job's exception
    is raised here once the running jobs have stopped; SIGTERM is passed on to the workers (Lightning stops each fit
    at a safe point) and the first job's error, e.g. Lightning's SIGTERM exception, is raised.
    """
    if plan.workers <= 1 or len(jobs) <= 1:
        return [fn(job) for job in jobs]
    ctx = multiprocessing.get_context("spawn")  # no fork: the parent's OpenMP and Numba thread pools stay its own
    uses = ("lightning" in sys.modules, "numba" in sys.modules)
    pool = ProcessPoolExecutor(plan.workers, mp_context=ctx, initializer=_init_worker, initargs=(plan.threads, *uses))
    futures = [pool.submit(fn, job) for job in jobs]
    signalled: list[int] = []

    def forward(signum: int, frame: Any) -> None:  # the workers stop at a safe point; we wait for them
        signalled.append(signum)
        for future in futures:  # the jobs not started yet never start
            future.cancel()
        for proc in _processes(pool):
            os.kill(proc.pid, signum)

    previous = signal.signal(signal.SIGTERM, forward) if _main_thread() else None
    results: list[R] = []
    error: BaseException | None = None  # after SIGTERM: the first job that stopped early
    try:
        for future in futures:
            try:
                results.append(future.result())
            except BrokenProcessPool as exc:  # a worker died (killed, or a signal before it could stop safely)
                raise (Interrupted(INTERRUPTED) if signalled else exc) from None
            except BaseException as exc:  # a job failed: the others are stopped (below), unless SIGTERM stops them
                if not signalled or isinstance(exc, KeyboardInterrupt):
                    raise
                error = error or exc
        if error is not None:
            raise Interrupted(INTERRUPTED)
        return results
    except BaseException:  # Ctrl-C, or the errors above: nothing is left running
        _terminate(pool, futures)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


INTERRUPTED = "stopped by SIGTERM; finished jobs and saved checkpoints are kept, rerun the same command to resume"


def _processes(pool: ProcessPoolExecutor) -> list[Any]:
    """The pool's live worker processes (``concurrent.futures`` keeps them in ``_processes``)."""
    return [p for p in list((getattr(pool, "_processes", None) or {}).values()) if p.is_alive()]


def _terminate(pool: ProcessPoolExecutor, futures: Sequence[Any]) -> None:
    for future in futures:
        future.cancel()
    for proc in _processes(pool):
        proc.terminate()


def call(job: Callable[[], R]) -> R:
    """``job()``: for :func:`run_jobs` over jobs of several kinds (``functools.partial`` of module functions)."""
    return job()


def _main_thread() -> bool:
    import threading  # noqa: PLC0415

    return threading.current_thread() is threading.main_thread()
