"""Grids of runs (arms × vhack sources × seeds × any config grid), locally or on Ray.

    projected-grpo sweep --arms none erase route --seeds 0 1 --set steps=30 --grid lr=1e-3,3e-3 --out runs/sw
    projected-grpo sweep --file grid.toml --backend ray --address auto

Every run is an ordinary `projected-grpo train` run directory, `<out>/<arm>-s<seed>-<hash>` (the name
`train` itself would pick), made by a subprocess `python -m projected_grpo.cli train ...` in its own
process group: a crash, an OOM kill or a SIGKILL of one run never takes the sweep down, and the
sweep's own death takes its runs with it (PR_SET_PDEATHSIG). Re-running the same sweep is idempotent:
runs with `summary.json` are skipped, runs with `config.json` and no summary are resumed
(`--resume`, from their checkpoint), everything else starts fresh. A failing run is reported with the
last lines of its log (`<run_dir>/train.log`) and does not stop the others; the exit code is 1 when
any run failed. At the end: `<out>/results.md` and `<out>/dynamics.png` over the whole sweep.

TOML file (every key optional; command-line flags win, `--set`/`--grid` merge over the tables):

    preset = "smoke"
    arms = ["none", "erase", "route"]
    sources = ["real", "random"]
    seeds = [0, 1, 2]
    out = "runs/sweep-lr"
    backend = "local"          # or "ray"; also workers, sandbox_workers, address, cpus_per_run, gpus_per_run
    [overrides]                # any Config field, for every run
    steps = 30
    [grid]                     # any Config field, a list of values each: the product is swept
    lr = [1e-3, 3e-3]
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .config import PRESETS, Config, ConfigError, Intervention, VhackSource

ARMS = (*typing.get_args(Intervention), "baseline")  # baseline: intervention none, reward from the strict oracle
SOURCES = typing.get_args(VhackSource)
# Managed by the sweep itself: the axes (arms, sources, seeds, preset) and the run bookkeeping.
_RESERVED = {"intervention": "--arms", "vhack_source": "--sources", "seed": "--seeds", "preset": "--preset",
             "run_dir": "(the sweep names run dirs)", "resume": "(the sweep resumes by itself)",
             "force": "(not allowed in a sweep)"}
_FILE_KEYS = {"preset": str, "arms": list, "sources": list, "seeds": list, "out": str, "backend": str,
              "workers": int, "sandbox_workers": int, "address": str, "cpus_per_run": (int, float),
              "gpus_per_run": (int, float), "overrides": dict, "grid": dict}
LOG_NAME = "train.log"
_ENV_PREFIXES = ("PROJECTED_GRPO_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "CUDA_LAUNCH_", "PYTORCH_")


# ----------------------------------------------------------------------------- the grid
@dataclass
class Grid:
    """What to sweep. `overrides` apply to every run; `grid` values are crossed with arms × sources × seeds."""

    preset: str = "smoke"
    arms: tuple[str, ...] = ("none", "erase", "route")
    sources: tuple[str, ...] = ("real",)
    seeds: tuple[int, ...] = (0,)
    overrides: dict[str, typing.Any] = field(default_factory=dict)
    grid: dict[str, list] = field(default_factory=dict)


@dataclass
class Job:
    """One run of the sweep: its name, its directory and the `train` flags that make it."""

    name: str
    run_dir: str
    arm: str
    source: str
    seed: int
    hash: str
    point: dict  # the grid values of this run (overrides excluded)
    flags: list[str]  # `train` flags, without --run-dir / --resume / --sandbox-workers


@dataclass
class Result:
    job: Job
    status: str  # done | resumed | failed | skipped
    seconds: float = 0.0
    error: str = ""


@functools.cache
def _field_types() -> dict[str, typing.Any]:
    return typing.get_type_hints(Config)


def _is(hint, kind) -> bool:
    """`hint` is `kind`, or `kind | None`, or a parametrised `kind[...]` (possibly optional)."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return any(a is kind or typing.get_origin(a) is kind for a in args)


def _check_field(name: str, where: str) -> None:
    if name in _RESERVED:
        raise ConfigError(f"{where}: {name!r} is set by the sweep; use {_RESERVED[name]}")
    if name not in _field_types():
        raise ConfigError(f"{where}: unknown config field {name!r} (see `projected-grpo train --help`)")


def parse_value(name: str, text: str):
    """A `--set`/`--grid` string for field `name`: bools and tuples parsed, the rest left to the CLI parser."""
    hint = _field_types()[name]
    if text == "None":
        return None
    if _is(hint, bool):
        low = text.lower()
        if low not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"{name}={text}: expected true or false")
        return low in ("true", "1", "yes")
    if _is(hint, tuple):
        return [v for v in text.split(",") if v]
    return text


def parse_assignments(items: list[str], flag: str, grid: bool = False) -> dict:
    """`KEY=VALUE` (or `KEY=V1,V2` for --grid) → {field: value or [values]}."""
    out: dict = {}
    for item in items:
        key, sep, val = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE")
        _check_field(key, f"{flag} {item}")
        if grid:
            vals = [parse_value(key, v) for v in val.split(",")] if not _is(_field_types()[key], tuple) \
                else [parse_value(key, v) for v in val.split(";")]
            out[key] = vals
        else:
            out[key] = parse_value(key, val)
    return out


def load_file(path: str) -> dict:
    """Read a sweep TOML file; bad TOML or unknown keys → ConfigError."""
    import tomllib

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--file {path}: no such file")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--file {path}: bad TOML: {e}") from None
    unknown = set(data) - set(_FILE_KEYS)
    if unknown:
        raise ConfigError(f"--file {path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_FILE_KEYS)}")
    for k, v in data.items():
        kind = _FILE_KEYS[k]
        if not isinstance(v, kind) or isinstance(v, bool) or (k in ("arms", "sources") and not all(
                isinstance(x, str) for x in v)) or (k == "seeds" and not all(type(x) is int for x in v)):
            want = {"arms": "a list of strings", "sources": "a list of strings", "seeds": "a list of integers",
                    "overrides": "a table", "grid": "a table"}.get(k, getattr(kind, "__name__", "a number"))
            raise ConfigError(f"--file {path}: {k} must be {want}, got {v!r}")
    for table in ("overrides", "grid"):
        for k in data.get(table, {}):
            _check_field(k, f"--file {path} [{table}]")
    for k, v in data.get("grid", {}).items():
        if not isinstance(v, list) or not v:
            raise ConfigError(f"--file {path} [grid] {k}: expected a non-empty list of values")
    return data


def _flags(name: str, value) -> list[str]:
    """One Config field as `train` flags (tyro's syntax)."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [flag if value else "--no-" + name.replace("_", "-")]
    if value is None:
        return [flag, "None"]
    if isinstance(value, (list, tuple)):
        return [flag, *map(str, value)]
    return [flag, str(value)]


def expand(g: Grid, out: str | Path) -> list[Job]:
    """Arms × sources × grid points × seeds → jobs, each config parsed and validated as `train` would."""
    from .config import parse_config

    if g.preset not in PRESETS:
        raise ConfigError(f"unknown preset {g.preset!r}; choose from {sorted(PRESETS)}")
    for a in g.arms:
        if a not in ARMS:
            raise ConfigError(f"unknown arm {a!r}; choose from {list(ARMS)}")
    for s in g.sources:
        if s not in SOURCES:
            raise ConfigError(f"unknown vhack source {s!r}; choose from {list(SOURCES)}")
    if not g.arms or not g.sources or not g.seeds:
        raise ConfigError("a sweep needs at least one arm, one source and one seed")
    keys = list(g.grid)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(g.grid[k] for k in keys))]
    jobs, seen = [], {}
    for point in points:
        for arm, source, seed in itertools.product(g.arms, g.sources, g.seeds):
            flags = ["--preset", g.preset]
            for k, v in {**g.overrides, **point}.items():
                flags += _flags(k, v)
            arm_flags = ["--intervention", "none", "--grader", "strict"] if arm == "baseline" else ["--intervention", arm]
            flags += [*arm_flags, "--vhack-source", source, "--seed", str(seed)]
            cfg = parse_config(flags).validate()
            name = f"{cfg.arm}-s{seed}-{cfg.hash()}"
            if name in seen:
                raise ConfigError(f"grid points {seen[name]} and {point} give the same config ({name})")
            seen[name] = point
            typed = {k: getattr(cfg, k) for k in point}  # as the run sees them ("1e-3" → 0.001)
            jobs.append(Job(name, str(Path(out).absolute() / name), arm, source, seed, cfg.hash(), typed, flags))
    return jobs


def plan_hash(g: Grid) -> str:
    return hashlib.sha256(json.dumps(dataclasses.asdict(g), sort_keys=True, default=str).encode()).hexdigest()[:8]


# ----------------------------------------------------------------------------- one run
def status_of(job: Job) -> str:
    """`skip` (finished), `resume` (killed: config.json, no summary) or `fresh`."""
    d = Path(job.run_dir)
    if (d / "summary.json").is_file():
        return "skip"
    return "resume" if (d / "config.json").is_file() else "fresh"


def _train_argv(job: Job, sandbox_workers: int, resume: bool) -> list[str]:
    argv = [sys.executable, "-m", "projected_grpo.cli", "train", *job.flags, "--run-dir", job.run_dir,
            "--sandbox-workers", str(sandbox_workers)]
    return argv + (["--resume"] if resume else [])


def _die_with_parent():
    """In the child between fork and exec: SIGKILL when the sweep process dies (Linux)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


try:  # resolved before any fork, so the child only calls it
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):
    _PRCTL = None


def launch(job: Job, sandbox_workers: int, env: dict | None = None, cwd: str | None = None) -> subprocess.Popen:
    """Start `train` for `job` as its own process group, output appended to `<run_dir>/train.log`."""
    resume = status_of(job) == "resume"
    d = Path(job.run_dir)
    d.mkdir(parents=True, exist_ok=True)
    argv = _train_argv(job, sandbox_workers, resume)
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
    if returncode == 0 and (Path(job.run_dir) / "summary.json").is_file():
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


# ----------------------------------------------------------------------------- backends
def visible_gpus() -> list[str]:
    """GPU ids for CUDA_VISIBLE_DEVICES, without importing torch (no CUDA state in the sweep process)."""
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


def _env_passthrough() -> dict:
    """Variables a run needs from the sweep's environment (Ray workers do not inherit the driver's)."""
    return {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}


def _bar(total: int, initial: int):
    from tqdm.auto import tqdm

    tqdm.monitor_interval = 0  # no monitor thread: the sweep process stays single-threaded for fork
    return tqdm(total=total, initial=initial, desc="sweep", unit="run", dynamic_ncols=True)


def _after(bar, r: Result) -> None:
    bar.update(1)
    if r.status == "failed":
        bar.write(f"failed: {r.job.name}: {r.error}")


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
    except BaseException:  # Ctrl-C: stop every run cleanly; each is resumable by re-running the sweep
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


# ----------------------------------------------------------------------------- the verb
def status_table(results: list[Result]) -> str:
    w = max([len("run")] + [len(r.job.name) for r in results])
    lines = [f"{'run':<{w}}  {'status':<8}  {'time':>7}  error", f"{'-' * w}  {'-' * 8}  {'-' * 7}  -----"]
    for r in results:
        t = f"{r.seconds:.0f}s" if r.status != "skipped" else "–"
        lines.append(f"{r.job.name:<{w}}  {r.status:<8}  {t:>7}  {r.error}")
    counts = {s: sum(r.status == s for r in results) for s in ("done", "resumed", "skipped", "failed")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


def sweep(a) -> int:
    """`projected-grpo sweep` (args: cli.SweepArgs). Returns the exit code: 1 when any run failed."""
    data = load_file(a.file) if a.file else {}

    def pick(name, default):
        v = getattr(a, name)
        return v if v is not None else data.get(name, default)

    g = Grid(preset=pick("preset", "smoke"), arms=tuple(pick("arms", Grid.arms)),
             sources=tuple(pick("sources", Grid.sources)), seeds=tuple(int(s) for s in pick("seeds", Grid.seeds)),
             overrides={**data.get("overrides", {}), **parse_assignments(a.set, "--set")},
             grid={**data.get("grid", {}), **parse_assignments(a.grid, "--grid", grid=True)})
    out = Path(pick("out", None) or f"runs/sweep-{plan_hash(g)}")
    backend = pick("backend", "local")
    if backend not in ("local", "ray"):
        raise ConfigError(f"unknown backend {backend!r}; choose local or ray")
    if backend == "ray":
        import_ray()
    gpus = visible_gpus()
    cpus = os.cpu_count() or 1
    w = pick("workers", None)
    workers = int(w) if w is not None else (len(gpus) if gpus else max(1, cpus // 2))
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    sw = pick("sandbox_workers", None)
    sandbox_workers = int(sw) if sw is not None else max(1, cpus // workers - 1)
    cpus_per_run = float(pick("cpus_per_run", None) or max(1, cpus // workers))
    gpus_per_run = pick("gpus_per_run", None)
    jobs = expand(g, out)

    out.mkdir(parents=True, exist_ok=True)
    plan = {"grid": dataclasses.asdict(g), "backend": backend, "workers": workers, "sandbox_workers": sandbox_workers,
            "command": " ".join(sys.argv), "runs": [dataclasses.asdict(j) for j in jobs]}
    tmp = out / ".sweep.json.tmp"
    tmp.write_text(json.dumps(plan, indent=2) + "\n")
    tmp.replace(out / "sweep.json")
    todo = [j for j in jobs if status_of(j) != "skip"]
    skipped = [Result(j, "skipped") for j in jobs if status_of(j) == "skip"]
    print(f"sweep {out}: {len(jobs)} runs ({len(skipped)} finished, "
          f"{sum(status_of(j) == 'resume' for j in todo)} to resume) on {backend}, "
          f"{workers} at a time, {sandbox_workers} sandbox workers each"
          + (f", GPUs {','.join(gpus)}" if gpus else ""), flush=True)
    if a.dry_run:
        print(f"dry run: plan written to {out / 'sweep.json'}")
        return 0

    bar = _bar(len(jobs), len(skipped))
    try:
        if backend == "local":
            ran = run_local(todo, workers, sandbox_workers, gpus, bar) if todo else []
        else:
            ran = run_ray(todo, workers, sandbox_workers, pick("address", None), cpus_per_run,
                          None if gpus_per_run is None else float(gpus_per_run), bar) if todo else []
    finally:
        bar.close()
    order = {j.name: i for i, j in enumerate(jobs)}
    results = sorted(skipped + ran, key=lambda r: order[r.job.name])
    print(status_table(results))

    # --- the table and the plot over the whole sweep
    from .report import plot_cli, results_cli

    have = [j.run_dir for j in jobs if (Path(j.run_dir) / "config.json").is_file()]
    rc = 0
    if have:
        table = out / "results.md"
        last = int(g.overrides.get("summary_last_n", PRESETS[g.preset].summary_last_n))
        rc |= results_cli(have, last=last, fmt="md", out=str(table))
        if table.is_file():
            print(table.read_text())
        rc |= plot_cli(have, str(out / "dynamics.png"))
    failed = [r for r in results if r.status == "failed"]
    if failed:
        print(f"{len(failed)} of {len(jobs)} runs failed (logs: <run_dir>/{LOG_NAME}); "
              f"re-run the same command to retry them", file=sys.stderr)
        return 1
    return rc
