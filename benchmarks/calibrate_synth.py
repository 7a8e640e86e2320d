"""Base-model solve rate on synth's held-out split, per tier: the calibration of env/synth.py.

Uses the project's own prompt (env/prompts.build_messages, no hint by default), generation
(rollout.generate) and grader (GraderPool, strict oracle: `gt_correct`), so the numbers are what
training and evaluation see. pass@1 is the mean over problems of (correct samples / k); its 95 %
interval is a percentile bootstrap over problems (samples of one problem are not independent).

    # CPU, small (a few minutes on 2 cores)
    python benchmarks/calibrate_synth.py --per-tier 30 --k 4
    # GPU, at scale
    python benchmarks/calibrate_synth.py --device cuda --dtype bfloat16 --backend fast --per-tier 128 --k 8

Targets (issue 14): tier A 20-50 %, B 5-20 %, C 0-5 %. Prints a table; `--json PATH` also writes
every number, and `--samples PATH` every completion with its grade (to see why answers fail).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter, defaultdict

import torch

from projected_grpo.env.grader import GraderPool, extract_code
from projected_grpo.env.problems import load_problems
from projected_grpo.env.prompts import render_prompt
from projected_grpo.models import load_model
from projected_grpo.rollout import generate

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def bootstrap_ci(rates: list[float], reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean of per-problem rates."""
    if not rates:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    n = len(rates)
    means = sorted(sum(rates[rng.randrange(n)] for _ in range(n)) / n for _ in range(reps))
    return means[int(0.025 * reps)], means[min(reps - 1, int(0.975 * reps))]


def pick(dataset: str, per_tier: int) -> list:
    """The first `per_tier` held-out problems of each tier, in load_problems' seeded order (data seed 0)."""
    held = [p for p in load_problems(dataset, seed=0) if p.split == "heldout"]
    if not held:
        raise SystemExit(f"error: dataset {dataset!r} has no held-out split (use synth or synth:SEED)")
    out = []
    for tier in sorted({p.tier for p in held}):
        out += [p for p in held if p.tier == tier][:per_tier]
    return out


def form_of(code: str | None) -> str:
    if code is None:
        return "no code"
    return "class" if "class Solution" in code else "function" if "def " in code else "other"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--dataset", default="synth")
    ap.add_argument("--per-tier", type=int, default=30, help="held-out problems per tier")
    ap.add_argument("--k", type=int, default=4, help="samples per problem")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--hint", action="store_true", help="add each problem's loophole hint (default: none)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--backend", default="hf", choices=("hf", "fast"))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0, help="sandbox workers (0: one per CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the numbers here")
    ap.add_argument("--samples", default=None, help="write every completion and its grade here (JSONL)")
    ap.add_argument("--regrade", default=None, metavar="SAMPLES.jsonl",
                    help="grade the completions of an earlier --samples file instead of generating (no model)")
    a = ap.parse_args(argv)
    device = "cuda" if a.device == "auto" and torch.cuda.is_available() else ("cpu" if a.device == "auto" else a.device)
    if a.regrade:  # a grader change measured on fixed completions
        by_id = {p.id: p for p in load_problems(a.dataset, seed=0)}
        old = [json.loads(line) for line in open(a.regrade)]
        items = [(by_id[r["problem_id"]], r["completion"]) for r in old]
        probs = list({p.id: p for p, _ in items}.values())
        a.k, t_gen = len(items) // len(probs), 0.0
    else:
        probs = pick(a.dataset, a.per_tier)
        model, tok = load_model(a.model, DTYPES[a.dtype], device)
        prompts = [render_prompt(tok, p, hint=a.hint) for p in probs]
        seeds = [a.seed * 1_000_003 + i for i in range(len(prompts) * a.k)]
        t0 = time.time()
        ro = generate(model, tok, prompts, a.k, a.max_new_tokens, temperature=a.temperature, seeds=seeds,
                      batch_size=a.batch_size, backend=a.backend)
        t_gen = time.time() - t0
        items = [(probs[i // a.k], text) for i, text in enumerate(ro.texts)]  # texts are prompt-major
    t0 = time.time()
    with GraderPool(a.workers) as g:
        grades = g.grade_many(items)
    t_grade = time.time() - t0
    per_problem = defaultdict(list)
    for (p, _), r in zip(items, grades):
        per_problem[p.id].append(r.gt_correct)
    rows, fams = {}, defaultdict(list)
    for tier in sorted({p.tier for p in probs}):
        tp = [p for p in probs if p.tier == tier]
        rates = [sum(per_problem[p.id]) / a.k for p in tp]
        lo, hi = bootstrap_ci(rates, seed=a.seed)
        any_ok = sum(1 for r in rates if r > 0) / len(rates)
        rows[tier] = {"problems": len(tp), "k": a.k, "pass@1": sum(rates) / len(rates), "ci95": [lo, hi],
                      f"pass@{a.k}": any_ok}
        for p, r in zip(tp, rates):
            fams[p.family].append(r)
    forms = Counter(form_of(extract_code(t)) for _, t in items)
    errors = Counter((r.error or "ok").split(":")[0][:40] for r in grades)
    print(f"model {a.model} ({a.dtype}, {device}, {a.backend}), dataset {a.dataset} held-out, k={a.k}, "
          f"T={a.temperature}, max_new_tokens={a.max_new_tokens}, hint={a.hint}; "
          f"generate {t_gen:.0f}s, grade {t_grade:.0f}s")
    print(f"{'tier':<5} {'problems':>8} {'pass@1':>7} {'95% CI':>15} {f'pass@{a.k}':>7}")
    for tier, r in rows.items():
        lo, hi = r["ci95"]
        print(f"{tier:<5} {r['problems']:>8} {r['pass@1']:>7.3f} {f'[{lo:.3f}, {hi:.3f}]':>15} {r[f'pass@{a.k}']:>7.3f}")
    print("answer forms:", dict(forms))
    print("per family pass@1:", {f: round(sum(v) / len(v), 2) for f, v in sorted(fams.items())})
    print("outcomes:", dict(errors.most_common(8)))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "tiers": rows, "forms": dict(forms),
                       "families": {f: sum(v) / len(v) for f, v in fams.items()}, "outcomes": dict(errors)}, f, indent=1)
    if a.samples:
        with open(a.samples, "w") as f:
            for (p, text), r in zip(items, grades):
                f.write(json.dumps({"problem_id": p.id, "tier": p.tier, "family": p.family, "completion": text,
                                    "gt_correct": r.gt_correct, "error": r.error}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
