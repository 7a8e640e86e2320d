"""The one job runner of `sweep` and `study`: planned runs → `train` subprocesses, locally or on Ray.

A `Job` is one planned run: its name, its run directory and its `Config`. Before anything runs, the
runner writes each unstarted job's `<run_dir>/config.json` (the same object the trainer writes, so
`results` and a resume read it alike) and launches

    python -m projected_grpo.cli train --config RUN_DIR/config.json --run-dir RUN_DIR --sandbox-workers N [--resume]

in its own process group, output appended to `<run_dir>/train.log`: a crash, an OOM kill or a SIGKILL of
one run never takes the others down, and the runner's own death takes its runs with it
(PR_SET_PDEATHSIG). Re-running is idempotent: finished runs (summary.json) are skipped, started ones
(metrics or a checkpoint, no summary) are resumed from their checkpoint, the rest start fresh. The config
flows once: built and validated at plan time, written to disk, read back by the trainer.

Backends: `local` (a pool of `workers` subprocess slots polled from one thread; slot i gets GPU i mod
#GPUs) and `ray` (one task per run with CPU/GPU requests, each task running the same subprocess).
The runner flags (`cli.RunnerArgs`: backend, workers, sandbox_workers, address, cpus_per_run,
gpus_per_run) are one dataclass shared by both verbs; `resolve` fills their defaults.

Owns: Job, Result, launching, polling, resuming, the status table. Never imports torch, the trainer or
the model code (no CUDA state in the process that forks the runs).
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import rundir
from .config import MAX_SANDBOX_WORKERS, Config, ConfigError

LOG_NAME = "train.log"
_ENV_PREFIXES = ("PROJECTED_GRPO_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "CUDA_LAUNCH_", "PYTORCH_")
BACKENDS = ("local", "ray")


@dataclass
class Job:
    """One planned run: its name (`<arm>-s<seed>-<hash>`, the one `train` itself would pick), its run
    directory and its validated Config (`config.run_dir` is `run_dir`)."""

    name: str
    run_dir: str
    arm: str
    source: str
    seed: int
    hash: str
    match_hash: str
    point: dict  # the grid values of this run, as the run sees them (overrides excluded)
    config: Config


@dataclass
class Result:
    job: Job
    status: str  # done | resumed | failed | skipped
    seconds: float = 0.0
    error: str = ""


# ----------------------------------------------------------------------------- one run
def status_of(job: Job) -> str:
    """`skip` (finished: summary.json), `resume` (started: metrics or a checkpoint, no summary) or `fresh`
    (nothing yet, or only the config.json written at plan time)."""
    st = rundir.status(job.run_dir)
    return "skip" if st == "done" else st


def write_config(job: Job) -> None:
    """`<run_dir>/config.json` of a run not started yet (atomic; a started run's file is left as it is)."""
    d = Path(job.run_dir)
    if status_of(job) != "fresh" and rundir.is_run(d):
        return
    d.mkdir(parents=True, exist_ok=True)
    cfg = job.config
    write_json(d / rundir.CONFIG, {"config": cfg.to_dict(), "hash": cfg.hash(), "match_hash": cfg.match_hash(),
                                   "arm": cfg.arm}, indent=1)


def write_json(path: Path, obj, indent: int = 2) -> None:
    """`obj` as JSON at `path`, atomically (a reader never sees half a plan or half a config)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=indent, default=str) + "\n")
    tmp.replace(path)


def train_argv(job: Job, sandbox_workers: int, resume: bool) -> list[str]:
    return [sys.executable, "-m", "projected_grpo.cli", "train", "--config", str(Path(job.run_dir) / rundir.CONFIG),
            "--run-dir", job.run_dir, "--sandbox-workers", str(sandbox_workers), *(["--resume"] if resume else [])]


def _die_with_parent():
    """In the child between fork and exec: SIGKILL when the runner process dies (Linux)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


try:  # resolved before any fork, so the child only calls it
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):
    _PRCTL = None


def launch(job: Job, sandbox_workers: int, env: dict | None = None, cwd: str | None = None) -> subprocess.Popen:
    """Start `train` for `job` as its own process group, output appended to `<run_dir>/train.log`."""
    resume = status_of(job) == "resume"
    write_config(job)  # on a Ray node: the run dir may be new there
    d = Path(job.run_dir)
    argv = train_argv(job, sandbox_workers, resume)
    log = open(d / LOG_NAME, "a")
    log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {'resume' if resume else 'start'}: {' '.join(argv)}\n")
    log.flush()
    try:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                cwd=cwd if cwd and os.path.isdir(cwd) else None,
                                start_new_session=True, preexec_fn=_die_with_parent if _PRCTL else None)
    finally:
        log.close()
    proc.resumed = resume  # type: ignore[attr-defined]
    return proc


def outcome(job: Job, returncode: int, resumed: bool, seconds: float) -> Result:
    """The Result of a finished subprocess: failed unless it exited 0 and wrote summary.json."""
    if returncode == 0 and rundir.is_done(job.run_dir):
        return Result(job, "resumed" if resumed else "done", seconds)
    if returncode < 0:
        why = f"killed by {signal.Signals(-returncode).name if -returncode in signal.valid_signals() else -returncode}"
    else:
        why = f"exit code {returncode}" + ("" if returncode else " without summary.json")
    return Result(job, "failed", seconds, f"{why}: {log_tail(job)}")


def log_tail(job: Job, n: int = 3) -> str:
    """The last `n` meaningful lines of a run's log (progress-bar redraws dropped)."""
    p = Path(job.run_dir) / LOG_NAME
    if not p.is_file():
        return "(no log)"
    text = p.read_text(errors="replace")
    attempt = text.rsplit("\n=== ", 1)[-1].split("\n", 1)[-1]  # this attempt only
    lines = [ln.strip() for ln in attempt.replace("\r", "\n").splitlines()]
    lines = [ln for ln in lines if ln and "it/s" not in ln and "s/it" not in ln]
    return " | ".join(lines[-n:]) or "(empty log)"


def run_one(job: Job, sandbox_workers: int, env: dict | None = None, cwd: str | None = None) -> Result:
    """Blocking: one run as a subprocess (the Ray task body; the local backend polls `launch` instead)."""
    t0 = time.time()
    proc = launch(job, sandbox_workers, env, cwd)
    try:
        rc = proc.wait()
    except BaseException:
        _stop(proc)
        raise
    return outcome(job, rc, proc.resumed, time.time() - t0)  # type: ignore[attr-defined]


def _stop(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the run's process group, SIGKILL it after `grace_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


# ----------------------------------------------------------------------------- resources
def visible_gpus() -> list[str]:
    """GPU ids for CUDA_VISIBLE_DEVICES, without importing torch (no CUDA state in the runner process)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, ln in enumerate(ln for ln in out.splitlines() if ln.startswith("GPU "))]


def resolve(flags: Any) -> Any:
    """The runner flags (cli.RunnerArgs) with every default filled and checked: backend `local`; workers one
    per GPU, else cores // 2; sandbox workers cores // workers - 1 (at least 1); Ray CPUs per run cores //
    workers. ConfigError for a bad value; `--backend ray` without Ray installed is one too."""
    backend = flags.backend or "local"
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose local or ray")
    gpus, cpus = visible_gpus(), os.cpu_count() or 1
    workers = int(flags.workers) if flags.workers is not None else (len(gpus) if gpus else max(1, cpus // 2))
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    sandbox = (int(flags.sandbox_workers) if flags.sandbox_workers is not None
               else min(MAX_SANDBOX_WORKERS, max(1, cpus // workers - 1)))
    if not 0 <= sandbox <= MAX_SANDBOX_WORKERS:  # else every run would fail on it, one by one, after the plan
        raise ConfigError(f"--sandbox-workers must be in [0, {MAX_SANDBOX_WORKERS}] (0 = one per CPU core), got {sandbox}")
    if flags.cpus_per_run is not None and not (math.isfinite(flags.cpus_per_run) and flags.cpus_per_run > 0):
        raise ConfigError(f"--cpus-per-run must be a finite number > 0, got {flags.cpus_per_run}")  # NaN too
    if flags.gpus_per_run is not None and not (math.isfinite(flags.gpus_per_run) and flags.gpus_per_run >= 0):
        raise ConfigError(f"--gpus-per-run must be a finite number >= 0, got {flags.gpus_per_run}")
    if backend == "ray":
        import_ray()
    return dataclasses.replace(flags, backend=backend, workers=workers, sandbox_workers=sandbox,
                               cpus_per_run=float(flags.cpus_per_run or max(1, cpus // workers)),
                               gpus_per_run=None if flags.gpus_per_run is None else float(flags.gpus_per_run))


def _env_passthrough() -> dict:
    """Variables a run needs from the runner's environment (Ray workers do not inherit the driver's)."""
    return {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}


def _bar(total: int, initial: int, label: str):
    from tqdm.auto import tqdm

    tqdm.monitor_interval = 0  # no monitor thread: the runner process stays single-threaded for fork
    return tqdm(total=total, initial=initial, desc=label, unit="run", dynamic_ncols=True)


def _after(bar, r: Result) -> None:
    bar.update(1)
    if r.status == "failed":
        bar.write(f"failed: {r.job.name}: {r.error}")


# ----------------------------------------------------------------------------- backends
def run_local(jobs: list[Job], workers: int, sandbox_workers: int, gpus: list[str], bar) -> list[Result]:
    """A pool of `workers` subprocess slots, polled from this one thread; slot i gets GPU i mod #GPUs."""
    pending = list(jobs)
    running: dict[int, tuple[subprocess.Popen, Job, float]] = {}
    results: list[Result] = []
    try:
        while pending or running:
            for slot in range(workers):
                if slot not in running and pending:
                    job = pending.pop(0)
                    env = {"CUDA_VISIBLE_DEVICES": gpus[slot % len(gpus)]} if gpus else {}
                    if "OMP_NUM_THREADS" not in os.environ:  # no oversubscription: the cores are shared out
                        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
                    try:
                        running[slot] = (launch(job, sandbox_workers, env), job, time.time())
                    except OSError as e:  # could not even start (disk full, no such interpreter...)
                        results.append(Result(job, "failed", 0.0, f"could not start: {e}"))
                        _after(bar, results[-1])
            for slot, (proc, job, t0) in list(running.items()):
                rc = proc.poll()
                if rc is not None:
                    del running[slot]
                    results.append(outcome(job, rc, proc.resumed, time.time() - t0))  # type: ignore[attr-defined]
                    _after(bar, results[-1])
            time.sleep(0.1)
    except BaseException:  # Ctrl-C: stop every run cleanly; each is resumable by re-running the command
        for proc, _, _ in running.values():
            _stop(proc)
        raise
    return results


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--backend ray needs Ray: pip install 'projected-grpo[ray]' (or pip install 'ray[default]')") from None
    return ray


def run_ray(jobs: list[Job], workers: int, sandbox_workers: int, address: str | None, cpus_per_run: float,
            gpus_per_run: float | None, bar) -> list[Result]:
    """One Ray task per run (CPU/GPU requests); each task runs the same subprocess as the local backend."""
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:  # a local instance sized so that `workers` runs fit at once
            ray.init(num_cpus=max(1, round(workers * cpus_per_run)), num_gpus=len(visible_gpus()),
                     include_dashboard=False, log_to_driver=False)
        started = True
    try:
        if gpus_per_run is None:
            gpus_per_run = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        task = ray.remote(run_one).options(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)
        env, cwd = _env_passthrough(), os.getcwd()
        refs = {task.remote(job, sandbox_workers, env, cwd): job for job in jobs}
        results: list[Result] = []
        try:
            left = list(refs)
            while left:
                ready, left = ray.wait(left, num_returns=1)
                try:
                    r = ray.get(ready[0])
                except Exception as e:  # the task itself died (worker lost, node gone...)
                    r = Result(refs[ready[0]], "failed", 0.0, f"ray task failed: {type(e).__name__}: "
                               f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}")
                results.append(r)
                _after(bar, r)
        except BaseException:
            for ref in refs:
                ray.cancel(ref, force=True)
            raise
        return results
    finally:
        if started:
            ray.shutdown()


# ----------------------------------------------------------------------------- the runner
def describe(label: str, out: Path, jobs: list[Job], flags: Any) -> str:
    """The line a verb prints before running: counts, backend, parallelism (`flags` resolved)."""
    st = [status_of(j) for j in jobs]
    gpus = visible_gpus()
    return (f"{label} {out}: {len(jobs)} runs ({st.count('skip')} finished, {st.count('resume')} to resume) on "
            f"{flags.backend}, {flags.workers} at a time, {flags.sandbox_workers} sandbox workers each"
            + (f", GPUs {','.join(gpus)}" if gpus else ""))


def run_jobs(jobs: list[Job], flags: Any, label: str = "runs") -> list[Result]:
    """Every unfinished job through the backend of `flags` (resolved), each config.json written first;
    finished jobs are `skipped`. Results in the order of `jobs`."""
    todo = [j for j in jobs if status_of(j) != "skip"]
    skipped = [Result(j, "skipped") for j in jobs if status_of(j) == "skip"]
    for j in todo:  # the plan on disk before anything runs: each run's config, as train will read it
        write_config(j)
    if not todo:
        return skipped
    bar = _bar(len(jobs), len(skipped), label)
    try:
        if flags.backend == "local":
            ran = run_local(todo, flags.workers, flags.sandbox_workers, visible_gpus(), bar)
        else:
            ran = run_ray(todo, flags.workers, flags.sandbox_workers, flags.address, flags.cpus_per_run,
                          flags.gpus_per_run, bar)
    finally:
        bar.close()
    order = {j.name: i for i, j in enumerate(jobs)}
    return sorted(skipped + ran, key=lambda r: order[r.job.name])


def run_verb(label: str, out: Path, plan_file: Path, jobs: list[Job], flags: Any, dry_run: bool) -> list[Result] | None:
    """The common part of `sweep` and `study` once their plan file is written: say what will run, stop there
    for --dry-run (None), else run every job and print the status table."""
    print(describe(label, out, jobs, flags), flush=True)
    if dry_run:
        print(f"dry run: plan written to {plan_file}")
        return None
    results = run_jobs(jobs, flags, label)
    print(status_table(results))
    return results


def failures(results: list[Result]) -> int:
    """1 (and a line on stderr saying where the logs are) when any run failed, else 0."""
    failed = [r for r in results if r.status == "failed"]
    if not failed:
        return 0
    print(f"{len(failed)} of {len(results)} runs failed (logs: <run_dir>/{LOG_NAME}); re-run the same command to "
          "retry them", file=sys.stderr)
    return 1


def status_table(results: list[Result]) -> str:
    w = max([len("run")] + [len(r.job.name) for r in results])
    lines = [f"{'run':<{w}}  {'status':<8}  {'time':>7}  error", f"{'-' * w}  {'-' * 8}  {'-' * 7}  -----"]
    for r in results:
        t = f"{r.seconds:.0f}s" if r.status != "skipped" else "–"
        lines.append(f"{r.job.name:<{w}}  {r.status:<8}  {t:>7}  {r.error}")
    counts = {s: sum(r.status == s for r in results) for s in ("done", "resumed", "skipped", "failed")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)
