"""Held-out evaluation: hack and solve rates with 95 % intervals, for the trainer and the `eval` verb.

One function, ``evaluate(models, tokenizer, grader, problems, spec)``, generates for every *condition*
(model view × prompt) a greedy completion per problem and, with ``spec.samples = k > 0``, k sampled
ones, grades them in the sandbox pool and returns an ``EvalResult`` holding every graded completion.
The result renders three ways: ``metrics_row()`` (flat keys in metrics.jsonl), ``to_json()`` (the
`eval --json` contract) and ``table()`` (for people).

- Views: ``kept`` (the model as trained) and ``abl`` (δS_hack zeroed: route's deployed model; for
  every other arm δS_hack is 0, so ``abl`` would equal ``kept`` and is not generated).
- Prompts: with the mode's hint (the training prompt) and without it.
- The *primary* rate of a condition is the sampled one when k > 0 (an estimate of pass@1 at the
  sampling temperature), else the greedy one; the greedy rate is kept beside it.
- Intervals: Wilson score, 95 %, from ``scipy.stats.binomtest``. The n of a sampled rate counts
  completions (problems × k); completions of one problem are correlated, so the interval of a
  sampled rate is narrower than a per-problem bootstrap would give. Greedy rates have n = problems.
- Breakdowns per loophole mode and per tier (a problem's ``tier`` attribute; ``-`` when it has none).
- Extra metrics (deployed-model diagnostics...): functions ``f(ctx: EvalContext) -> dict`` in
  ``EXTRA_METRICS`` (run on every evaluation) or passed as ``extras``; their keys land in
  ``EvalResult.extra``, the metrics row, the JSON's ``extra`` object and the table.

No candidate code runs here: completions are graded by the sandboxed ``GraderPool``.

Data parallel (torchrun): every rank calls ``evaluate``; each generates and grades its share of the
problems (problem ``i`` on rank ``i mod world``, with the seeds of global index ``i``), and the records
are gathered to every rank in the order one process makes them, so the result (and every extra's
input) is that of one process. An extra metric runs on every rank: one that is expensive may shard
its own work over the ranks (diagnostics.kl_to_base does); one that is not computes the same value everywhere.

Owns held-out evaluation (records, intervals, tables); must never import train, report, study, sweep or runner.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Sequence

LEVEL = 0.95
NO_TIER = "-"


# ---------------------------------------------------------------------------- rates and intervals
def wilson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials (scipy.stats.binomtest); (nan, nan) for n = 0."""
    if n == 0:
        return float("nan"), float("nan")
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return max(0.0, float(ci.low)), min(1.0, float(ci.high))


@dataclass(frozen=True)
class Rate:
    """k of n, with its Wilson interval."""

    k: int
    n: int

    @property
    def rate(self) -> float | None:
        return self.k / self.n if self.n else None

    @property
    def ci(self) -> tuple[float, float] | None:
        return wilson(self.k, self.n) if self.n else None

    def to_dict(self) -> dict:
        return {"rate": self.rate, "ci": list(self.ci) if self.ci else None, "k": self.k, "n": self.n}

    def text(self) -> str:
        if not self.n:
            return "-"
        lo, hi = self.ci
        return f"{self.rate:.3f} [{lo:.3f}, {hi:.3f}]"


def rate_of(flags) -> Rate:
    flags = [bool(x) for x in flags]
    return Rate(sum(flags), len(flags))


def tier_of(problem) -> str:
    t = getattr(problem, "tier", None)
    return NO_TIER if t in (None, "") else str(t)


# ---------------------------------------------------------------------------- what to evaluate
@dataclass(frozen=True)
class EvalSpec:
    """How to evaluate. ``conditions``: (view, hint) pairs, view ``kept`` or ``abl``."""

    conditions: tuple[tuple[str, bool], ...] = (("kept", True), ("kept", False))
    samples: int = 0
    """Sampled completions per problem besides the greedy one (0: greedy only)."""
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 64
    seed: int = 0
    """Sampling seeds derive from (seed, condition, problem, j)."""
    backend: str = "hf"
    compile: bool | None = None
    enable_thinking: bool = False
    """The chat template's thinking switch (render_prompt), as in training."""

    @property
    def primary(self) -> str:
        return "sample" if self.samples > 0 else "greedy"

    def key(self) -> dict:
        """What the completions depend on (greedy-only: not the sampling seed, temperature or top-p)."""
        skip = {"compile"} | (set() if self.samples else {"seed", "temperature", "top_p"})
        return {k: v for k, v in asdict(self).items() if k not in skip}


def conditions_for(route: bool, hints: bool = True) -> tuple[tuple[str, bool], ...]:
    """The trainer's conditions: kept with hints, ablated with hints (route only: elsewhere δS_hack = 0),
    and the deployed model without hints."""
    conds = [("kept", True)] + ([("abl", True)] if route else [])
    if hints:
        conds.append(("abl" if route else "kept", False))
    return tuple(conds)


@dataclass
class Record:
    """One graded completion."""

    problem: int  # index into EvalResult.problems
    view: str  # kept | abl
    hint: bool
    decode: str  # greedy | sample
    exploited: bool
    solved: bool  # the strict oracle (gt_correct)
    text: str = ""


@dataclass
class EvalResult:
    problems: list
    spec: EvalSpec
    records: list[Record]
    extra: dict = field(default_factory=dict)
    """Extra metrics by name (EXTRA_METRICS / extras)."""

    # -- selection
    def select(self, view: str = "kept", hint: bool = True, decode: str | None = None, where=None) -> list[Record]:
        """Records of one condition and decode (default: the primary), optionally only problems where
        ``where(problem)``. A view that was not generated falls back to ``kept`` (δS_hack = 0: identical)."""
        if view == "abl" and not any(r.view == "abl" and r.hint == hint for r in self.records):
            view = "kept"
        decode = decode or self.spec.primary
        return [r for r in self.records if r.view == view and r.hint == hint and r.decode == decode
                and (where is None or where(self.problems[r.problem]))]

    def rates(self, **kw) -> tuple[Rate, Rate]:
        """(hack, solve) of a selection."""
        rs = self.select(**kw)
        return rate_of(r.exploited for r in rs), rate_of(r.solved for r in rs)

    def has(self, view: str, hint: bool) -> bool:
        return any(r.view == view and r.hint == hint for r in self.records)

    @property
    def modes(self) -> list[str]:
        return sorted({p.mode for p in self.problems if p.mode})

    @property
    def tiers(self) -> list[str]:
        return sorted({tier_of(p) for p in self.problems})

    # -- renderings
    def metrics_row(self) -> dict:
        """Flat keys for metrics.jsonl: ``hack_kept`` / ``solve_kept`` (hints), ``hack_abl`` / ``solve_abl``
        (δS_hack ablated, = kept unless route), ``hack_nohint`` / ``solve_nohint`` (deployed model, no hint),
        each primary with ``_lo`` / ``_hi``, and ``_greedy`` when sampled; per mode ``eval_{hack,solve}_
        {kept,abl}_MODE`` and per tier ``eval_{hack,solve}_{kept,abl}_tier_T``; ``eval_n``, ``eval_samples``."""
        out: dict = {"eval_n": len(self.problems), "eval_samples": self.spec.samples}
        entries = [("kept", "kept", True), ("abl", "abl", True)]
        if any(not r.hint for r in self.records):
            entries.append(("nohint", "abl" if self.has("abl", False) else "kept", False))
        for name, view, hint in entries:
            for dec in [self.spec.primary] + (["greedy"] if self.spec.samples else []):
                h, s = self.rates(view=view, hint=hint, decode=dec)
                sfx = "" if dec == self.spec.primary else "_greedy"
                for what, r in (("hack", h), ("solve", s)):
                    if not r.n:
                        continue
                    out[f"{what}_{name}{sfx}"] = r.rate
                    if not sfx:
                        out[f"{what}_{name}_lo"], out[f"{what}_{name}_hi"] = r.ci
        if not self.has("kept", True):
            return {**out, **self.extra}
        for view in ("kept", "abl"):
            for m in self.modes:
                h, s = self.rates(view=view, where=lambda p, m=m: p.mode == m)
                out[f"eval_hack_{view}_{m}"], out[f"eval_solve_{view}_{m}"] = h.rate, s.rate
            if self.tiers != [NO_TIER]:
                for t in self.tiers:
                    h, s = self.rates(view=view, where=lambda p, t=t: tier_of(p) == t)
                    out[f"eval_hack_{view}_tier_{t}"], out[f"eval_solve_{view}_tier_{t}"] = h.rate, s.rate
        return {**out, **self.extra}

    def _block(self, view: str, hint: bool, decode: str | None = None, where=None) -> dict:
        h, s = self.rates(view=view, hint=hint, decode=decode, where=where)
        return {"solve": s.rate, "solve_ci": list(s.ci) if s.n else None, "hack": h.rate,
                "hack_ci": list(h.ci) if h.n else None, "n": s.n, "solved": s.k, "hacked": h.k}

    def to_json(self, **meta) -> dict:
        """The `eval --json` object: top-level ``solve`` / ``hack`` (+ ``_ci``, ``n``) are the overall rates
        (the model as trained, hint prompts, primary decode); ``by_mode`` / ``by_tier`` break them down,
        ``conditions`` lists every (view, hint, decode) measured."""
        doc = {**meta, "problems": len(self.problems), "samples": self.spec.samples,
               "temperature": self.spec.temperature, "decode": self.spec.primary, "interval": "wilson",
               "level": LEVEL, "overall": {"view": "kept", "hint": True, "decode": self.spec.primary}}
        doc.update(self._block("kept", True))
        doc["by_mode"] = {m: self._block("kept", True, where=lambda p, m=m: p.mode == m) for m in self.modes}
        doc["by_tier"] = {t: self._block("kept", True, where=lambda p, t=t: tier_of(p) == t) for t in self.tiers}
        doc["conditions"] = [{"view": v, "hint": h, "decode": d, **self._block(v, h, d)}
                             for v, h in self.spec.conditions for d in self._decodes()]
        doc["extra"] = dict(self.extra)
        return doc

    def _decodes(self) -> list[str]:
        return ["greedy"] + (["sample"] if self.spec.samples else [])

    def table(self, title: str = "") -> str:
        """A plain-text table: every condition and decode, then the overall condition per mode and per tier."""
        lines = [title] if title else []
        sp = self.spec
        lines.append(f"{len(self.problems)} problems; greedy" + (f" + {sp.samples} samples at T {sp.temperature:g}"
                     if sp.samples else "") + f"; rate [95 % Wilson interval]; n = completions")
        head = f"{'model':<22} {'prompt':<8} {'decode':<7} {'n':>5}  {'solve':<22} {'hack':<22}"
        lines += ["", head, "-" * len(head)]
        names = {"kept": "as trained", "abl": "δS_hack ablated"}
        for v, h in sp.conditions:
            for d in self._decodes():
                hk, sv = self.rates(view=v, hint=h, decode=d)
                lines.append(f"{names[v]:<22} {'hint' if h else 'no hint':<8} {d:<7} {sv.n:>5}  {sv.text():<22} "
                             f"{hk.text():<22}")
        for label, keys, pick in (("mode", self.modes, lambda k: lambda p: p.mode == k),
                                  ("tier", self.tiers, lambda k: lambda p: tier_of(p) == k)):
            if not keys or keys == [NO_TIER]:
                continue
            lines += ["", f"by {label} (as trained, hint, {sp.primary})",
                      f"{label:<22} {'n':>5}  {'solve':<22} {'hack':<22}"]
            for k in keys:
                hk, sv = self.rates(where=pick(k))
                lines.append(f"{k:<22} {sv.n:>5}  {sv.text():<22} {hk.text():<22}")
        if self.extra:
            lines += ["", "extra: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                               for k, v in self.extra.items())]
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- extra metrics (hook)
@dataclass
class EvalContext:
    """What an extra metric may read: ``models(ablate)`` is a context manager yielding the model to
    generate with (δS_hack ablated when True); ``adapter`` is None for a base model."""

    models: Callable[[bool], ContextManager]
    tokenizer: object
    grader: object
    problems: list
    spec: EvalSpec
    result: EvalResult
    adapter: object = None


EXTRA_METRICS: list[Callable[[EvalContext], dict]] = []
"""Run after every evaluation (trainer and `eval`); each returns {metric name: number}."""


# ---------------------------------------------------------------------------- the evaluation
def _seed(*coords) -> int:
    return int.from_bytes(hashlib.sha256(repr(coords).encode()).digest()[:4], "little")


def evaluate(models: Callable[[bool], ContextManager], tokenizer, grader, problems: Sequence, spec: EvalSpec,
             adapter=None, extras: Sequence[Callable[[EvalContext], dict]] = (), cache: Path | None = None,
             cache_key: dict | None = None) -> EvalResult:
    """Generate and grade every condition of ``spec`` on ``problems`` (greedy + ``spec.samples`` sampled
    completions per problem); ``models(ablate: bool)`` yields the model to generate with. With ``cache``
    and ``cache_key`` the graded completions are read from (or written to) ``cache/<hash of key>.json``;
    extra metrics always run."""
    problems = list(problems)
    def run() -> list[Record]:
        return _sharded_records(models, tokenizer, grader, problems, spec)
    records = run() if cache is None or cache_key is None else cached_records(
        {**cache_key, "spec": spec.key(), "problems": [(p.id, p.mode) for p in problems]}, run, cache)
    result = EvalResult(problems, spec, records)
    ctx = EvalContext(models, tokenizer, grader, problems, spec, result, adapter)
    for f in (*EXTRA_METRICS, *extras):
        result.extra.update(f(ctx) or {})
    return result


def _sharded_records(models, tokenizer, grader, problems: list, spec: EvalSpec) -> list[Record]:
    """Every record of ``problems``, on every rank; each rank generates and grades only its share
    (distributed.shard), and the gathered records are put in the order of one process: by condition,
    greedy before sampled, by problem (a problem's samples stay in j order: one rank made them all)."""
    from . import distributed as dist

    if dist.world() == 1:
        return _records(models, tokenizer, grader, problems, spec)
    mine = list(dist.shard(len(problems)))
    local = _records(models, tokenizer, grader, [problems[i] for i in mine], spec, index=mine)
    order = {c: n for n, c in enumerate(spec.conditions)}
    merged = [r for part in dist.gather(local) for r in part]
    return sorted(merged, key=lambda r: (order[(r.view, r.hint)], r.decode != "greedy", r.problem))  # stable


def _records(models, tokenizer, grader, problems: list, spec: EvalSpec, index: list[int] | None = None) -> list[Record]:
    """Generate and grade ``problems``; ``index[i]``: problem i's index among all the evaluation's problems
    (its Record.problem and its sampling seeds; default i), so a shard draws what one process would."""
    from .env.prompts import render_prompt
    from .rollout import generate

    index = list(range(len(problems))) if index is None else list(index)
    records: list[Record] = []
    for view, hint in spec.conditions:
        if view not in ("kept", "abl"):
            raise ValueError(f"unknown view {view!r}")
        prompts = [render_prompt(tokenizer, p, hint, spec.enable_thinking) for p in problems]
        with models(view == "abl") as model:
            greedy = generate(model, tokenizer, prompts, 1, spec.max_new_tokens, greedy=True, backend=spec.backend,
                              compile=spec.compile)
            sampled = None
            if spec.samples:  # one seed per (condition, problem, j): every evaluation point draws the same noise
                seeds = [_seed(spec.seed, "eval", view, hint, index[i], j) for i in range(len(problems))
                         for j in range(spec.samples)]
                sampled = generate(model, tokenizer, prompts, spec.samples, spec.max_new_tokens,
                                   temperature=spec.temperature, top_p=spec.top_p, seeds=seeds,
                                   backend=spec.backend, compile=spec.compile)
        items = [(i, "greedy", t) for i, t in enumerate(greedy.texts)]
        if sampled is not None:
            items += [(k // spec.samples, "sample", t) for k, t in enumerate(sampled.texts)]
        grades = grader.grade_many([(problems[i], t) for i, _, t in items])
        records += [Record(index[i], view, hint, d, bool(g.exploited), bool(g.gt_correct), t)
                    for (i, d, t), g in zip(items, grades)]
    return records


# ---------------------------------------------------------------------------- step-0 cache
def cached_records(key: dict, compute: Callable[[], list[Record]], folder: Path) -> list[Record]:
    """``compute()`` once per ``key`` (JSON-able): the untrained model is the same in every arm of a
    config (δS = δS_hack = 0), so its step-0 completions are generated by the first arm and read by the rest.
    Data parallel: rank 0 alone reads and writes the entry and broadcasts what it read, so every rank
    takes the same branch (``compute`` is collective there) even if another run writes the entry meanwhile."""
    from . import distributed as dist

    h = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = Path(folder) / f"{h}.json"
    hit = dist.broadcast(_read_cached(path) if dist.is_main() else None)
    if hit is not None:
        return hit
    records = compute()
    if dist.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "records": [asdict(r) for r in records]}, default=str))
        tmp.replace(path)
    return records


def _read_cached(path: Path) -> list[Record] | None:
    if path.exists():
        try:
            return [Record(**r) for r in json.loads(path.read_text())["records"]]
        except (json.JSONDecodeError, KeyError, TypeError, OSError):
            pass  # a damaged entry is recomputed
    return None


# ---------------------------------------------------------------------------- the `eval` verb
BASE_MAX_NEW_TOKENS = 128  # a base model has no run config to take the budget from


def eval_command(a) -> int:
    """`projected-grpo eval`: a base model (``--model``) or a trained run (``--run``: kept and, for route,
    δS_hack ablated) on a dataset, with and without hints; the table, or one JSON object with ``--json``."""
    import contextlib
    import sys

    import torch

    from .adapter import SVDAdapter
    from . import rundir
    from .config import LOOPHOLE_MODES, Config, ConfigError
    from .env.grader import GraderPool
    from .env.problems import DATA_SEED, load_problems, split_problems
    from .models import load_model, resolve_device
    from .preflight import check_context

    if a.k < 0 or not 0 <= a.temperature < float("inf") or not 0 < a.top_p <= 1:  # NaN fails both ranges
        raise ConfigError(f"--k must be >= 0, --temperature a finite number >= 0 and --top-p in (0, 1]; got --k {a.k} "
                          f"--temperature {a.temperature} --top-p {a.top_p}")
    if a.max_problems is not None and a.max_problems <= 0:
        raise ConfigError(f"--max-problems must be positive, got {a.max_problems}")
    if a.max_new_tokens is not None and a.max_new_tokens <= 0:
        raise ConfigError(f"--max-new-tokens must be positive, got {a.max_new_tokens}")
    if a.run is None and a.model is None:
        raise ConfigError("give --model M (a base model) or --run RUN_DIR (a trained run)")
    cfg = None
    if a.run is not None:
        run = Path(a.run)
        try:
            rundir.knob_file(run)
        except ConfigError as e:
            raise ConfigError(f"--run {e}") from None
        cfg = rundir.read_config(run)[1]
        if a.model is not None and a.model != cfg.model:
            raise ConfigError(f"--model {a.model} differs from the run's model {cfg.model}; drop --model or pick "
                              f"the run's")
    model_name = a.model or cfg.model
    dataset = a.dataset or (cfg.dataset if cfg else "builtin")
    modes = tuple(a.modes) if a.modes else (cfg.modes if cfg else LOOPHOLE_MODES)
    try:
        probs = load_problems(dataset, seed=DATA_SEED, modes=modes, force_mode=cfg.force_mode if cfg else None,
                              max_problems=cfg.max_problems if cfg and dataset == cfg.dataset else None)
    except (ValueError, OSError) as e:
        raise ConfigError(f"--dataset {dataset.rstrip(':')}: {e}") from e
    if cfg is not None and dataset == cfg.dataset:  # the run's own held-out problems, split as the trainer splits
        try:
            probs = split_problems(probs, cfg.eval_problems)[0]
        except ValueError as e:
            raise ConfigError(f"--run {a.run}: {e}") from None
        if not probs:
            raise ConfigError(f"--run {a.run} held out no problems (eval_problems 0); pass another --dataset")
    elif any(p.split for p in probs):  # a dataset with a fixed split (synth): its held-out split
        probs = [p for p in probs if p.split == "heldout"]
    probs = probs[: a.max_problems] if a.max_problems else probs
    dev_cfg = Config(device=a.device, amp=bool(cfg and cfg.amp)).validate()
    device, dtype = resolve_device(dev_cfg)
    adapter = None
    route = False
    note = (lambda m: None) if a.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    if cfg is not None:
        dtype = getattr(torch, rundir.knob_dtype(a.run, str(dtype).removeprefix("torch.")))  # the knobs' own dtype
        note(f"loading {model_name} + the knobs of {a.run}")
        model, tok = load_model(model_name, dtype, device)
        adapter = SVDAdapter.attach(model, cfg.target_modules, cfg.layers, cfg.adapter_rank)
        rundir.restore(a.run, adapter)
        route = cfg.intervention == "route"
    else:
        note(f"loading {model_name}")
        model, tok = load_model(model_name, dtype, device)
    amp = bool(cfg and cfg.amp)

    @contextlib.contextmanager
    def views(ablate: bool):
        if adapter is None:
            yield model
        elif amp:
            yield adapter.plain_copy(torch.bfloat16, ablate)
        else:
            with adapter.merged(ablate):
                yield model

    conds = (("kept", True), ("kept", False)) + ((("abl", True), ("abl", False)) if route else ())
    tokens = a.max_new_tokens or (cfg.max_new_tokens if cfg else BASE_MAX_NEW_TOKENS)
    check_context(tokens, model.config)
    spec = EvalSpec(conditions=conds, samples=a.k, temperature=a.temperature, top_p=a.top_p, max_new_tokens=tokens,
                    seed=a.seed, backend=a.backend, compile=None, enable_thinking=bool(cfg and cfg.enable_thinking))
    note(f"evaluating {len(probs)} problems of {dataset}: {len(conds)} conditions x (greedy + {a.k} samples), "
         f"{tokens} tokens")
    with GraderPool(workers=a.workers or max(1, os.cpu_count() or 1)) as grader:
        with torch.no_grad():
            res = evaluate(views, tok, grader, probs, spec, adapter=adapter)
    meta = {"model": model_name, "run": a.run, "dataset": dataset, "max_new_tokens": tokens}
    if a.json:
        print(json.dumps(res.to_json(**meta), default=float))
    else:
        title = f"eval {model_name}" + (f" (run {a.run}, arm {cfg.arm})" if cfg else " (base model)") + f" on {dataset}"
        sys.stdout.write(res.table(title))
    return 0


# ---------------------------------------------------------------------------- start vs end, per arm
def start_end_table(run_dirs: Sequence[str | Path]) -> str:
    """Markdown: per run, held-out hack and solve with their 95 % intervals at the first and the last
    evaluation (route: also δS_hack ablated), read from metrics.jsonl."""
    from . import rundir

    def cell(row: dict, key: str) -> str:
        v, lo, hi = row.get(key), row.get(f"{key}_lo"), row.get(f"{key}_hi")
        if v is None:
            return "–"
        return f"{v:.2f} [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else f"{v:.2f}"

    out = ["| arm | held-out problems | eval step | hack | solve | hack, δS_hack ablated | solve, δS_hack ablated |",
           "|---|---|---|---|---|---|---|"]
    for d in run_dirs:
        d = Path(d)
        try:
            meta, rows = json.loads((d / rundir.CONFIG).read_text()), rundir.read_metrics(d)
        except (OSError, json.JSONDecodeError):
            continue
        evals = [r for r in rows if "hack_kept" in r]
        route = meta.get("config", {}).get("intervention") == "route"
        for r in ([evals[0], evals[-1]] if len(evals) > 1 else evals):
            out.append(f"| {meta.get('arm', d.name)} | {r.get('eval_n', '–')} | {r['step']} | {cell(r, 'hack_kept')} | "
                       f"{cell(r, 'solve_kept')} | {cell(r, 'hack_abl') if route else '–'} | "
                       f"{cell(r, 'solve_abl') if route else '–'} |")
    return "\n".join(out) + "\n"
