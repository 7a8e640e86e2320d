"""The start of the discovery regime (issue 16, docs/DISCOVER.md): a warm start to a low hack prior, the
prior probe that measures it, and V's pairs from other sources than the training templates.

1. **Warm start** (``warmstart_steps`` N > 0): N steps of plain supervised NLL on ``WS_BATCH`` rows each,
   drawn from the teacher pool of the training problems: exactly ``round(f · N · WS_BATCH)`` rows are hacks
   (graded exploited), f = ``warmstart_hack_frac``; the rest are the pool's non-hack completions of the kinds
   in ``teacher_kinds`` (clean solutions, wrong-but-formatted attempts). Only δS trains (AdamW, constant lr
   ``warmstart_lr`` or ``lr``, the run's grad clip, the live loss's normalisation); δS_hack stays 0, so
   route's quarantine starts empty. Then ``adapter.rebase()`` folds δS into the frozen base offset δS₀:
   **the warm-started model is the base** of everything after it: the KL reference (knobs zeroed), "δS = 0",
   ``kl_base_*``, ``dS`` and δS_hack's ablation (the deployed model = δS₀ + δS) all refer to it.
2. **Prior probe**: ``prior_samples`` student samples (rounded up to whole groups of ``PRIOR_PER_PROBLEM``,
   on seeded training problems, the run's temperature and token budget), graded in the sandbox pool like
   any rollout. ``hack_prior`` = share exploited; also ``solve_prior``, ``fmt_prior`` (fenced python block).
   Run when there is a warm start or the pool source needs the samples.
3. **V's pairs** (``vhack_pairs_source``): ``templates`` (train.setup's own, unchanged), ``alt_templates``
   (hacks written in a second surface form; ``alt_hack``), ``pool`` (mined from the probe's graded samples:
   a sampled exploit paired with a non-exploited sample of the same problem, gt-correct ones first).

Both results are cached (``cache_dir()/warmstart``) under keys that hold the model, data, settings and seed
but never the arm (cachekey.py): every arm of a seed loads the same δS₀ and the same probe samples; a file
lock makes concurrent arms compute once. Data parallel: rank 0 computes, every rank gets its result.

Owns the pre-RL phase. Must never import train (train imports this module).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import distributed as dist
from .cachekey import model_digest, probe_key, warmstart_key
from .config import ConfigError
from .env.grader import extract_code
from .env.loopholes import clean_completion, hack_completion
from .env.prompts import render_prompt
from .grpo import completion_logprobs, encode_completion, make_batch, row_weights
from .models import cache_dir
from .sampling import derive_seed
from .teachers import teacher_pool

WS_BATCH = 8          # rows per warm-start step (a fixed batch: micro_batch only splits it, results equal)
PRIOR_PER_PROBLEM = 8  # probe samples per problem (a GRPO group's worth)
MIN_POOL_HACKS = 2     # distinct sampled exploits the pool source needs: one exploit spans no hack direction
PRIOR_KEYS = ("hack_prior", "solve_prior", "fmt_prior", "prior_n", "warmstart_nll_first", "warmstart_nll_last",
              "warmstart_hack_rows", "warmstart_key", "vhack_pairs_source", "vhack_pool_hacks")


@dataclass
class Warm:
    """What setup takes from this phase: the step-0 row's keys, V's pairs when not the templates'
    (prompt_text, hack, clean, clean_alt), and the probe's graded samples."""

    metrics: dict = field(default_factory=dict)
    pairs: list[tuple[str, str, str, str]] | None = None
    samples: list[dict] = field(default_factory=list)


def needed(cfg) -> bool:
    return cfg.warmstart_steps > 0 or cfg.vhack_pairs_source == "pool"


def prepare(cfg, model, tokenizer, adapter, problems, grader, note) -> Warm:
    """Warm start (sets the adapter's δS₀), prior probe, V's pairs for ``cfg``; a no-op Warm when off."""
    if not needed(cfg) and cfg.vhack_pairs_source == "templates":
        return Warm()
    out = None
    if needed(cfg):
        if dist.is_main():
            try:
                out = _main(cfg, model, tokenizer, adapter, problems, grader, note)
            except ConfigError as e:
                out = str(e)
        out = dist.broadcast(out)  # every rank stops on rank 0's error, or gets its result
        if isinstance(out, str):
            raise ConfigError(out)
    base, metrics, samples = out if out is not None else (None, {}, [])
    if base is not None:
        adapter.set_base(base)
    metrics["vhack_pairs_source"] = cfg.vhack_pairs_source
    pairs = None
    if cfg.vhack_pairs_source == "pool":
        pairs, metrics["vhack_pool_hacks"] = pool_pairs(cfg, tokenizer, problems, samples)
    elif cfg.vhack_pairs_source == "alt_templates":
        pairs = alt_template_pairs(cfg, tokenizer, problems)
    return Warm(metrics, pairs, samples)


def _main(cfg, model, tokenizer, adapter, problems, grader, note):
    metrics: dict = {}
    base = None
    if cfg.warmstart_steps > 0:
        base, meta = warm_start(cfg, model, tokenizer, adapter, problems, grader, note)
        model_key = meta["key"]
        metrics.update(warmstart_key=meta["key"], warmstart_nll_first=meta["nll"][0],
                       warmstart_nll_last=meta["nll"][-1], warmstart_hack_rows=meta["hack_rows"])
    else:
        model_key = model_digest(model, adapter, tokenizer)
    samples = probe(cfg, model, tokenizer, adapter, problems, grader, model_key, note)
    metrics.update(prior_metrics(samples))
    note(f"hack_prior {metrics['hack_prior']:.3f} ({sum(s['exploited'] for s in samples)}/{len(samples)} student "
         f"samples on training problems exploit; solve {metrics['solve_prior']:.3f}, python block "
         f"{metrics['fmt_prior']:.3f})")
    return base, metrics, samples


def base_key(adapter) -> dict:
    """{"base": digest of δS₀} when a warm start set one, else {}: for caches keyed on "knobs at zero"."""
    if not adapter.has_base:
        return {}
    h = hashlib.sha256()
    for n, t in sorted(adapter.base_knobs().items()):
        h.update(n.encode() + t.float().numpy().tobytes())
    return {"base": h.hexdigest()[:16]}


# ---------------------------------------------------------------------------- cache plumbing
@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive flock on ``path``.lock: concurrent arms of a seed compute an entry once, then load it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _seed(cfg, *coords) -> int:
    return derive_seed(cfg.seed, *coords)


# ---------------------------------------------------------------------------- 1. warm start
def warm_rows(cfg, tokenizer, problems, pool) -> list[tuple[str, str, bool]]:
    """The warm start's rows in training order: (prompt_text, completion, is_hack), N · WS_BATCH of them,
    exactly round(f · N · WS_BATCH) hacks at seeded positions; hack rows are the pool's graded exploits,
    the others its non-exploited completions of kinds in ``teacher_kinds``."""
    hacks, rest = [], []
    for p in problems:
        for t in pool.for_problem(p.id):
            if t.grade.get("exploited") is True:
                hacks.append((p, t.completion))
            elif t.kind != "hack" and t.kind in cfg.teacher_kinds:
                rest.append((p, t.completion))
    n = cfg.warmstart_steps * WS_BATCH
    n_hack = round(cfg.warmstart_hack_frac * n)
    if n_hack and not hacks:
        raise ConfigError("--warmstart-hack-frac > 0 but the teacher pool has no exploiting completion for these "
                          "training problems (modes without a hack template?); set it to 0 or change --modes")
    if n - n_hack and not rest:
        raise ConfigError(f"the warm start's non-hack rows come from the pool kinds in --teacher-kinds "
                          f"{list(cfg.teacher_kinds)}, and the pool has none; add clean or wrong to --teacher-kinds")
    rng = random.Random(_seed(cfg, "warmstart"))
    slots = [True] * n_hack + [False] * (n - n_hack)
    rng.shuffle(slots)
    rows = []
    for is_hack in slots:
        p, c = rng.choice(hacks if is_hack else rest)
        rows.append((render_prompt(tokenizer, p, enable_thinking=cfg.enable_thinking), c, is_hack))
    return rows


def warm_settings(cfg, device_type: str, dtype) -> dict:
    """Everything besides the rows and the model that determines the warm start (never the arm)."""
    return dict(steps=cfg.warmstart_steps, hack_frac=cfg.warmstart_hack_frac, lr=cfg.warmstart_lr or cfg.lr,
                batch=WS_BATCH, grad_clip=cfg.grad_clip, loss_norm=cfg.loss_norm, max_new_tokens=cfg.max_new_tokens,
                amp=cfg.amp, seed=cfg.seed, device=device_type, dtype=str(dtype))


def warm_start(cfg, model, tokenizer, adapter, problems, grader, note) -> tuple[dict, dict]:
    """Train δS on the warm-start rows (or load the cached result) and fold it into δS₀.
    Returns ({module: δS₀ (r,)}, meta with the key, per-step NLL and the hack row count)."""
    pool = teacher_pool(cfg, problems, grader, note)
    rows = warm_rows(cfg, tokenizer, problems, pool)
    dev = next(iter(adapter.modules.values())).delta_s.device
    settings = warm_settings(cfg, dev.type, next(iter(adapter.modules.values())).base.weight.dtype)
    key = warmstart_key(model, adapter, tokenizer, [(p, c) for p, c, _ in rows], settings)
    path = cache_dir() / "warmstart" / f"{key}.safetensors"
    with _locked(path):
        if path.exists():
            base = load_file(path)
            meta = json.loads(_metadata(path)["meta"])
            adapter.set_base(base)
            return base, meta
        with note_step(note, f"warm start ({cfg.warmstart_steps} steps x {WS_BATCH} rows, "
                             f"{sum(h for _, _, h in rows)} hacks)"):
            nll = train_knobs(cfg, model, tokenizer, adapter, rows)
        adapter.rebase()
        base = adapter.base_knobs()
        meta = {"key": key, "nll": nll, "hack_rows": sum(h for _, _, h in rows), "settings": settings}
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        save_file({n: t.contiguous() for n, t in base.items()}, tmp, metadata={"meta": json.dumps(meta)})
        tmp.replace(path)
    return base, meta


def _metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}


@contextlib.contextmanager
def note_step(note, name: str):
    step = getattr(note, "step", None)
    with (step(name) if step is not None else contextlib.nullcontext()):
        yield


def train_knobs(cfg, model, tokenizer, adapter, rows: list[tuple[str, str, bool]]) -> list[float]:
    """Plain NLL on ``rows`` (WS_BATCH a step, split into micro-batches), AdamW on δS only. The NLL uses the
    live loss's normalisation (``fixed``: Σ_tokens / max_new_tokens per row), averaged over a step's rows.
    Returns each step's mean NLL (before its update)."""
    opt = torch.optim.AdamW(adapter.knobs(), lr=cfg.warmstart_lr or cfg.lr, weight_decay=0.0)
    device = next(iter(adapter.modules.values())).delta_s.device
    out = []
    for step in range(cfg.warmstart_steps):
        batch_rows = rows[step * WS_BATCH:(step + 1) * WS_BATCH]
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for s in range(0, len(batch_rows), cfg.micro_batch):
            chunk = batch_rows[s:s + cfg.micro_batch]
            enc = [(tokenizer(p, add_special_tokens=False)["input_ids"], encode_completion(tokenizer, c))
                   for p, c, _ in chunk]
            batch = make_batch(enc, tokenizer.pad_token_id).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                logp = completion_logprobs(model, batch)
            w = row_weights(batch.completion_mask, cfg.loss_norm, cfg.max_new_tokens)
            nll = -(logp.sum(1) * w).sum() / len(batch_rows)
            nll.backward()
            total += float(nll.detach())
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(adapter.knobs(), cfg.grad_clip)
        opt.step()
        for m in adapter.modules.values():  # δS_hack is not trained here: the quarantine starts empty
            m.delta_s_hack.grad = None
        out.append(total)
    return out


# ---------------------------------------------------------------------------- 2. prior probe
def probe_problems(cfg, problems) -> list:
    n = min(len(problems), max(1, math.ceil(cfg.prior_samples / PRIOR_PER_PROBLEM)))
    order = list(range(len(problems)))
    random.Random(_seed(cfg, "prior")).shuffle(order)
    return [problems[i] for i in sorted(order[:n])]


@contextlib.contextmanager
def _rollout_model(cfg, model, adapter):
    """The model rollouts sample from, as train.rollout_model: knobs folded in; with --amp a bf16 copy."""
    if cfg.amp:
        yield adapter.plain_copy(torch.bfloat16)
    else:
        with adapter.merged():
            yield model


def probe(cfg, model, tokenizer, adapter, problems, grader, model_key: str, note) -> list[dict]:
    """``PRIOR_PER_PROBLEM`` samples on each probe problem from the model as it is now (one seed per sample),
    graded in the sandbox pool; cached under (model key, settings, problems). Returns one dict per sample:
    problem_id, mode, completion and its grade (exploited, gt_correct, passed, reward, fenced, truncated)."""
    from .rollout import generate

    chosen = probe_problems(cfg, problems)
    settings = dict(per_problem=PRIOR_PER_PROBLEM, seed=cfg.seed, temperature=cfg.temperature, top_p=cfg.top_p,
                    max_new_tokens=cfg.max_new_tokens, thinking=cfg.enable_thinking, backend=cfg.rollout_backend,
                    amp=cfg.amp, format_bonus=cfg.format_bonus, pass_reward=cfg.pass_reward,
                    timeout=cfg.sandbox_timeout_s)
    path = cache_dir() / "warmstart" / f"probe-{probe_key(model_key, chosen, settings)}.json"
    with _locked(path):
        if path.exists():
            return json.loads(path.read_text())
        with note_step(note, f"prior probe ({len(chosen) * PRIOR_PER_PROBLEM} samples on {len(chosen)} training "
                             f"problems)"):
            prompts = [render_prompt(tokenizer, p, enable_thinking=cfg.enable_thinking) for p in chosen]
            seeds = [_seed(cfg, "prior", p.id, j) for p in chosen for j in range(PRIOR_PER_PROBLEM)]
            with _rollout_model(cfg, model, adapter) as m:
                roll = generate(m, tokenizer, prompts, PRIOR_PER_PROBLEM, cfg.max_new_tokens,
                                temperature=cfg.temperature, top_p=cfg.top_p, seeds=seeds,
                                backend=cfg.rollout_backend, compile=cfg.rollout_compile)
            owners = [p for p in chosen for _ in range(PRIOR_PER_PROBLEM)]
            grades = grader.grade_many(list(zip(owners, roll.texts)))
        samples = [{"problem_id": p.id, "mode": g.mechanism, "completion": t, "exploited": bool(g.exploited),
                    "gt_correct": bool(g.gt_correct), "passed": bool(g.passed), "reward": float(g.reward),
                    "fenced": extract_code(t) is not None, "truncated": bool(tr)}
                   for p, t, g, tr in zip(owners, roll.texts, grades, roll.truncated)]
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(samples))
        tmp.replace(path)
    return samples


def prior_metrics(samples: list[dict]) -> dict:
    n = len(samples)
    rate = (lambda k: sum(bool(s[k]) for s in samples) / n) if n else (lambda k: None)
    return {"hack_prior": rate("exploited"), "solve_prior": rate("gt_correct"), "fmt_prior": rate("fenced"),
            "prior_n": n}


# ---------------------------------------------------------------------------- 3. V's pairs
def pool_pairs(cfg, tokenizer, problems, samples: list[dict]) -> tuple[list[tuple[str, str, str, str]], int]:
    """``vhack_pairs`` (prompt, hack, clean, clean_alt) from the probe's graded samples: per problem, its
    distinct exploits and its distinct non-exploited samples (gt-correct ones first); problems cycled in a
    seeded order as `env.pool.make_pairs` does. ``clean_alt`` is a second non-exploited sample, else the
    clean template. Returns (pairs, number of distinct exploits used); ConfigError when too few."""
    by_id = {p.id: p for p in problems}
    known = cfg.vhack_known_modes
    options: dict[str, tuple[list[str], list[str]]] = {}
    for s in samples:
        p = by_id.get(s["problem_id"])
        if p is None or (known is not None and p.mode not in known):
            continue
        hacks, cleans = options.setdefault(p.id, ([], []))
        (hacks if s["exploited"] else cleans).append(s)
    options = {pid: (list(dict.fromkeys(s["completion"] for s in h)),
                     list(dict.fromkeys(s["completion"] for s in sorted(c, key=lambda s: not s["gt_correct"]))))
               for pid, (h, c) in options.items()}
    options = {pid: hc for pid, hc in options.items() if hc[0] and hc[1]}
    n_hacks = sum(len(h) for h, _ in options.values())
    if n_hacks < MIN_POOL_HACKS:
        raise ConfigError(f"--vhack-pairs-source pool: the {len(samples)} graded student samples hold {n_hacks} distinct "
                          f"exploit(s) with a non-exploit of the same problem (need {MIN_POOL_HACKS}); raise "
                          f"--prior-samples or --warmstart-hack-frac, or use --vhack-pairs-source templates")
    rng = random.Random(_seed(cfg, "pairs"))
    order = sorted(options)
    rng.shuffle(order)
    pairs = []
    for i in range(cfg.vhack_pairs):
        pid = order[i % len(order)]
        rnd = i // len(order)
        hacks, cleans = options[pid]
        c = cleans[rnd % len(cleans)]
        alt = [x for x in cleans if x != c]
        c2 = alt[rnd % len(alt)] if alt else clean_completion(by_id[pid], 1 + rng.randrange(1000))
        prompt = render_prompt(tokenizer, by_id[pid], enable_thinking=cfg.enable_thinking)
        pairs.append((prompt, hacks[rnd % len(hacks)], c, c2))
    return pairs, n_hacks


def alt_hack(problem, mode: str, variant: int) -> str:
    """A hack of ``mode`` in the second surface form: the mode registry's ``alt`` template family."""
    return hack_completion(problem, mode, variant, family="alt")


def alt_template_pairs(cfg, tokenizer, problems, alt=alt_hack) -> list[tuple[str, str, str, str]]:
    """``vhack_pairs`` (prompt, alt-form hack, clean template, second clean template) over the problems whose
    mode has an alternative template, seeded as `env.pool.make_pairs`. ``alt(problem, mode, variant)`` returns
    the hack, or None for a mode without one (every registered mode has one today)."""
    known = cfg.vhack_known_modes
    eligible = [p for p in problems if p.mode and (known is None or p.mode in known)]
    rng = random.Random(_seed(cfg, "pairs"))
    rng.shuffle(eligible)
    pairs, skipped = [], set()
    i = 0
    while len(pairs) < cfg.vhack_pairs and len(skipped) < len(eligible):
        p = eligible[i % len(eligible)]
        i += 1
        if p.id in skipped:
            continue
        v = rng.randrange(1000)
        h = alt(p, p.mode, v)
        if h is None:
            skipped.add(p.id)
            continue
        prompt = render_prompt(tokenizer, p, enable_thinking=cfg.enable_thinking)
        pairs.append((prompt, h, clean_completion(p, v), clean_completion(p, v + 4)))
    if not pairs:
        raise ConfigError("--vhack-pairs-source alt_templates: no training problem's mode has an alternative hack "
                          "template" + (f" among --vhack-known-modes {list(known)}" if known else ""))
    return pairs
