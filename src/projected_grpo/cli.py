"""`projected-grpo VERB ...`: one verb per pipeline stage.

  train    GRPO with an intervention arm       projected-grpo train --preset smoke --intervention route
  demo     vanilla / erase / route on the embedded model, then table and plot
  check    the environment's self-check        projected-grpo check --dataset humaneval
  grade    grade a JSONL of completions        projected-grpo grade --dataset builtin --in c.jsonl
  eval     hack and solve rates with 95 % intervals   projected-grpo eval --model smollm2 --dataset builtin --k 4
  results  tables from run directories         projected-grpo results runs/*
  plot     dynamics plot                       projected-grpo plot runs/* --out dynamics.png
  export   deployable model (δS merged, δS_hack ablated)   projected-grpo export runs/x --out model/
  sweep    a grid of runs, locally or on Ray   projected-grpo sweep --arms none erase route --seeds 0 1 --out runs/sw
  study    headline, negative controls, no teacher, leave-one-mode-out, update space: runs + study.md
                                               projected-grpo study --preset demo --seeds 0 1 2 --out runs/study

User mistakes print one line (`error: ...`) and exit 2, never a traceback.

Owns the verbs and their flags; it is the top of the import graph: library modules must never import it.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from . import rundir
from .config import PRESETS, ConfigError, parse_args as _cli, parse_config  # noqa: F401 (re-exported)


def _computed(metavar: str | None = None, aliases: tuple[str, ...] | None = None):
    """A flag whose `None` default means "computed" and whose docstring says how: no second "(default: None)"."""
    return tyro.conf.arg(help_behavior_hint="", metavar=metavar, aliases=aliases)


def cmd_train(argv: list[str]) -> int:
    cfg = parse_config(argv).validate()
    from .train import train

    train(cfg)
    return 0


@dataclass
class DemoArgs:
    """Train vanilla, erase and route with the `demo` preset, then print the table and write the plot."""

    out: str = "runs/demo"
    """Folder for the three run directories, the table and the plot."""
    seed: int = 0
    """Seed of all three arms (the same for each, so the deltas are paired)."""
    steps: Annotated[int | None, _computed("N")] = None
    """Optimizer steps per arm (default: the demo preset's 8)."""
    model: Annotated[str | None, _computed("NAME")] = None
    """Model instead of the preset's smollm2, e.g. Qwen/Qwen3-4B with a hub."""
    resume: bool = True
    """Skip finished arms and resume killed ones."""
    force: bool = False
    """Resume arms whose saved config differs from this one (as `train --force`)."""
    amp: bool = True
    """bf16 autocast on the fp32 model, as the preset (--no-amp: fp32 throughout, for a CPU without native bf16)."""
    max_problems: Annotated[int | None, _computed("N")] = None
    """Problems per split instead of the preset's 300 (fewer: a quicker, smaller teacher pool)."""


def cmd_demo(argv: list[str]) -> int:
    from .adapter import shared_factors
    from .models import shared_loads
    from .report import plot_cli, results_cli
    from .train import train

    args = _cli(DemoArgs, args=argv, prog="projected-grpo demo")
    base = PRESETS["demo"]
    over = {k: v for k, v in (("steps", args.steps), ("model", args.model), ("amp", args.amp),
                              ("max_problems", args.max_problems)) if v is not None}
    runs = []
    with shared_loads(), shared_factors():  # the arms load the same model: read it and its SVD factors once
        for arm in ("none", "erase", "route"):
            # every arm evaluates step 0; its completions are generated once (the untrained model is the same)
            cfg = dataclasses.replace(base, intervention=arm, seed=args.seed, run_dir=f"{args.out}/{arm}",
                                      resume=args.resume and rundir.is_run(Path(args.out, arm)), force=args.force,
                                      **over)
            runs.append(str(train(cfg)))
    table = Path(args.out) / "results.md"
    rc = results_cli(runs, last=base.summary_last_n, fmt="md", out=str(table))
    print(table.read_text() if table.exists() else "")
    from .evaluate import start_end_table

    held = start_end_table(runs)
    (Path(args.out) / "heldout.md").write_text(held)
    print("## Held-out hack and solve, start and end (95 % Wilson intervals)\n\n" + held)
    rc |= plot_cli(runs, str(Path(args.out) / "dynamics.png"))
    print(f"table: {table}\nheld-out: {Path(args.out) / 'heldout.md'}\nplot:  {Path(args.out) / 'dynamics.png'}")
    return rc


@dataclass
class CheckArgs:
    """For every problem: canonical solution passes the strict oracle, a stub does not, each mode's hack
    template exploits its own grader and no other, the clean template is never exploited."""

    dataset: str = "builtin"
    """`builtin`, `humaneval`, `synth[:SEED]`, `leetcode:PATH.jsonl` or `hf:NAME`."""
    workers: int = 0
    """Grader processes; 0 = one per CPU core."""
    max_problems: int | None = None
    """Check at most this many problems (after the seeded shuffle; per split for synth); None = all."""


def _check_counts(a) -> None:
    """--workers and --max-problems of check, grade and eval: a negative count would crash the grader pool or
    slice the problem list from the end; 0 problems would "check" nothing and report OK."""
    from .config import MAX_SANDBOX_WORKERS

    if not 0 <= getattr(a, "workers", 0) <= MAX_SANDBOX_WORKERS:
        raise ConfigError(f"--workers must be in [0, {MAX_SANDBOX_WORKERS}] (0 = one per CPU core), got {a.workers}")
    if getattr(a, "max_problems", None) is not None and a.max_problems <= 0:
        raise ConfigError(f"--max-problems must be positive (or left out for all problems), got {a.max_problems}")


def cmd_check(argv: list[str]) -> int:
    from .env.commands import check

    a = _cli(CheckArgs, args=argv, prog="projected-grpo check")
    _check_counts(a)
    return check(a.dataset, workers=a.workers, max_problems=a.max_problems)


@dataclass
class GradeArgs:
    """Grade a JSONL of {"problem_id", "mode", "completion"}; each output line is the input plus every grade."""

    in_: Annotated[str, tyro.conf.arg(name="in")]
    """Input JSONL, one {"problem_id", "mode", "completion"} object a line."""
    dataset: str = "builtin"
    """Dataset the problem ids refer to: `builtin`, `humaneval`, `leetcode:PATH.jsonl` or `hf:NAME`."""
    out: Annotated[str | None, _computed("FILE")] = None
    """Output JSONL (default: stdout)."""
    mode: str | None = None
    """Loophole mode for lines without a "mode" (without --mode such lines are refused)."""
    workers: int = 0
    """Grader processes; 0 = one per CPU core."""


def cmd_grade(argv: list[str]) -> int:
    from .env.commands import grade

    a = _cli(GradeArgs, args=argv, prog="projected-grpo grade")
    _check_counts(a)
    return grade(a.dataset, a.in_, a.out, workers=a.workers, mode=a.mode)


@dataclass
class EvalArgs:
    """Hack and solve rates (95 % Wilson intervals) of a base model or a trained run (kept and, for route,
    δS_hack ablated), with and without hints, per mode and per tier. With --run the default problems are
    the run's held-out ones."""

    model: str | None = None
    """Base model (`tiny`, `smollm2`, a hub id); with --run, default the run's."""
    run: str | None = None
    """A trained run directory (its knobs are loaded onto --model)."""
    dataset: str | None = None
    """Dataset spec (default: the run's, else builtin)."""
    k: int = 0
    """Sampled completions per problem besides the greedy one; > 0 makes the sampled rates the overall ones."""
    temperature: float = 0.7
    top_p: float = 1.0
    max_problems: int | None = None
    """Evaluate at most this many problems."""
    max_new_tokens: int | None = None
    """Token budget (default: the run's, else 128)."""
    modes: tuple[str, ...] | None = None
    """Loophole modes partitioned over the problems (default: the run's, else all)."""
    device: str = "auto"
    backend: Literal["hf", "fast"] = "hf"
    seed: int = 0
    """Seeds of the sampled completions."""
    workers: int = 0
    """Grader processes (0: one per core)."""
    json: bool = False
    """Print one JSON object (top-level `solve` and `hack` are the overall rates) instead of the table."""
    quiet: bool = False


def cmd_eval(argv: list[str]) -> int:
    from .evaluate import eval_command

    a = _cli(EvalArgs, args=argv, prog="projected-grpo eval")
    _check_counts(a)
    return eval_command(a)


@dataclass
class ResultsArgs:
    """Per-run, grouped and paired-vs-vanilla tables from run directories (or folders of them)."""

    run_dirs: Annotated[tyro.conf.Positional[list[str]], _computed("RUN_DIR [RUN_DIR ...]")]
    """Run directories, or folders searched for them."""
    last: int = 5
    """Training rates average each run's last N steps (fewer where a run has fewer)."""
    format: Literal["md", "csv", "json"] = "md"
    """Output format: markdown tables, CSV sections or one JSON document."""
    out: Annotated[str | None, _computed("FILE")] = None
    """Write the tables to FILE (default: stdout)."""
    matched_threshold: float = 0.10
    """|Δsolve| at or below this counts as matched solve."""
    include_incomplete: bool = False
    """Also average runs without summary.json (killed or running)."""


def cmd_results(argv: list[str]) -> int:
    from .report import results_cli

    a = _cli(ResultsArgs, args=argv, prog="projected-grpo results")
    return results_cli(a.run_dirs, last=a.last, fmt=a.format, out=a.out, matched_threshold=a.matched_threshold,
                       include_incomplete=a.include_incomplete)


@dataclass
class PlotArgs:
    """Training dynamics per arm (mean and band across seeds)."""

    run_dirs: Annotated[tyro.conf.Positional[list[str]], _computed("RUN_DIR [RUN_DIR ...]")]
    """Run directories, or folders searched for them."""
    out: str = "dynamics.png"
    """Image file (PNG; .pdf and .svg work too)."""
    band: Literal["se", "minmax"] = "se"
    """Band around the mean over seeds: ± standard error, or min to max."""
    smooth: int = 1
    """Trailing mean over this many steps on the training panels (1 = raw)."""


def cmd_plot(argv: list[str]) -> int:
    from .report import plot_cli

    a = _cli(PlotArgs, args=argv, prog="projected-grpo plot")
    return plot_cli(a.run_dirs, a.out, band=a.band, smooth=a.smooth)


@dataclass
class ExportArgs:
    """Merge δS (δS_hack ablated) into the base weights and save a plain transformers model with a model card."""

    run_dir: tyro.conf.Positional[str]
    """A finished run directory (with ckpt/knobs.safetensors)."""
    out: str = "export"
    """Folder for the transformers model (config, safetensors, tokenizer) and its model card README.md."""
    allow_partial: bool = False
    """Export an unfinished run too (killed or still running; its model card says so)."""


def cmd_export(argv: list[str]) -> int:
    from .export import export_run

    a = _cli(ExportArgs, args=argv, prog="projected-grpo export")
    out = export_run(a.run_dir, a.out, allow_partial=a.allow_partial)
    print(f"exported {a.run_dir} (δS merged, δS_hack ablated) to {out}; model card: {out / 'README.md'}")
    return 0


@dataclass
class RunnerArgs:
    """The runner flags of `sweep` and `study` (runner.py; `runner.resolve` fills the defaults)."""

    backend: Annotated[Literal["local", "ray"] | None, _computed("{local,ray}")] = None
    """`local` (subprocess pool, default) or `ray` (tasks on a local instance or --address)."""
    workers: Annotated[int | None, _computed("N")] = None
    """Runs at once (default: one per GPU, else cores // 2)."""
    sandbox_workers: Annotated[int | None, _computed("N")] = None
    """Grader processes per run (default: cores // workers - 1, at least 1)."""
    address: Annotated[str | None, _computed("ADDR")] = None
    """Ray cluster to join (e.g. `auto` or `ray://head:10001`); default: start a local instance."""
    cpus_per_run: Annotated[float | None, _computed("N")] = None
    """Ray CPU request per run (default: cores // workers)."""
    gpus_per_run: Annotated[float | None, _computed("N")] = None
    """Ray GPU request per run (default: 1 when the cluster has GPUs, else 0)."""


@dataclass
class SweepArgs:
    """Arms × vhack sources × seeds × any config grid, one `train` run dir each under --out; skips finished
    runs and resumes killed ones; ends with results.md and dynamics.png. Flags win over --file's keys."""

    file: Annotated[str | None, _computed("FILE")] = None
    """TOML grid (keys: preset arms sources seeds out backend workers..., tables [overrides] and [grid])."""
    out: Annotated[str | None, _computed("DIR")] = None
    """Sweep folder (default runs/sweep-<plan hash>)."""
    preset: Annotated[str | None, _computed("NAME")] = None
    """Preset every run starts from: smoke demo fast full (default smoke; `train --help` says what each is)."""
    arms: Annotated[tuple[str, ...] | None, _computed("ARM [ARM ...]", ("--intervention",))] = None
    """Interventions none erase route, space- or comma-separated (default: all three)."""
    sources: Annotated[tuple[str, ...] | None, _computed("SOURCE [SOURCE ...]", ("--vhack-source",))] = None
    """vhack sources: real and/or the controls random label_permuted matched_capture nonhack (default real)."""
    seeds: Annotated[tuple[int, ...] | None, _computed("N [N ...]", ("--seed",))] = None
    """Seeds, space- or comma-separated (default 0)."""
    set: tyro.conf.UseAppendAction[list[str]] = dataclasses.field(default_factory=list)
    """FIELD=VALUE for every run, e.g. --set steps=30 --set modes=run_tests,sentinel."""
    grid: tyro.conf.UseAppendAction[list[str]] = dataclasses.field(default_factory=list)
    """FIELD=V1,V2 swept over, e.g. --grid lr=1e-3,3e-3 (tuple fields separate values with ;)."""
    runner: tyro.conf.OmitArgPrefixes[RunnerArgs] = dataclasses.field(default_factory=RunnerArgs)
    """How the runs are run (the same flags as `study`)."""
    dry_run: bool = False
    """Write sweep.json and print the plan without running anything."""


def cmd_sweep(argv: list[str]) -> int:
    from .sweep import sweep

    return sweep(_cli(SweepArgs, args=argv, prog="projected-grpo sweep"))


@dataclass
class StudyArgs:
    """The five questions of the study (headline, controls, no_teacher, lomo, update) as runs shared where
    configs are equal, then <out>/study.md with one table and computed readings per question (docs/STUDY.md)."""

    preset: Annotated[str, tyro.conf.arg(metavar="NAME")]
    """Preset every run starts from: smoke demo fast full (`train --help` says what each is)."""
    seeds: Annotated[tuple[int, ...], tyro.conf.arg(metavar="N [N ...]", aliases=("--seed",))] = (0, 1, 2)
    """Seeds of every config, space- or comma-separated (n >= 3 for the readings; fewer is flagged in the report)."""
    out: Annotated[str | None, _computed("DIR")] = None
    """Study folder (default runs/study-<preset>); runs go to <out>/runs/."""
    set: tyro.conf.UseAppendAction[list[str]] = dataclasses.field(default_factory=list)
    """FIELD=VALUE for every run, e.g. --set steps=30 --set modes=run_tests,sentinel."""
    only: Annotated[tuple[str, ...], tyro.conf.arg(metavar="QUESTION [QUESTION ...]")] = (
        "headline", "controls", "no_teacher", "lomo", "update")
    """Questions to run and report (space- or comma-separated)."""
    holdout: Annotated[tuple[str, ...] | None, _computed("MODE [MODE ...]")] = None
    """Leave-one-mode-out: the modes to hold out (default: every mode of the config)."""
    runner: tyro.conf.OmitArgPrefixes[RunnerArgs] = dataclasses.field(default_factory=RunnerArgs)
    """How the runs are run (the same flags as `sweep`)."""
    last: Annotated[int | None, _computed("N")] = None
    """Training numbers average the last N steps (default: the config's summary_last_n)."""
    threshold: float = 0.10
    """Matched solve: |mean Δsolve| at or below this."""
    dry_run: bool = False
    """Write plan.json and print the run counts without running anything."""


def cmd_study(argv: list[str]) -> int:
    from .study import command_line, study

    return study(_cli(StudyArgs, args=argv, prog="projected-grpo study"), command_line(argv))


COMMANDS = {"train": cmd_train, "demo": cmd_demo, "check": cmd_check, "grade": cmd_grade, "eval": cmd_eval,
            "results": cmd_results,
            "plot": cmd_plot, "export": cmd_export, "sweep": cmd_sweep,
            "study": cmd_study}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0 if argv else 2
    verb, rest = argv[0], argv[1:]
    if verb not in COMMANDS:
        print(f"error: unknown command {verb!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    from .errors import UserError

    try:
        return COMMANDS[verb](rest) or 0
    except UserError as e:  # ConfigError, ModelLoadError, AdapterError, ReportError, TrackerError, FastGenError...
        print(f"error: {e.one_line()}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the user gave that cannot be read or written
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM turned into one by the trainer (train.Interrupted)
        from .interrupts import stopped_line

        print(stopped_line(e, verb), file=sys.stderr)
        return 128 + getattr(e, "signum", 2)


if __name__ == "__main__":
    sys.exit(main())
