"""Batch-invariant sampling: each row draws from its own counter-based random stream.

A sample is ``argmax(logits / T + Gumbel(u))`` over the top-p set, with ``u`` a hash of
(row seed, position, token id). A row's tokens therefore depend only on its own seed and logits,
never on which other rows share the batch: a data-parallel run, a resumed run and a run with another
micro-batching draw the same completions. The hash is a few integer ops on (B, vocab) tensors.

Owns seeded sampling; must never import another module of the package.
"""

from __future__ import annotations

import hashlib

import torch

_MASK31 = (1 << 31) - 1
_C1, _C2, _C3 = 0x2C1B3C6D, 0x297A2D39, 0x1B873593  # odd constants < 2^31: products stay < 2^62


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 31-bit integer hash (xorshift-multiply rounds), elementwise on int64."""
    for c in (_C1, _C2, _C3):
        x = ((x ^ (x >> 15)) * c) & _MASK31
    return x ^ (x >> 13)


def uniform(row_seeds: torch.Tensor, position: int, vocab: int) -> torch.Tensor:
    """u ∈ (0, 1), shape (B, vocab), a pure function of (row seed, position, token id)."""
    dev = row_seeds.device
    base = _mix((row_seeds.long() & _MASK31) ^ _mix(torch.tensor(position, device=dev, dtype=torch.long) + 0x9E37))
    tok = torch.arange(vocab, device=dev, dtype=torch.long)
    x = _mix(base[:, None] * 0x7FF + _mix(tok)[None, :])
    x = _mix(x ^ (base[:, None] >> 7))
    return (x.double() + 0.5) / float(1 << 31)


def top_p_mask(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Logits with tokens outside the smallest set of cumulative probability ≥ top_p set to -inf."""
    if top_p >= 1.0:
        return logits
    sorted_logits, idx = logits.sort(-1, descending=True)
    probs = sorted_logits.softmax(-1)
    drop = probs.cumsum(-1) - probs > top_p  # keep the token that crosses top_p
    drop_orig = torch.zeros_like(drop).scatter(-1, idx, drop)
    return logits.masked_fill(drop_orig, float("-inf"))


def sample(logits: torch.Tensor, row_seeds: torch.Tensor, position: int, temperature: float = 1.0,
           top_p: float = 1.0) -> torch.Tensor:
    """One token per row from ``logits`` (B, vocab); greedy when temperature == 0."""
    if temperature == 0:
        return logits.argmax(-1)
    scores = top_p_mask(logits.float() / temperature, top_p)
    gumbel = -torch.log(-torch.log(uniform(row_seeds, position, logits.shape[-1])))
    return (scores.double() + gumbel).argmax(-1)


class GumbelProcessor:
    """A transformers LogitsProcessor: returns scores whose argmax is the batch-invariant sample
    (use with greedy decoding)."""

    def __init__(self, row_seeds: torch.Tensor, temperature: float, top_p: float, prompt_len: int):
        self.row_seeds, self.temperature, self.top_p, self.prompt_len = row_seeds, temperature, top_p, prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        position = input_ids.shape[1] - self.prompt_len  # tokens generated so far: padding-invariant
        choice = sample(scores, self.row_seeds.to(scores.device), position, self.temperature, self.top_p)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, choice[:, None], 0.0)


def derive_seed(*coords) -> int:
    """A seed from run coordinates (never from time or pid)."""
    return int.from_bytes(hashlib.sha256(repr(coords).encode()).digest()[:4], "little")
