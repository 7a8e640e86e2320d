"""Results tables and dynamics plots, read from run directories only (never from a live trainer).

A run directory holds `config.json` (config, `hash`, `match_hash`, `arm`), `metrics.jsonl` (one row per
optimizer step) and, when the run finished, `summary.json`. Rules the tables keep:

- Seeds of one config share `hash`; different hashes never average together.
- Paired deltas compare a run with vanilla (intervention `none`, basis `real`) of the same seed and
  the same `match_hash` (config minus arm, basis and seed). Runs with no such vanilla are listed.
- Hack/solve for deltas: the greedy evaluation (`hack_kept`/`solve_kept`, route also
  `hack_abl`/`solve_abl`) when every pair of a group has it, else the last-N student train rates
  (`hack_s`/`solve_s`); the `numbers` column says which. Route ablated needs the evaluation.
- Runs without `summary.json` (killed or still running) are shown in the per-run table and left out
  of the aggregates unless `include_incomplete=True`.

Owns the paired analysis, the project's central claim (Δhack at matched solve, paired by seed against
vanilla): `hack_solve` (which numbers a run gives), `Paired` / `SeedPair` / `Delta` (per-seed numbers,
paired Δ with its bootstrap interval and sign-flip p, the matched-solve verdict) and the one markdown
table writer `md_table`; study.py builds its readings on them. Never imports torch, the trainer or the
model code: it reads run directories only.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, NamedTuple, Sequence

from . import rundir, stats
from .errors import UserError

Fmt = Literal["md", "csv", "json"]
TRAIN_KEYS = ("hack_s", "solve_s", "cin_s", "cin_t", "cout", "cout_update")
EVAL_KEYS = ("hack_kept", "solve_kept", "hack_abl", "solve_abl")
# metric names of older run dirs -> today's (one name per metric: solve_s was logged as gt_s)
RENAMED = {"gt_s": "solve_s", "gt_t": "solve_t"}
_ARM_ORDER = {"none": 0, "erase": 1, "route": 2, "baseline": 3}


class ReportError(UserError, ValueError):
    """Bad input to the report (not a run dir, malformed JSON...); the CLI prints it as one line."""


# ----------------------------------------------------------------------------- loading
@dataclass
class Run:
    path: Path
    config: dict
    hash: str
    match_hash: str
    arm: str
    seed: int
    rows: list[dict]  # one per step, sorted by step (last row wins on duplicates)
    summary: dict | None  # None: killed or still running
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def intervention(self) -> str:
        return str(self.config.get("intervention", "none"))

    @property
    def source(self) -> str:
        return str(self.config.get("vhack_source", "real"))

    @property
    def is_vanilla(self) -> bool:
        return self.intervention == "none" and self.source == "real" and self.config.get("grader", "flawed") != "strict"

    @property
    def complete(self) -> bool:
        return self.summary is not None

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) where `key` is logged and not null."""
        pts = [(r["step"], float(r[key])) for r in self.rows if _num(r.get(key))]
        return [p[0] for p in pts], [p[1] for p in pts]

    def last_mean(self, key: str, n: int) -> float | None:
        """Mean of `key` over the last `n` steps (nulls skipped); None when nothing was logged."""
        vals = [float(r[key]) for r in self.rows[-n:] if _num(r.get(key))]
        return sum(vals) / len(vals) if vals else None

    def last_value(self, key: str) -> float | None:
        """The last non-null value of `key` (evaluation metrics appear only on evaluation steps)."""
        vals = self.series(key)[1]
        return vals[-1] if vals else None


def _no_student_rows(config: dict) -> bool:
    """Every row of a group is a teacher completion (config.Config.student_per_group == 0)."""
    g, m = config.get("group"), config.get("mix_ratio")
    return isinstance(g, int) and isinstance(m, (int, float)) and g - round(g * m) <= 0


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: malformed JSON at line {e.lineno}: {e.msg}") from None
    except OSError as e:
        raise ReportError(f"{path}: cannot read ({e.strerror})") from None


def load_run(path: str | Path) -> Run:
    """Read one run directory; raises ReportError naming the file (and line) that is wrong."""
    p = Path(path)
    if not rundir.is_run(p):
        raise ReportError(f"{p}: not a run directory (no {rundir.CONFIG})")
    meta = _read_json(p / rundir.CONFIG)
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ReportError(f"{p / rundir.CONFIG}: expected an object with a 'config' object")
    for k in ("hash", "match_hash"):
        if not isinstance(meta.get(k), str):
            raise ReportError(f"{p / rundir.CONFIG}: missing '{k}'")
    cfg = meta["config"]
    run = Run(path=p, config=cfg, hash=meta["hash"], match_hash=meta["match_hash"], arm="", seed=0, rows=[],
              summary=None)
    run.arm = str(meta.get("arm") or (run.intervention if run.source == "real" else f"{run.intervention}-{run.source}"))
    if not isinstance(cfg.get("seed", 0), int):
        raise ReportError(f"{p / rundir.CONFIG}: seed must be an integer, got {cfg.get('seed')!r}")
    run.seed = int(cfg.get("seed", 0))
    run.rows = _read_metrics(p / rundir.METRICS, run.notes)
    if rundir.is_done(p):
        run.summary = _read_json(p / rundir.SUMMARY)
    return run


def _read_metrics(path: Path, notes: list[str]) -> list[dict]:
    if not path.is_file():
        notes.append(f"{path.parent.name}: no {rundir.METRICS}")
        return []
    try:  # a killed writer's partial last line is skipped (noted); any other bad line is an error
        rows = rundir.read_metrics(path.parent, strict=True, notes=notes)
    except rundir.RunDirError as e:
        raise ReportError(str(e)) from None
    for row in rows:
        for old, new in RENAMED.items():  # run dirs written before the rename read the same
            if old in row and new not in row:
                row[new] = row.pop(old)
    return rows


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Run dirs among `paths`; a folder that is not a run dir is searched for run dirs below it."""
    found: dict[Path, None] = {}
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise ReportError(f"{p}: no such file or directory")
        if rundir.is_run(p):
            found[p.resolve()] = None
            continue
        if not p.is_dir():
            raise ReportError(f"{p}: not a run directory (no config.json)")
        below = sorted({c.parent for c in p.rglob(rundir.CONFIG) if _looks_like_run(c)})
        below = [d for d in below if not any(a in below for a in d.parents)]  # skip run dirs' insides
        if not below:
            raise ReportError(f"{p}: not a run directory and holds none (no config.json below it)")
        found.update({d.resolve(): None for d in below})
    if not found:
        raise ReportError("no run directories given")
    return sorted(found)


def _looks_like_run(config_json: Path) -> bool:
    """Below a folder, only configs written by the trainer count (a model folder has a config.json too)."""
    try:
        return '"match_hash"' in config_json.read_text(errors="replace")[:200_000]
    except OSError:
        return False


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    return [load_run(d) for d in find_run_dirs(paths)]


# ----------------------------------------------------------------------------- statistics
class MeanSE(NamedTuple):
    mean: float
    se: float | None  # sample std (ddof=1) / sqrt(n); None when n < 2
    n: int


def mean_se(values: Iterable[float | None]) -> MeanSE | None:
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return MeanSE(m, None, 1)
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    return MeanSE(m, math.sqrt(var / len(xs)), len(xs))


# ----------------------------------------------------------------------------- the paired analysis
# The project's central claim, "Δhack at matched solve, paired by seed against vanilla", is computed
# here and only here: `results` renders it as tables, study.py builds its readings on these records.
def hack_solve(run: Run, view: str = "kept", numbers: str = "eval", last: int = 5) -> tuple[float | None, float | None]:
    """(hack, solve) of a run: its last evaluation of `view` (`hack_kept`/`solve_kept`; `ablated`:
    `hack_abl`/`solve_abl`, δS_hack zeroed) when `numbers` is "eval", else the means of the student's
    training rates (`hack_s`/`solve_s`) over the last `last` steps (training has one view)."""
    if numbers == "train":
        return run.last_mean("hack_s", last), run.last_mean("solve_s", last)
    sfx = "abl" if view == "ablated" else "kept"
    return run.last_value(f"hack_{sfx}"), run.last_value(f"solve_{sfx}")


def evaluated(run: Run, view: str = "kept") -> bool:
    """Whether the run logged an evaluation's hack and solve of `view` (so "eval" numbers exist)."""
    return None not in hack_solve(run, view, "eval")


def matched_solve(d_solve: float | None, both_zero: bool, threshold: float) -> bool | str | None:
    """|Δsolve| ≤ threshold; "n/a" when both solve rates are 0 (0 vs 0 says nothing about skill)."""
    if d_solve is None:
        return None
    return "n/a" if both_zero else abs(d_solve) <= threshold + 1e-12


@dataclass(frozen=True)
class Delta:
    """a − b, paired: the per-pair differences in pair (seed) order; pairs missing a side are dropped."""

    diffs: tuple[float, ...]

    @classmethod
    def of(cls, pairs: Iterable[tuple[float | None, float | None]]) -> "Delta":
        return cls(tuple(a - b for a, b in pairs if a is not None and b is not None))

    @classmethod
    def by_seed(cls, a: dict[int, float | None], b: dict[int, float | None]) -> "Delta":
        """Over the seeds of both (sorted): e.g. hack of two arms that share each seed's vanilla."""
        return cls.of((a[s], b[s]) for s in sorted(a) if s in b)

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean_se(self) -> MeanSE | None:
        return mean_se(self.diffs)

    @functools.cached_property
    def ci(self) -> tuple[float, float] | None:
        """95 % paired bootstrap interval of the mean, seeds resampled (stats.bootstrap_ci); None for n < 2."""
        return stats.bootstrap_ci(self.diffs)

    @functools.cached_property
    def p(self) -> float | None:
        """Exact one-sided sign-flip p of "mean < 0" (stats.sign_flip_p); None for n = 0."""
        return stats.sign_flip_p(self.diffs)


@dataclass(frozen=True)
class SeedPair:
    """One seed: an arm's run and the vanilla run it is paired with, and their hack and solve (None: not logged)."""

    run: Run
    vanilla: Run
    hack: float | None
    hack_vanilla: float | None
    solve: float | None
    solve_vanilla: float | None

    @property
    def seed(self) -> int:
        return self.run.seed

    @property
    def d_hack(self) -> float | None:
        return None if self.hack is None or self.hack_vanilla is None else self.hack - self.hack_vanilla

    @property
    def d_solve(self) -> float | None:
        return None if self.solve is None or self.solve_vanilla is None else self.solve - self.solve_vanilla

    @property
    def both_zero(self) -> bool:
        return self.solve == 0 and self.solve_vanilla == 0

    def matched(self, threshold: float) -> bool | str | None:
        return matched_solve(self.d_solve, self.both_zero, threshold)


@dataclass(frozen=True)
class Paired:
    """An arm read as `view` against vanilla (read `kept`: vanilla's δS_hack is 0), paired by seed, from
    `numbers` ("eval" or "train"). Δ = arm − vanilla per seed, mean ± SE over seeds; matched solve:
    |mean Δsolve| ≤ `threshold`, "n/a" when every solve rate of both sides is 0."""

    view: str
    numbers: str
    threshold: float
    pairs: tuple[SeedPair, ...]  # in seed order (the bootstrap's draws depend on it)

    @classmethod
    def of(cls, pairs: Iterable[tuple[Run, Run]], view: str, numbers: str, last: int, threshold: float) -> "Paired":
        """`pairs`: (arm run, its vanilla run), one per seed, in seed order."""
        out = []
        for r, v in pairs:
            (h, s), (hv, sv) = hack_solve(r, view, numbers, last), hack_solve(v, "kept", numbers, last)
            out.append(SeedPair(r, v, h, hv, s, sv))
        return cls(view, numbers, threshold, tuple(out))

    @functools.cached_property
    def hack(self) -> Delta:
        return Delta.of((p.hack, p.hack_vanilla) for p in self.pairs)

    @functools.cached_property
    def solve(self) -> Delta:
        return Delta.of((p.solve, p.solve_vanilla) for p in self.pairs)

    @property
    def d_hack(self) -> MeanSE | None:
        return self.hack.mean_se

    @property
    def d_solve(self) -> MeanSE | None:
        return self.solve.mean_se

    @property
    def both_zero(self) -> bool:
        """Every solve rate of the arm and of its vanilla is 0 (over the seeds where both are known)."""
        known = [p for p in self.pairs if p.d_solve is not None]
        return bool(known) and all(p.both_zero for p in known)

    @property
    def matched(self) -> bool | str | None:
        ds = self.d_solve
        return matched_solve(None if ds is None else ds.mean, self.both_zero, self.threshold)

    @property
    def seeds_matched(self) -> str:
        """"k/n": the seeds whose own |Δsolve| ≤ threshold, of the n seeds whose Δsolve is known."""
        ds = [p.d_solve for p in self.pairs if p.d_solve is not None]
        return f"{sum(matched_solve(d, False, self.threshold) is True for d in ds)}/{len(ds)}"

    def problem_ci(self) -> tuple[float, float] | None:
        """Two-stage (seeds, then held-out problems) paired bootstrap 95 % interval of Δhack from the per-problem
        outcomes of the runs' last evaluation (`eval_problem_hack_*`); None when not logged or not eval numbers."""
        if self.numbers != "eval":
            return None
        sfx = "abl" if self.view == "ablated" else "kept"
        got = [(_last_list(p.run, f"eval_problem_hack_{sfx}"), _last_list(p.vanilla, "eval_problem_hack_kept"))
               for p in self.pairs]
        got = [(a, b) for a, b in got if a is not None and b is not None]
        return stats.hier_bootstrap_ci([a for a, _ in got], [b for _, b in got]) if len(got) >= 2 else None


def _last_list(run: Run, key: str) -> list[float] | None:
    vals = [r[key] for r in run.rows if isinstance(r.get(key), list)]
    return vals[-1] if vals else None


def _arm_key(run: Run) -> tuple:
    return (run.match_hash, _ARM_ORDER.get(run.arm, _ARM_ORDER.get(run.intervention, 9)), run.source != "real", run.arm,
            run.hash)


# ----------------------------------------------------------------------------- tables
@dataclass
class Table:
    key: str
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    delta_cols: tuple[str, ...] = ()  # printed with a sign


def _by_hash(runs: Sequence[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for r in sorted(runs, key=lambda r: (_arm_key(r), r.seed, str(r.path))):
        groups.setdefault(r.hash, []).append(r)
    return groups


def build_tables(runs: Sequence[Run], last: int = 5, matched_threshold: float = 0.10,
                 include_incomplete: bool = False) -> tuple[list[Table], list[str]]:
    """All tables of the report, with raw values (rendering happens elsewhere), and notes."""
    notes = [n for r in runs for n in r.notes]
    ordered = sorted(runs, key=lambda r: (_arm_key(r), r.seed, str(r.path)))

    per_run = Table("runs", f"Runs (training columns: means over the last {last} steps, all steps of a run with fewer: "
                    f"last_n says how many; eval = last evaluation)",
                    ["run", "arm", "source", "seed", "steps", "last_n", "status", "hash", "match_hash", *TRAIN_KEYS,
                     *EVAL_KEYS])
    for r in ordered:
        planned = r.config.get("steps")
        done = sum(1 for row in r.rows if row["step"] > 0)  # step 0 = the untrained model's evaluation
        steps = f"{done}/{planned}" if planned is not None else str(done)
        per_run.rows.append([r.name, r.arm, r.source, r.seed, steps, min(last, done), "done" if r.complete else "incomplete",
                             r.hash, r.match_hash, *(r.last_mean(k, last) for k in TRAIN_KEYS),
                             *(r.last_value(k) for k in EVAL_KEYS)])

    if teacher_only := [r.name for r in ordered if _no_student_rows(r.config)]:
        notes.append("no student samples (round(group x mix_ratio) = group, e.g. --mix-ratio 1): hack_s, solve_s and "
                     "cin_s are – (not measured, not 0) in " + ", ".join(teacher_only))
    agg = [r for r in runs if r.complete or include_incomplete]
    excluded = [r for r in runs if r not in agg]
    if excluded:
        notes.append("left out of the aggregates (no summary.json, killed or running): "
                     + ", ".join(r.name for r in excluded) + "; include them with --include-incomplete")

    groups = _by_hash(agg)
    grouped = Table("groups", "By config hash (mean ± SE across seeds; SE = sample std / √n)",
                    ["hash", "match_hash", "arm", "source", "n", "seeds", *TRAIN_KEYS, *EVAL_KEYS])
    for h, rs in groups.items():
        seeds = [r.seed for r in rs]
        if len(set(seeds)) < len(seeds):
            notes.append(f"hash {h}: the same seed appears in several runs ({sorted(seeds)}); each counts in n")
        grouped.rows.append([h, rs[0].match_hash, rs[0].arm, rs[0].source, len(rs), ",".join(map(str, seeds)),
                             *(mean_se(r.last_mean(k, last) for r in rs) for k in TRAIN_KEYS),
                             *(mean_se(r.last_value(k) for r in rs) for k in EVAL_KEYS)])

    # --- paired deltas against vanilla of the same seed and match_hash
    vanilla: dict[tuple[str, int], list[Run]] = {}
    for r in agg:
        if r.is_vanilla:
            vanilla.setdefault((r.match_hash, r.seed), []).append(r)
    for (m, s), vs in vanilla.items():
        if len(vs) > 1:
            notes.append(f"match {m} seed {s}: {len(vs)} vanilla runs; pairing with {vs[0].name}")

    cols = ["match_hash", "arm", "source", "view", "numbers", "seed", "run", "vanilla",
            "hack", "hack_vanilla", "Δhack", "solve", "solve_vanilla", "Δsolve", "matched_solve"]
    per_seed = Table("paired", f"Paired vs vanilla, per seed (matched_solve: |Δsolve| ≤ {matched_threshold:g})",
                     cols, delta_cols=("Δhack", "Δsolve"))
    summary = Table("paired_summary", f"Paired vs vanilla, mean ± SE over seeds "
                    f"(matched_solve: |mean Δsolve| ≤ {matched_threshold:g})",
                    ["match_hash", "hash", "arm", "source", "view", "numbers", "n", "Δhack", "Δsolve",
                     "matched_solve", "seeds_matched"], delta_cols=("Δhack", "Δsolve"))
    unmatched = Table("unmatched", "Runs with no vanilla at the same seed and match hash (not in the paired tables)",
                      ["run", "arm", "source", "seed", "hash", "match_hash"])
    for h, rs in groups.items():
        if rs[0].is_vanilla:
            continue
        pairs = []
        for r in rs:
            v = vanilla.get((r.match_hash, r.seed))
            if v:
                pairs.append((r, v[0]))
            else:
                unmatched.rows.append([r.name, r.arm, r.source, r.seed, r.hash, r.match_hash])
        if not pairs:
            continue
        views = ["kept", "ablated"] if rs[0].intervention == "route" else ["kept"]
        for view in views:
            numbers = "eval" if all(evaluated(r, view) and evaluated(v) for r, v in pairs) else "train"
            if view == "ablated" and numbers == "train":
                notes.append(f"hash {h} ({rs[0].arm}): no ablated row, it needs hack_abl/solve_abl from an "
                             "evaluation in every paired run (and hack_kept/solve_kept in their vanilla)")
                continue
            pd = Paired.of(pairs, view, numbers, last, matched_threshold)
            for p in pd.pairs:
                per_seed.rows.append([p.run.match_hash, p.run.arm, p.run.source, view, numbers, p.seed, p.run.name,
                                      p.vanilla.name, p.hack, p.hack_vanilla, p.d_hack, p.solve, p.solve_vanilla,
                                      p.d_solve, p.matched(matched_threshold)])
            summary.rows.append([rs[0].match_hash, h, rs[0].arm, rs[0].source, view, numbers, len(pairs), pd.d_hack,
                                 pd.d_solve, pd.matched, pd.seeds_matched])
    return [per_run, grouped, summary, per_seed, unmatched], notes


# ----------------------------------------------------------------------------- rendering
def _fmt(v: Any, delta: bool = False) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, MeanSE):
        m = _fmt(v.mean, delta)
        return m if v.se is None else f"{m} ± {v.se:.3f}"
    if isinstance(v, float):
        return f"{v:+.3f}" if delta else f"{v:.3f}"
    return str(v)


def md_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], delta_cols: Iterable[str] = (),
             cell: Callable[[Any, bool], str] = _fmt, empty: str = "(none)") -> list[str]:
    """The markdown lines of one table (header, rule, a line per row; `empty` when there are no rows).
    `cell(value, is_delta)` formats a value; columns in `delta_cols` are printed with a sign."""
    if not rows:
        return [empty]
    delta = set(delta_cols)
    return ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|",
            *("| " + " | ".join(cell(v, c in delta) for c, v in zip(columns, row)) + " |" for row in rows)]


def _render_md(tables: list[Table], notes: list[str]) -> str:
    out = []
    for t in tables:
        out += [f"## {t.title}\n", *md_table(t.columns, t.rows, t.delta_cols), ""]
    if notes:
        out.append("## Notes\n")
        out += [f"- {n}" for n in notes]
        out.append("")
    return "\n".join(out)


def _render_csv(tables: list[Table]) -> str:
    """Sections, each `# key: title`, a header and rows, separated by a blank line; mean ± SE → two columns."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for t in tables:
        buf.write(f"# {t.key}: {t.title}\n")
        ms_cols = {i for i, _ in enumerate(t.columns) if any(isinstance(r[i], MeanSE) for r in t.rows)}
        w.writerow([h for i, c in enumerate(t.columns) for h in ([c, f"{c}_se"] if i in ms_cols else [c])])
        for row in t.rows:
            cells: list[Any] = []
            for i, v in enumerate(row):
                if i in ms_cols:
                    cells += ["", ""] if v is None else [v.mean, "" if v.se is None else v.se]
                else:
                    cells.append("" if v is None else v)
            w.writerow(cells)
        buf.write("\n")
    return buf.getvalue()


def _jsonable(v: Any) -> Any:
    return {"mean": v.mean, "se": v.se, "n": v.n} if isinstance(v, MeanSE) else v


def _render_json(tables: list[Table], notes: list[str], last: int, threshold: float) -> str:
    doc: dict[str, Any] = {"last": last, "matched_threshold": threshold}
    for t in tables:
        doc[t.key] = [{c: _jsonable(v) for c, v in zip(t.columns, row)} for row in t.rows]
    doc["notes"] = notes
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def results(run_dirs: Sequence[str | Path], last: int = 5, fmt: Fmt = "md", matched_threshold: float = 0.10,
            include_incomplete: bool = False) -> str:
    """Per-run, grouped and paired-delta tables of the given run dirs (or folders holding run dirs)."""
    if fmt not in ("md", "csv", "json"):
        raise ReportError(f"unknown format {fmt!r}; choose md, csv or json")
    if last <= 0:
        raise ReportError(f"--last must be positive, got {last}")
    if not matched_threshold >= 0:  # nan too
        raise ReportError(f"matched threshold must be >= 0, got {matched_threshold}")
    runs = load_runs(run_dirs)
    tables, notes = build_tables(runs, last, matched_threshold, include_incomplete)
    if fmt == "md":
        return _render_md(tables, notes)
    if fmt == "csv":
        return _render_csv(tables)
    return _render_json(tables, notes, last, matched_threshold)


# ----------------------------------------------------------------------------- plots
# (title, y label, [(metric, line style, legend label)], eval panel?, a rate or share in [0, 1]?)
_PANELS: list[tuple[str, str, list[tuple[str, str, str]], bool, bool]] = [
    ("Student hack rate (train)", "fraction exploited", [("hack_s", "-", "hack_s")], False, True),
    ("Student solve rate (train, strict grader)", "fraction correct", [("solve_s", "-", "solve_s")], False, True),
    ("Reward (foolable grader)", "mean reward", [("reward", "-", "reward")], False, False),
    ("Hack-ward gradient share, before projection", "‖relu(Vg)‖ / ‖g‖",
     [("cin_s", "-", "cin_s (student)"), ("cin_t", "--", "cin_t (teacher)")], False, True),
    ("Hack-ward share after projection", "‖relu(Vg)‖ / ‖g‖",
     [("cout", "-", "cout (gradient)"), ("cout_update", "--", "cout_update (AdamW update)")], False, True),
    ("Quarantine knob ‖δS_hack‖ (0 unless route)", "L2 norm", [("dSh", "-", "dSh")], False, False),
    ("Eval hack rate (greedy, held out)", "fraction exploited",
     [("hack_kept", "-", "kept"), ("hack_abl", "--", "δS_hack ablated (route)")], True, True),
    ("Eval solve rate (greedy, held out)", "fraction correct",
     [("solve_kept", "-", "kept"), ("solve_abl", "--", "δS_hack ablated (route)")], True, True),
]
RATE_YLIM = (-0.04, 1.04)  # [0, 1] with room for markers drawn at 0 and 1
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]  # one per line group: arms that coincide stay visible
_ARM_COLORS = {"none": "black", "erase": "tab:blue", "route": "tab:red", "baseline": "tab:green"}
_SPARE = ["tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]


def _smooth(vals: list[float], w: int) -> list[float]:
    if w <= 1:
        return vals
    return [sum(vals[max(0, i - w + 1): i + 1]) / len(vals[max(0, i - w + 1): i + 1]) for i in range(len(vals))]


def _aggregate(runs: Sequence[Run], key: str, band: str, smooth: int):
    """Per step across runs: steps, mean, band low, band high (NaN band where n < 2)."""
    per: dict[int, list[float]] = {}
    for r in runs:
        steps, vals = r.series(key)
        for s, v in zip(steps, _smooth(vals, smooth)):
            per.setdefault(s, []).append(v)
    xs = sorted(per)
    mean, lo, hi = [], [], []
    for s in xs:
        ms = mean_se(per[s])
        assert ms is not None
        mean.append(ms.mean)
        if band == "minmax" and ms.n > 1:
            lo.append(min(per[s]))
            hi.append(max(per[s]))
        elif ms.se is not None:
            lo.append(ms.mean - ms.se)
            hi.append(ms.mean + ms.se)
        else:
            lo.append(math.nan)
            hi.append(math.nan)
    return xs, mean, lo, hi


def plot(run_dirs: Sequence[str | Path], out: str | Path, band: Literal["se", "minmax"] = "se",
         smooth: int = 1, title: str | None = None) -> Path:
    """Dynamics per arm (one line per config hash, mean over seeds with a band) → PNG at `out`."""
    path = Path(out)
    if path.is_dir():  # savefig would write `out`.png beside it and the CLI would say it wrote `out`
        raise ReportError(f"--out {path} is a folder; give an image file, e.g. {path / 'dynamics.png'}")
    fig = dynamics_figure(run_dirs, band, smooth, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path)
    except ValueError as e:  # e.g. an unknown file extension
        raise ReportError(f"{path}: {e}") from None
    return path


def dynamics_figure(run_dirs: Sequence[str | Path], band: Literal["se", "minmax"] = "se", smooth: int = 1,
                    title: str | None = None):
    """The figure `plot` saves: 2 x 4 panels (the order of `_PANELS`), a legend per line group.

    Readability rules, pinned by tests: step ticks are integers; rate panels span [0, 1] (bands clipped
    to it); each line group has its own marker and a small x offset, so arms with equal values stay
    visible; every panel shows the run's whole step range (a single evaluation point gets one too)."""
    if band not in ("se", "minmax"):
        raise ReportError(f"unknown band {band!r}; choose se or minmax")
    if smooth < 1:
        raise ReportError(f"smoothing window must be >= 1, got {smooth}")
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg without touching the global backend
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    runs = load_runs(run_dirs)
    groups = _by_hash(runs)
    spare = iter(_SPARE * 4)
    colors: dict[str, str] = {}
    used: set[str] = set()
    for h, rs in groups.items():
        c = _ARM_COLORS.get(rs[0].arm)
        colors[h] = c if c and c not in used else next(spare)
        used.add(colors[h])
    markers = {h: _MARKERS[i % len(_MARKERS)] for i, h in enumerate(groups)}
    all_steps = [row["step"] for r in runs for row in r.rows]
    lo_step, hi_step = (min(all_steps), max(all_steps)) if all_steps else (0, 1)
    # offsets: at most ±15% of one step across the groups, never more than the gap to the next step
    width = 0.3 if len(groups) > 1 else 0.0
    offsets = {h: (i / (len(groups) - 1) - 0.5) * width if len(groups) > 1 else 0.0 for i, h in enumerate(groups)}

    fig = Figure(figsize=(20, 10.5), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 4).ravel()
    for ax, (ptitle, ylabel, series, is_eval, is_rate) in zip(axes, _PANELS):
        drawn_styles = set()
        for h, rs in groups.items():
            for key, ls, _ in series:
                if key.endswith("_abl") and rs[0].intervention != "route":
                    continue  # ablating a zero δS_hack changes nothing: kept == ablated
                xs, mean, lo, hi = _aggregate(rs, key, band, 1 if is_eval else smooth)
                if not xs:
                    continue
                drawn_styles.add(key)
                if is_rate:
                    lo = [min(max(v, 0.0), 1.0) for v in lo]
                    hi = [min(max(v, 0.0), 1.0) for v in hi]
                xo = [x + offsets[h] for x in xs]
                ax.plot(xo, mean, ls, color=colors[h], lw=1.8, marker=markers[h], ms=5 if is_eval else 3.5,
                        markevery=max(1, len(xs) // 25), mfc="white" if ls == "--" else colors[h])
                ax.fill_between(xo, lo, hi, color=colors[h], alpha=0.15, lw=0)
        ax.set_title(ptitle, fontsize=11)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(lo_step - 0.5, max(hi_step, lo_step + 1) + 0.5)
        if is_rate:
            ax.set_ylim(*RATE_YLIM)
        if not drawn_styles:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
        elif len(series) > 1:
            ax.legend([Line2D([], [], color="gray", ls=ls) for key, ls, _ in series if key in drawn_styles],
                      [lab for key, _, lab in series if key in drawn_styles], fontsize=8, loc="best")

    handles, labels = [], []
    for h, rs in groups.items():
        done = sum(r.complete for r in rs)
        lab = f"{rs[0].arm}  [hash {h}, match {rs[0].match_hash}]  n={len(rs)}"
        lab += "" if done == len(rs) else f" ({len(rs) - done} incomplete)"
        handles.append(Line2D([], [], color=colors[h], lw=3, marker=markers[h], ms=7))
        labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=10, frameon=False,
               bbox_to_anchor=(0.5, 0.035))
    band_txt = "± standard error across seeds" if band == "se" else "min–max across seeds"
    matches = sorted({r.match_hash for r in runs})
    fig.suptitle(title or f"Training dynamics per arm — match hash {', '.join(matches)}", fontsize=14)
    fig.text(0.5, 0.008, f"Line: mean across seeds (n per arm in the legend); band: {band_txt} (none when n = 1). "
             + ("Train panels unsmoothed. " if smooth == 1 else f"Train panels: trailing mean over {smooth} steps. ")
             + "Eval panels: markers at evaluation steps; dashed = route with δS_hack ablated (the deployed model). "
             + ("Arms are shifted by up to ±0.15 step so equal values stay visible." if width else ""),
             ha="center", fontsize=9, color="dimgray")
    n_rows = (len(labels) + 2) // 3
    fig.tight_layout(rect=(0, 0.04 + 0.025 * n_rows, 1, 0.96))
    return fig


# ----------------------------------------------------------------------------- CLI glue
def results_cli(run_dirs: Sequence[str], last: int = 5, fmt: Fmt = "md", out: str | None = None,
                matched_threshold: float = 0.10, include_incomplete: bool = False) -> int:
    """`projected-grpo results`: print (or write) the tables; user errors → one line on stderr, exit 2."""
    def go() -> str | None:
        if out and rundir.is_run_file(out):
            raise ReportError(f"--out {out} is a file of the run directory {Path(out).parent}: the tables would "
                              f"overwrite it; pick another file")
        text = results(run_dirs, last, fmt, matched_threshold, include_incomplete)
        if not out:
            sys.stdout.write(text)
            return None
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
        return f"wrote {out}"

    return _one_line_errors(go, out)


def plot_cli(run_dirs: Sequence[str], out: str, band: Literal["se", "minmax"] = "se", smooth: int = 1) -> int:
    """`projected-grpo plot`: write the dynamics PNG; user errors → one line on stderr, exit 2."""
    return _one_line_errors(lambda: f"wrote {plot(run_dirs, out, band=band, smooth=smooth)}", out)


def _one_line_errors(go: Callable[[], str | None], out: str | None) -> int:
    """Run `go` (it returns what to say on stderr); a ReportError or an unwritable `out` is one line, exit 2
    (sweep and demo call these too, so they return a code instead of raising)."""
    try:
        said = go()
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write {out}: {e.strerror}", file=sys.stderr)
        return 2
    if said:
        print(said, file=sys.stderr)
    return 0
