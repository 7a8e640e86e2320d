"""Grids of runs (arms × vhack sources × seeds × any config grid), locally or on Ray.

    projected-grpo sweep --arms none erase route --seeds 0 1 --set steps=30 --grid lr=1e-3,3e-3 --out runs/sw
    projected-grpo sweep --file grid.toml --backend ray --address auto

Every run is an ordinary `projected-grpo train` run directory, `<out>/<arm>-s<seed>-<hash>` (the name
`train` itself would pick). The grid is expanded here into one validated `Config` per run (preset, then
`--set`/`--grid`/TOML values typed as the fields, then arm, basis and seed); runner.py writes each run's
`config.json` and launches `train --config` on it (subprocesses, local pool or Ray; finished runs
skipped, started ones resumed; a failing run is reported with the last lines of its `train.log` and does
not stop the others; exit code 1 when any run failed). At the end: `<out>/results.md` and
`<out>/dynamics.png` over the whole sweep.

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

Owns the grid and its expansion (`Grid`, `expand`, `job_config`); study.py plans with the same two.
Never imports torch or the trainer.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from . import rundir, runner
from .config import PRESETS, Config, ConfigError, Intervention, VhackSource, config_from_dict, expand_user
from .runner import Job

ARMS = (*typing.get_args(Intervention), "baseline")  # baseline: intervention none, reward from the strict oracle
SOURCES = typing.get_args(VhackSource)
# Managed by the sweep itself: the axes (arms, sources, seeds, preset) and the run bookkeeping.
_RESERVED = {"intervention": "--arms", "vhack_source": "--sources", "seed": "--seeds", "preset": "--preset",
             "run_dir": "--out (the sweep names the run dirs under it)",
             "resume": "nothing: a sweep resumes killed runs by itself", "force": "nothing: not allowed in a sweep"}
_RUNNER_KEYS = {"backend": str, "workers": int, "sandbox_workers": int, "address": str, "cpus_per_run": (int, float),
                "gpus_per_run": (int, float)}  # the fields of cli.RunnerArgs
_FILE_KEYS = {"preset": str, "arms": list, "sources": list, "seeds": list, "out": str, "overrides": dict, "grid": dict,
              **_RUNNER_KEYS}


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


@functools.cache
def _field_types() -> dict[str, typing.Any]:
    return typing.get_type_hints(Config)


def _is(hint, kind) -> bool:
    """`hint` is `kind`, or `kind | None`, or a parametrised `kind[...]` (possibly optional)."""
    return any(a is kind or typing.get_origin(a) is kind for a in _args(hint))


def _check_field(name: str, where: str) -> None:
    if name in _RESERVED:
        raise ConfigError(f"{where}: {name!r} is set by the sweep; use {_RESERVED[name]}")
    if name not in _field_types():
        raise ConfigError(f"{where}: unknown config field {name!r} (see `projected-grpo train --help`)")


def parse_value(name: str, text: str):
    """A `--set`/`--grid` string for field `name`: bools, None and tuples parsed, the rest left as text
    (`coerce` types it; the sweep's plan hash is over these values, so the default --out stays put)."""
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


def coerce(name: str, value):
    """A value for field `name` as the field's type: command-line text parsed ('4' → 4, '1e-3' → 0.001),
    an int for a float field made a float (so the config hash is the one `train` computes), lists → tuples."""
    hint = _field_types()[name]
    if isinstance(value, str):
        value = parse_value(name, value)
    if isinstance(value, str) and not _is(hint, str):
        kinds = [k for k in (int, float) if _is(hint, k)]
        for kind in kinds:
            try:
                value = kind(value)
                break
            except ValueError:
                continue
        else:
            choices = [a for h in _args(hint) if typing.get_origin(h) is typing.Literal for a in typing.get_args(h)]
            if kinds or (choices and value not in choices):
                want = {int: "an integer", float: "a number"}[kinds[0]] if kinds else f"one of {choices}"
                raise ConfigError(f"{name}={value}: expected {want}")
    if _is(hint, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    return tuple(value) if isinstance(value, list) else value


def _args(hint) -> tuple:
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


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


def job_config(preset: str, fields: dict, arm: str, source: str = "real", seed: int = 0) -> Config:
    """One run's Config, validated as `train` validates it: preset `preset`, then `fields` (typed by
    `coerce`), then the arm (`baseline`: intervention none, strict grader), the basis and the seed."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    arm_fields = {"intervention": "none", "grader": "strict"} if arm == "baseline" else {"intervention": arm}
    d = {**PRESETS[preset].to_dict(), **{k: coerce(k, v) for k, v in fields.items()}, **arm_fields,
         "vhack_source": source, "seed": seed}
    return expand_user(config_from_dict(d)).validate()


def expand(g: Grid, out: str | Path) -> list[Job]:
    """Arms × sources × grid points × seeds → jobs, each with its validated Config (run_dir set)."""
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
            cfg = job_config(g.preset, {**g.overrides, **point}, arm, source, seed)
            name = f"{cfg.arm}-s{seed}-{cfg.hash()}"
            if name in seen:
                raise ConfigError(f"grid points {seen[name]} and {point} give the same config ({name})")
            seen[name] = point
            run_dir = str(Path(out).absolute() / name)
            typed = {k: getattr(cfg, k) for k in point}  # as the run sees them ("1e-3" → 0.001)
            jobs.append(Job(name, run_dir, arm, source, seed, cfg.hash(), cfg.match_hash(), typed,
                            dataclasses.replace(cfg, run_dir=run_dir)))
    return jobs


def plan_hash(g: Grid) -> str:
    return hashlib.sha256(json.dumps(dataclasses.asdict(g), sort_keys=True, default=str).encode()).hexdigest()[:8]


# ----------------------------------------------------------------------------- the verb
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
    flags = runner.resolve(dataclasses.replace(a.runner, **{k: data[k] for k in _RUNNER_KEYS
                                                            if getattr(a.runner, k) is None and k in data}))
    jobs = expand(g, out)

    rundir.make_folder(out, "--out")
    plan = {"grid": dataclasses.asdict(g), "backend": flags.backend, "workers": flags.workers,
            "sandbox_workers": flags.sandbox_workers, "command": " ".join(sys.argv),
            "runs": [dataclasses.asdict(j) for j in jobs]}
    runner.write_json(out / "sweep.json", plan)
    results = runner.run_verb("sweep", out, out / "sweep.json", jobs, flags, a.dry_run)
    if results is None:
        return 0

    # --- the table and the plot over the whole sweep
    from .report import plot_cli, results_cli

    have = [j.run_dir for j in jobs if rundir.is_run(j.run_dir)]
    rc = 0
    if have:
        table = out / "results.md"
        last = int(g.overrides.get("summary_last_n", PRESETS[g.preset].summary_last_n))
        rc |= results_cli(have, last=last, fmt="md", out=str(table))
        if table.is_file():
            print(table.read_text())
        rc |= plot_cli(have, str(out / "dynamics.png"))
    return runner.failures(results) or rc
