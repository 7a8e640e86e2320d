"""Hack subspace V from labelled (hack, clean) completion pairs.  # ALGO LOGIC

For pair i the GRPO gradient of (hack adv +1, clean adv −1) on a module's knob is
``d_i = ∇NLL(hack_i) − ∇NLL(clean_i)`` (r,). Stack ``D`` (n_pairs, r) per module, SVD, keep the top-k
right singular vectors as rows of ``V`` (k, r); orient each axis hack-ward by per-pair majority vote;
drop axes with ``S_i / S_0 < tau``; then a global floor drops axes below a quantile of all singular
values; modules left empty are dropped.

The completion NLL uses the live loss's normalisation (``fixed`` by default: Σ_tokens / max_new_tokens),
else V would be biased toward long completions. Per-completion gradients come from one batched
backward via the adapter's per-row capture (mathematically the isolated backward of each row).

Negative controls, k matched per module to the real basis: ``random`` (orthonormal Gaussian),
``shuffled`` (hack/clean swapped on a random half of pairs), ``nonhack`` (clean vs a second clean).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .adapter import SVDAdapter
from .grpo import completion_logprobs, encode_completion, make_batch, row_weights

SOURCES = ("real", "random", "shuffled", "nonhack")


@dataclass
class HackBasis:
    """Per module: V (k, r) orthonormal rows oriented hack-ward, S (k,) singular values."""

    V: dict[str, torch.Tensor]
    S: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)

    @property
    def k(self) -> dict[str, int]:
        return {n: v.shape[0] for n, v in self.V.items()}

    @property
    def n_axes(self) -> int:
        return sum(self.k.values())

    def save(self, path: str | Path) -> None:
        tensors = {}
        for n in self.V:
            tensors[f"{n}::V"] = self.V[n].float().cpu().contiguous()
            tensors[f"{n}::S"] = self.S[n].float().cpu().contiguous()
        path = Path(path)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")  # concurrent writers never share a tmp file
        save_file(tensors, tmp, metadata={"meta": json.dumps(self.meta, sort_keys=True)})
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "HackBasis":
        V, S = {}, {}
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
            for key in f.keys():
                name, _, kind = key.rpartition("::")
                (V if kind == "V" else S)[name] = f.get_tensor(key)
        return cls(V, S, meta)

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
            out[n].append(row_grads[n].detach().float().cpu())
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


def bases_from_grads(g_hack, g_clean, g_alt, source: str, k: int, tau: float, quantile: float, seed: int,
                     ranks: dict[str, int]) -> HackBasis:
    """The basis for ``source``; controls get the real basis's k per module."""
    real = real_basis(g_hack, g_clean, k, tau, quantile)
    if source == "real":
        return real
    if source == "random":
        return random_basis(real, ranks, seed)
    if source == "shuffled":
        gen = torch.Generator().manual_seed(seed)
        n_pairs = next(iter(g_hack.values())).shape[0]
        flip = torch.randperm(n_pairs, generator=gen)[: n_pairs // 2]
        sign = torch.ones(n_pairs)
        sign[flip] = -1.0
        return matched_basis({n: (g_hack[n] - g_clean[n]) * sign[:, None] for n in g_hack}, real)
    if source == "nonhack":
        return matched_basis({n: g_clean[n] - g_alt[n] for n in g_clean}, real)
    raise ValueError(f"unknown vhack source {source!r}; choose from {SOURCES}")


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
    key = _cache_key(adapter, pairs, settings)
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
    basis.meta = {**settings, "n_pairs": n, "key": key, "base_model": adapter.base_id, "n_axes": basis.n_axes,
                  "n_modules": len(basis.V)}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        basis.save(path)
    return basis


def _cache_key(adapter: SVDAdapter, pairs, settings: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(settings, sort_keys=True).encode())
    h.update(adapter.metadata()["svd_keys"].encode())
    for t in adapter.knob_tensors().values():  # knob values matter for a refresh mid-run
        h.update(t.numpy().tobytes())
    h.update(json.dumps(pairs).encode())
    return h.hexdigest()[:20]
