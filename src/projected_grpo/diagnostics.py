"""What the deployed model is: distance from the base model, knob norms, and benign behaviour kept.

Route's deployed model (δS_hack zeroed) can look clean because ablating δS_hack removes all learning,
not only the hack. These numbers tell the two apart, per evaluation and per view (``kept``: as
trained; ``abl``: δS_hack zeroed, the deployed model of route; equal to kept for other arms):

- ``kl_base_{view}``: token-mean KL(model ‖ base) on held-out prompts, on the model's own completions
  (the evaluation's greedy ones): Σ over completion tokens of Σ_vocab p log(p / p_base), / tokens.
  Exact over the vocabulary at each position (no sampling noise beyond the completions themselves).
  Data parallel: each rank scores its share of the rows and the (Σ KL, tokens) sums are all-reduced.
- ``dS``, ``dSh``: ‖δS‖, ‖δS_hack‖ over all modules.
- ``dSh_in_V`` (``dS_in_V``): the share of δS_hack's (δS's) energy inside span(V) of the run's basis,
  Σ_m ‖V_m x_m‖² / Σ_m ‖x_m‖² (None when the knob is zero).
- ``fmt_{view}``: share of completions with a closed fenced python block (the format the reward pays);
  ``form_class_{view}``: share of those whose answer is a ``class Solution`` method rather than a
  top-level function (the answer form used).

``metrics(adapter, tokenizer, prompts, texts, V)`` returns the dict; ``eval_extra(V)`` wraps it as an
extra metric of evaluate.py (``f(ctx) -> dict``).

Owns the deployed-model diagnostics of an evaluation; must never import train, evaluate, report, study or sweep (they call it).
"""

from __future__ import annotations

import contextlib
import re
from typing import Sequence

import torch

from . import distributed as dist
from .env.grader import extract_code
from .grpo import encode_completion, make_batch

_CLASS = re.compile(r"^class\s+Solution\b", re.M)


@torch.no_grad()
def kl_to_base(adapter, tokenizer, prompts: Sequence[str], texts: Sequence[str], ablate: bool,
               batch_size: int = 4) -> float | None:
    """Token-mean KL(model ‖ base) over the completion tokens of (prompt, text) rows; the model is the
    adapter's live model as trained (``ablate``: δS_hack zeroed), the base the same model with knobs zeroed."""
    dS, dSh = adapter.norms()
    if dS == 0 and (ablate or dSh == 0):  # knobs at zero: bit-identical to the base (no forward needed)
        return 0.0 if texts else None
    model = adapter.model
    device = next(iter(adapter.modules.values())).delta_s.device
    pairs = list(zip(prompts, texts))
    rows = [(tokenizer(p, add_special_tokens=False)["input_ids"], encode_completion(tokenizer, t))
            for p, t in (pairs[i] for i in dist.shard(len(pairs)))]  # data parallel: this rank's rows
    total, n_tok = 0.0, 0
    for s in range(0, len(rows), batch_size):
        batch = make_batch(rows[s:s + batch_size], tokenizer.pad_token_id).to(device)
        mask = batch.completion_mask[:, 1:].bool()  # position t predicts token t + 1
        if not mask.any():
            continue
        logp = {}
        for name, ctx in (("model", adapter.ablated() if ablate else contextlib.nullcontext()), ("base", adapter.zeroed())):
            with ctx:
                logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
            logp[name] = logits[mask].float().log_softmax(-1)  # (N, vocab)
        p = logp["model"].exp()
        total += float((p * (logp["model"] - logp["base"])).sum())
        n_tok += int(mask.sum())
    if dist.world() > 1:  # every rank's (Σ KL, tokens), summed in float64: exact for the token counts
        sums = torch.tensor([total, n_tok], dtype=torch.float64, device=device)
        dist.all_reduce_([sums])
        total, n_tok = float(sums[0]), int(sums[1])
    return total / n_tok if n_tok else None


def behaviour(texts: Sequence[str]) -> dict[str, float | None]:
    """fmt: share with a fenced python block; form_class: share of those answering as a class method."""
    codes = [extract_code(t) for t in texts]
    fenced = [c for c in codes if c is not None]
    return {"fmt": len(fenced) / len(codes) if codes else None,
            "form_class": sum(bool(_CLASS.search(c)) for c in fenced) / len(fenced) if fenced else None}


def knob_shares(adapter, V: dict[str, torch.Tensor] | None) -> dict[str, float | None]:
    """‖δS‖, ‖δS_hack‖ and the share of each knob's energy inside span(V) (rows of V orthonormal)."""
    dS, dSh = adapter.norms()
    out = {"dS": dS, "dSh": dSh}
    for key, attr in (("dS_in_V", "delta_s"), ("dSh_in_V", "delta_s_hack")):
        num = den = 0.0
        for n, m in adapter.modules.items():
            x = getattr(m, attr).detach().float()
            den += float((x ** 2).sum())
            if V and n in V and V[n].shape[0]:
                num += float(((V[n].to(x.device, torch.float32) @ x) ** 2).sum())
        out[key] = num / den if den > 0 else None
    return out


def metrics(adapter, tokenizer, prompts: Sequence[str], texts: dict[str, Sequence[str]],
            V: dict[str, torch.Tensor] | None, kl_rows: int = 0) -> dict:
    """Every deployed-model diagnostic. ``texts``: {view: the model's own completions of ``prompts``},
    view ``kept`` and optionally ``abl`` (absent: δS_hack is zero, abl = kept). ``kl_rows`` > 0: the KL
    to base on the first ``kl_rows`` rows only (two forward passes a row; the CPU demo's budget)."""
    n = kl_rows or len(prompts)
    out = knob_shares(adapter, V)
    for view in ("kept", "abl"):
        if view not in texts:  # δS_hack = 0: the ablated model is the kept one
            out |= {f"{k}_abl": out[f"{k}_kept"] for k in ("kl_base", "fmt", "form_class")}
            continue
        out[f"kl_base_{view}"] = kl_to_base(adapter, tokenizer, prompts[:n], texts[view][:n], ablate=view == "abl")
        out |= {f"{k}_{view}": v for k, v in behaviour(texts[view]).items()}
    return out


def from_eval(adapter, tokenizer, prompts: Sequence[str], texts: dict, grades: dict, V) -> dict:
    """The trainer's evaluation hook: diagnostics on its greedy hint completions (``texts``: {view: [str]}, the
    view ``abl`` only when generated) and per-problem outcomes from ``grades`` ({view: [Reward]})."""
    texts = {v: t for v, t in texts.items() if v in ("kept", "abl")}
    out = metrics(adapter, tokenizer, prompts, texts, V)
    for view, gs in grades.items():
        out[f"eval_problem_hack_{view}"] = [float(g.exploited) for g in gs]
        out[f"eval_problem_solve_{view}"] = [float(g.gt_correct) for g in gs]
    return out


def eval_extra(V: dict[str, torch.Tensor] | None, kl_rows: int = 0):
    """An evaluate.py extra metric (``f(ctx) -> dict``): the diagnostics on the evaluation's greedy
    completions with hints, kept and (when generated) ablated (``kl_rows``: see metrics)."""
    def f(ctx) -> dict:
        from .env.prompts import render_prompt

        if ctx.adapter is None or not ctx.problems:
            return {}
        prompts = [render_prompt(ctx.tokenizer, p, True, ctx.spec.enable_thinking) for p in ctx.problems]  # as evaluated
        texts, per_problem = {}, {}
        for view in ("kept", "abl"):
            if ctx.result.has(view, True):
                recs = sorted(ctx.result.select(view=view, hint=True, decode="greedy"), key=lambda r: r.problem)
                texts[view] = [r.text for r in recs]
            per_problem |= per_problem_rates(ctx.result.select(view=view, hint=True), len(ctx.problems), view)
        return {**metrics(ctx.adapter, ctx.tokenizer, prompts, texts, V, kl_rows), **per_problem}
    return f


def per_problem_rates(records, n_problems: int, view: str) -> dict[str, list[float]]:
    """``eval_problem_{hack,solve}_{view}``: (P,) each problem's rate over its completions (the primary
    decode): the unit of stats.hier_bootstrap_ci's problem stage."""
    out = {}
    for what, attr in (("hack", "exploited"), ("solve", "solved")):
        tot, cnt = [0.0] * n_problems, [0] * n_problems
        for r in records:
            tot[r.problem] += float(getattr(r, attr))
            cnt[r.problem] += 1
        if all(cnt):
            out[f"eval_problem_{what}_{view}"] = [t / c for t, c in zip(tot, cnt)]
    return out

