"""Hack subspace V from labelled (hack, clean) completion pairs.  # ALGO LOGIC

For pair i the GRPO gradient of (hack adv +1, clean adv −1) on a module's knob is
``d_i = ∇NLL(hack_i) − ∇NLL(clean_i)`` (r,). Stack ``D`` (n_pairs, r) per module, SVD, keep the top-k
right singular vectors as rows of ``V`` (k, r); orient each axis hack-ward by per-pair majority vote;
drop axes with ``S_i / S_0 < tau``; then a global floor drops axes below a quantile of all singular
values; modules left empty are dropped.

The completion NLL uses the live loss's normalisation (``fixed`` by default: Σ_tokens / max_new_tokens),
else V would be biased toward long completions. Per-completion gradients come from one batched
backward via the adapter's per-row capture (mathematically the isolated backward of each row).

Negative controls, k matched per module to the real basis:
  - ``random``: orthonormal Gaussian directions;
  - ``label_permuted``: the 2n hack and clean completions pooled, then re-split at random into n
    "hack" and n "clean" members, so a pair's difference carries no hack label (flipping the sign of
    real pair rows, the old ``shuffled`` control, leaves the SVD subspace unchanged: it was real V);
  - ``matched_capture``: label-free, fitted at step 1 to capture the share of the live gradient that
    real V captures (``fit_capture``): top principal directions of the pooled per-completion gradients
    (no labels), tilted toward random directions or toward the step-1 gradient until the one-sided
    captured share matches real V's;
  - ``nonhack``: clean vs a second clean completion.

Owns the extraction of V and the control bases; must never import train, projection or evaluate.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .adapter import SVDAdapter
from .cachekey import basis_key
from .grpo import completion_logprobs, encode_completion, make_batch, row_weights

SOURCES = ("real", "random", "label_permuted", "matched_capture", "nonhack")
CAPTURE_TOL = 0.10  # matched_capture: |captured share − real V's| ≤ 10 % of real V's


@dataclass
class HackBasis:
    """Per module: V (k, r) orthonormal rows oriented hack-ward, S (k,) singular values."""

    V: dict[str, torch.Tensor]
    S: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)
    aux: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # kind -> module -> (k, r): fit inputs

    @property
    def k(self) -> dict[str, int]:
        return {n: v.shape[0] for n, v in self.V.items()}

    @property
    def n_axes(self) -> int:
        return sum(self.k.values())

    def save(self, path: str | Path) -> None:
        tensors = {}
        for n in self.V:
            tensors[f"{n}::V"] = self.V[n].float().cpu().clone().contiguous()
            tensors[f"{n}::S"] = self.S[n].float().cpu().contiguous()
        for kind, per in self.aux.items():
            for n, t in per.items():
                tensors[f"{n}::{kind}"] = t.float().cpu().clone().contiguous()  # may alias V
        path = Path(path)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")  # concurrent writers never share a tmp file
        save_file(tensors, tmp, metadata={"meta": json.dumps(self.meta, sort_keys=True)})
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "HackBasis":
        V, S, aux = {}, {}, {}
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
            for key in f.keys():
                name, _, kind = key.rpartition("::")
                (V if kind == "V" else S if kind == "S" else aux.setdefault(kind, {}))[name] = f.get_tensor(key)
        return cls(V, S, meta, aux)

    def overlap(self, other: "HackBasis") -> float | None:
        """Mean over shared modules of ‖V_a V_bᵀ‖_F² / min(k_a, k_b): 1 = same subspace, 0 = orthogonal."""
        vals = []
        for n in set(self.V) & set(other.V):
            a, b = self.V[n].float(), other.V[n].float().to(self.V[n].device)
            k = min(a.shape[0], b.shape[0])
            if k:
                vals.append(float(((a @ b.T) ** 2).sum()) / k)
        return sum(vals) / len(vals) if vals else None


# ---------------------------------------------------------------------------- gradients
def completion_grads(model, adapter: SVDAdapter, tokenizer, rows: list[tuple[str, str]], loss_norm: str,
                     max_new_tokens: int, batch_size: int = 8, amp: bool = False) -> dict[str, torch.Tensor]:
    """Knob gradient of each completion's NLL: rows of (prompt_text, completion_text) →
    {module: (N, r)} on CPU, fp32. δS_hack is ablated (the basis must not rotate off-hack).
    ``amp``: the forward pass under bf16 autocast, as the trainer's with --amp."""
    device = next(iter(adapter.modules.values())).delta_s.device
    encoded = [(tokenizer(p, add_special_tokens=False)["input_ids"], encode_completion(tokenizer, c)) for p, c in rows]
    out: dict[str, list[torch.Tensor]] = {n: [] for n in adapter.modules}
    for s in range(0, len(encoded), batch_size):
        batch = make_batch(encoded[s:s + batch_size], tokenizer.pad_token_id).to(device)
        with adapter.ablated(), adapter.capture_row_grads() as row_grads:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logp = completion_logprobs(model, batch)
            w = row_weights(batch.completion_mask, loss_norm, max_new_tokens)
            nll = -(logp.sum(1) * w).sum()
            torch.autograd.grad(nll, adapter.knobs())
        for n in adapter.modules:
            g = row_grads[n].detach().float().cpu()
            if not bool(torch.isfinite(g).all()):  # else the SVD below dies with a LinAlgError traceback
                from .config import ConfigError

                raise ConfigError(
                    f"hack-subspace extraction: non-finite knob gradient in module {n} (pair rows {s}-{s + len(g) - 1}); "
                    f"likely the tokenizer maps the completion text to its pad id (check unk_token != pad_token) or "
                    f"the forward overflows in {next(model.parameters()).dtype} (try --dtype float32)")
            out[n].append(g)
    return {n: torch.cat(v) for n, v in out.items()}


# ---------------------------------------------------------------------------- bases
def orient(V: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """Flip each axis (row of V) so most pairs project positively (hack-ward); ties by the sum."""
    proj = D @ V.T  # (n, k)
    votes = torch.sign(proj).sum(0)
    sign = torch.where(votes != 0, torch.sign(votes), torch.sign(proj.sum(0)))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return V * sign[:, None]


def top_axes(D: torch.Tensor, k: int, tau: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k right singular vectors of D (n, r), oriented, with the per-module floor S_i/S_0 ≥ tau."""
    _, S, Vh = torch.linalg.svd(D.double(), full_matrices=False)
    k = min(k, S.numel())
    S, V = S[:k], Vh[:k]
    if S.numel() and S[0] > 0:
        keep = S / S[0] >= tau
        S, V = S[keep], V[keep]
    else:
        S, V = S[:0], V[:0]
    return orient(V, D.double()).float(), S.float()


def global_floor(V: dict[str, torch.Tensor], S: dict[str, torch.Tensor], quantile: float):
    """Drop axes whose singular value is below the ``quantile`` of all kept values; drop empty modules."""
    if quantile > 0 and S:
        allS = torch.cat([s for s in S.values()])
        if allS.numel():
            floor = torch.quantile(allS.double(), quantile).item()
            V = {n: v[S[n] >= floor] for n, v in V.items()}
            S = {n: s[s >= floor] for n, s in S.items()}
    keep = [n for n in V if V[n].shape[0] > 0]
    return {n: V[n] for n in keep}, {n: S[n] for n in keep}


def real_basis(g_hack: dict[str, torch.Tensor], g_clean: dict[str, torch.Tensor], k: int, tau: float,
               quantile: float) -> HackBasis:
    V, S = {}, {}
    for n in g_hack:
        V[n], S[n] = top_axes(g_hack[n] - g_clean[n], k, tau)
    V, S = global_floor(V, S, quantile)
    return HackBasis(V, S)


def matched_basis(D: dict[str, torch.Tensor], like: HackBasis) -> HackBasis:
    """Top-k_m axes of each module's D with k_m taken from ``like`` (no floors: k is matched)."""
    V, S = {}, {}
    for n, k in like.k.items():
        V[n], S[n] = top_axes(D[n], k, 0.0)
    return HackBasis(V, S)


def random_basis(like: HackBasis, ranks: dict[str, int], seed: int) -> HackBasis:
    gen = torch.Generator().manual_seed(seed)
    V, S = {}, {}
    for n, k in like.k.items():
        q, _ = torch.linalg.qr(torch.randn(ranks[n], k, generator=gen, dtype=torch.float64))
        V[n], S[n] = q.T.float().contiguous(), torch.ones(k)
    return HackBasis(V, S)


def permuted_pairs(g_hack: dict[str, torch.Tensor], g_clean: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """The label control's pair rows: the 2n completions pooled and re-split at random into n "hack"
    and n "clean" members (one permutation for every module), D = g[first half] − g[second half] (n, r)."""
    n = next(iter(g_hack.values())).shape[0]
    perm = torch.randperm(2 * n, generator=torch.Generator().manual_seed(seed))
    out = {}
    for m in g_hack:
        pooled = torch.cat([g_hack[m], g_clean[m]])  # (2n, r)
        out[m] = pooled[perm[:n]] - pooled[perm[n:]]
    return out


def principal_basis(g_hack: dict[str, torch.Tensor], g_clean: dict[str, torch.Tensor], like: HackBasis) -> HackBasis:
    """Top-k_m principal directions of the pooled, centred per-completion gradients: no labels used."""
    pooled = {}
    for m in like.V:
        x = torch.cat([g_hack[m], g_clean[m]])
        pooled[m] = x - x.mean(0, keepdim=True)
    return matched_basis(pooled, like)


def bases_from_grads(g_hack, g_clean, g_alt, source: str, k: int, tau: float, quantile: float, seed: int,
                     ranks: dict[str, int]) -> HackBasis:
    """The basis for ``source``; controls get the real basis's k per module."""
    real = real_basis(g_hack, g_clean, k, tau, quantile)
    if source == "real":
        return real
    if source == "random":
        return random_basis(real, ranks, seed)
    if source == "label_permuted":
        return matched_basis(permuted_pairs(g_hack, g_clean, seed), real)
    if source == "matched_capture":  # principal directions until fit_capture sees the step-1 gradient
        basis = principal_basis(g_hack, g_clean, real)
        basis.aux = {"Vreal": real.V, "Vpc": dict(basis.V), "Vrand": random_basis(real, ranks, seed).V}
        basis.meta = {"capture_fitted": False}
        return basis
    if source == "nonhack":
        return matched_basis({n: g_clean[n] - g_alt[n] for n in g_clean}, real)
    raise ValueError(f"unknown vhack source {source!r}; choose from {SOURCES}")


# ---------------------------------------------------------------------------- matched capture
def _orth(M: torch.Tensor) -> torch.Tensor:
    """Orthonormal rows spanning the rows of M (k, r)."""
    q, _ = torch.linalg.qr(M.double().T)
    return q.T.float().contiguous()


def _captured(V: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], one_sided: bool = True) -> float:
    """Σ‖relu(V g)‖² / Σ‖g‖², square-rooted (the projector's ``cin``); two-sided: ‖V g‖."""
    num = den = 0.0
    for n, g in grads.items():
        g = g.detach().float().cpu()
        den += float((g ** 2).sum())
        if n in V and V[n].shape[0]:
            c = V[n] @ g
            num += float(((torch.relu(c) if one_sided else c) ** 2).sum())
    return (num / den) ** 0.5 if den > 0 else 0.0


def capture_path(basis: HackBasis, grads: dict[str, torch.Tensor], u: float) -> dict[str, torch.Tensor]:
    """The label-free family the fit searches, per module (k, r), oriented so that V g ≥ 0:
    u ∈ [0, 1]: random → principal directions; u ∈ [1, 2]: principal → principal with its first axis
    replaced by the step-1 gradient's own direction (capture of that module's gradient = 1)."""
    out = {}
    for n, P in basis.aux["Vpc"].items():
        R, g = basis.aux["Vrand"][n], grads[n].detach().float().cpu()
        if u <= 1:
            M = (1 - u) * R + u * P
        else:
            G = P.clone()
            if g.norm() > 0:
                G[0] = g / g.norm()
            M = (2 - u) * P + (u - 1) * G
        V = _orth(M)
        sign = torch.sign(V @ g)
        out[n] = V * torch.where(sign == 0, torch.ones_like(sign), sign)[:, None]
    return out


def fit_capture(basis: HackBasis, grads: dict[str, torch.Tensor], tol: float = CAPTURE_TOL, iters: int = 50) -> dict:
    """Fit a ``matched_capture`` basis in place to the step-1 gradient ``grads`` {module: (r,)}: its
    one-sided captured share ‖relu(V g)‖/‖g‖ is brought within ``tol`` (relative) of real V's on the same
    gradient, by bisection on ``capture_path``. Returns the fit's metrics (a row's ``capture_*`` keys)."""
    target = _captured(basis.aux["Vreal"], grads)
    c = {u: _captured(capture_path(basis, grads, u), grads) for u in (0.0, 1.0, 2.0)}
    if abs(c[1.0] - target) <= tol * target:
        u = 1.0
    elif c[0.0] >= target:  # even random directions capture too much (a tiny rank): closest is random
        u = 0.0
    else:
        lo, hi = (0.0, 1.0) if c[1.0] > target else (1.0, 2.0)
        u = hi
        for _ in range(iters):
            u = (lo + hi) / 2
            cu = _captured(capture_path(basis, grads, u), grads)
            if abs(cu - target) <= tol * target / 4:
                break
            lo, hi = (u, hi) if cu < target else (lo, u)
    V = capture_path(basis, grads, u)
    got = _captured(V, grads)
    basis.V.clear()
    basis.V.update(V)
    basis.S.clear()
    basis.S.update({n: torch.ones(v.shape[0]) for n, v in V.items()})
    fit = {"capture_target": target, "capture": got, "capture_u": u,
           "capture_matched": abs(got - target) <= tol * target}
    basis.meta.update(capture_fitted=True, **fit)
    return fit


def principal_cosines(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between the row spaces of orthonormal A (k_a, r) and B (k_b, r)."""
    return torch.linalg.svdvals(A.double() @ B.double().T).clamp(max=1.0).float()


def extract_basis(model, adapter: SVDAdapter, tokenizer, pairs: list[tuple[str, str, str, str]], *,
                  source: str = "real", k: int = 4, tau: float = 0.1, quantile: float = 0.0, seed: int = 0,
                  loss_norm: str = "fixed", max_new_tokens: int = 64, cache: Path | None = None,
                  batch_size: int = 8, amp: bool = False) -> HackBasis:
    """pairs of (prompt_text, hack, clean, clean_alt) → HackBasis for ``source``.

    With ``cache`` (a folder), the result is stored under a key of (model weights, knob values,
    pairs, settings): a changed pair set or model can never load an old V."""
    if not pairs:
        raise ValueError("hack subspace extraction needs at least one (hack, clean) pair")
    settings = dict(source=source, k=k, tau=tau, quantile=quantile, seed=seed, loss_norm=loss_norm,
                    max_new_tokens=max_new_tokens, **({"amp": True} if amp else {}))
    key = _cache_key(model, adapter, tokenizer, pairs, settings)
    path = cache / f"{key}.safetensors" if cache is not None else None
    if path is not None and path.exists():
        return HackBasis.load(path)
    rows = [(p, h) for p, h, _, _ in pairs] + [(p, c) for p, _, c, _ in pairs]
    if source == "nonhack":
        rows += [(p, a) for p, _, _, a in pairs]
    g = completion_grads(model, adapter, tokenizer, rows, loss_norm, max_new_tokens, batch_size, amp)
    n = len(pairs)
    g_hack = {m: t[:n] for m, t in g.items()}
    g_clean = {m: t[n:2 * n] for m, t in g.items()}
    g_alt = {m: t[2 * n:] for m, t in g.items()} if source == "nonhack" else None
    ranks = {m: adapter.modules[m].rank for m in adapter.modules}
    basis = bases_from_grads(g_hack, g_clean, g_alt, source, k, tau, quantile, seed, ranks)
    basis.meta = {**basis.meta, **settings, "n_pairs": n, "key": key, "base_model": adapter.base_id, "n_axes": basis.n_axes,
                  "n_modules": len(basis.V)}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        basis.save(path)
    return basis


def _cache_key(model, adapter: SVDAdapter, tokenizer, pairs, settings: dict) -> str:
    """Everything that determines the basis: settings, pairs, all weights, knobs, tokenizer, code (cachekey.py)."""
    return basis_key(model, adapter, tokenizer, pairs, settings)
