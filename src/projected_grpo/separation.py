"""How well V separates live hack rollouts from the others: ``v_auc`` and ``v_auc_random``.  # ALGO LOGIC

Score of a completion i: the share of its NLL gradient that the one-sided gate would remove were i
reinforced (a rewarded row's loss gradient is adv · ∇NLL_i, and V is oriented hack-ward so that
V(∇NLL_hack − ∇NLL_clean) > 0 for most pairs)::

    score_i = Σ_m ‖relu(V_m g_im)‖² / Σ_m ‖g_im‖²        g_im = ∇_{δS_m} NLL_i  (r_m,), all adapted modules

i.e. the projector's ``cin`` of that one completion. Why a per-sample gradient and not an activation-space
proxy: V lives in knob-gradient space, so this is exactly what the intervention sees (an activation proxy
would need its own validation); the cost is one extra forward/backward over at most ``v_auc_rows`` rows
(`hack_subspace.completion_grads`, δS_hack ablated as for extraction). ``v_auc`` = P(score of a hack
sample > score of a non-hack one), ties ½ (the Mann–Whitney U / (n_h · n_c)), over the step's student
samples graded exploited vs not; ``v_auc_random`` the same with a random orthonormal basis of the same k per
module (fixed per run). 0.5 = no separation. Logged only at steps with both kinds among the scored rows;
under data parallelism each rank scores its own samples and rank 0's numbers are logged.

Owns v_auc (how well V separates live hack rollouts); must never import train.
"""

from __future__ import annotations

import random

import torch

from .hack_subspace import completion_grads, random_basis
from .sampling import derive_seed


def auc(pos: list[float], neg: list[float]) -> float | None:
    """P(p > n) + ½ P(p = n) over all (pos, neg) pairs (the normalised Mann–Whitney U); None if a side is empty."""
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def shares(V: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]) -> list[float]:
    """Per row, Σ_m ‖relu(V_m g_m)‖² / Σ_m ‖g_m‖²; ``grads`` {module: (N, r)}, ``V`` {module: (k, r)}."""
    num = den = None
    for n, g in grads.items():
        g = g.detach().float().cpu()
        d = (g ** 2).sum(1)  # (N,)
        den = d if den is None else den + d
        if n in V and V[n].shape[0]:
            c = torch.relu(g @ V[n].detach().float().cpu().T)  # (N, k)
            e = (c ** 2).sum(1)
            num = e if num is None else num + e
    if den is None:
        return []
    num = torch.zeros_like(den) if num is None else num
    return (num / den.clamp(min=1e-30)).tolist()


def select_rows(exploited: list[bool], limit: int, seed: int) -> list[int]:
    """Up to ``limit`` row indices: hacks first (up to half, more when non-hacks are short), the rest
    non-hacks, each side a seeded sample."""
    rng = random.Random(seed)
    hacks = [i for i, e in enumerate(exploited) if e]
    others = [i for i, e in enumerate(exploited) if not e]
    rng.shuffle(hacks)
    rng.shuffle(others)
    n_h = min(len(hacks), max(limit // 2, limit - len(others)))
    n_o = min(len(others), limit - n_h)
    return sorted(hacks[:n_h] + others[:n_o])


def v_auc_metrics(cfg, s, prompts: list[str], texts: list[str], exploited: list[bool], step: int) -> dict:
    """``v_auc``, ``v_auc_random`` and ``v_auc_n`` (hack, non-hack rows scored) for this step's student samples
    (``prompts[i]`` the prompt text of ``texts[i]``); {} when off, without a basis, or when one kind is absent."""
    if cfg.v_auc_rows <= 0 or s.basis is None or not s.basis.V or not any(exploited) or all(exploited):
        return {}
    idx = select_rows(exploited, cfg.v_auc_rows, derive_seed(cfg.seed, step, "v_auc"))
    if not any(exploited[i] for i in idx) or all(exploited[i] for i in idx):
        return {}
    grads = completion_grads(s.model, s.adapter, s.tokenizer, [(prompts[i], texts[i]) for i in idx], cfg.loss_norm,
                             cfg.max_new_tokens, batch_size=cfg.micro_batch, amp=cfg.amp)
    ranks = {n: m.rank for n, m in s.adapter.modules.items()}
    rand = random_basis(s.basis, ranks, derive_seed(cfg.seed, "v_auc_random"))
    out = {"v_auc_n": [sum(exploited[i] for i in idx), sum(not exploited[i] for i in idx)]}
    for key, V in (("v_auc", s.basis.V), ("v_auc_random", rand.V)):
        sc = shares(V, grads)
        out[key] = auc([sc[j] for j, i in enumerate(idx) if exploited[i]],
                       [sc[j] for j, i in enumerate(idx) if not exploited[i]])
    return out
