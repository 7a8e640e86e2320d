"""No-grad rollouts: `generate` (the one entry point) and `Rollouts`, for both generation backends.

``hf``: stock ``model.generate`` (the reference backend). ``fast``: fastgen.py (static KV cache, CUDA
graphs, same sampler), ids in / ids out. This module owns what both share: tokenising the prompts,
one seed per completion, cutting each row after its first EOS, decoding texts, ``Rollouts``. Knobs
are folded into the weights by the caller (``adapter.merged()``), so generation never pays the adapter
hook. Sampling is batch-invariant (sampling.py): each completion has its own seed, derived by the
caller from run coordinates, so a resumed, re-batched or data-parallel run draws the same samples as
an uninterrupted one.

Must never import: the trainer (train, grpo, projection, adapter, ...), env/, evaluate; fastgen.py must
never import this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessorList

from . import fastgen
from .sampling import GumbelProcessor


@dataclass
class Rollouts:
    """One entry per completion; prompts repeated ``n`` times in order (p0×n, p1×n, ...)."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]  # up to and including EOS when the sample finished
    texts: list[str]
    truncated: list[bool]  # hit max_new_tokens without EOS
    capture_failed: int = 0  # fast backend: decode batches whose CUDA-graph capture failed (ran eagerly)
    capture_error: str = field(default="")  # the first such failure, one line

    def add(self, prompt_ids: list[int], new_tokens: list[int], eos: int, tokenizer) -> None:
        """Append one sampled row, cut after its first EOS; a row without EOS used every position."""
        truncated = eos not in new_tokens
        if not truncated:
            new_tokens = new_tokens[: new_tokens.index(eos) + 1]
        self.prompt_ids.append(prompt_ids)
        self.completion_ids.append(new_tokens)
        self.texts.append(tokenizer.decode(new_tokens, skip_special_tokens=True))
        self.truncated.append(truncated)

    @property
    def n_tokens(self) -> int:
        return sum(len(c) for c in self.completion_ids)


def generate(model, tokenizer, prompts: list[str], n: int, max_new_tokens: int, *, temperature: float = 1.0,
             top_p: float = 1.0, greedy: bool = False, seeds: list[int] | None = None, batch_size: int | None = None,
             backend: str = "hf", compile: bool | None = None, eos_token_id: int | None = None, **engine) -> Rollouts:
    """Sample ``n`` completions for each prompt text (already chat-templated); ``seeds`` gives one
    seed per completion (len(prompts) * n), default 0..N-1. ``backend``: ``hf`` or ``fast``.
    ``batch_size``: rows decoded together (default: 64 for ``hf``, all rows for ``fast`` unless their KV cache would not fit: fastgen.rows_per_batch).
    ``eos_token_id`` overrides the tokenizer's (benchmarks pass -1 to force full length). ``compile``
    and ``engine`` (``cuda_graphs``, ``attn``, ``bucket``, ``check_every``, ``stats``) are the fast
    engine's options (fastgen.generate_ids; ``compile``: fuse its decode step, default on CUDA)."""
    if backend not in ("hf", "fast"):
        raise ValueError(f"unknown rollout backend {backend!r}")
    if engine and backend != "fast":
        raise TypeError(f"options {sorted(engine)} are for the fast backend only")
    out = Rollouts([], [], [], [])
    if n == 0 or not prompts:
        return out
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    flat = [p for p in prompts for _ in range(n)]
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in flat]
    seeds = list(range(len(flat))) if seeds is None else list(seeds)
    if len(seeds) != len(flat):
        raise ValueError(f"need one seed per completion ({len(flat)}), got {len(seeds)}")
    if backend == "fast":
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        rows = fastgen.generate_ids(model, encoded, seeds, max_new_tokens, eos=eos, pad=pad, temperature=temperature,
                                    top_p=top_p, greedy=greedy, batch_size=batch_size, compile=compile,
                                    record=out, **engine)
    else:
        rows = _hf_ids(model, tokenizer, encoded, seeds, max_new_tokens, eos, temperature=temperature, top_p=top_p,
                       greedy=greedy, batch_size=batch_size or 64)
    for p, new in zip(encoded, rows):
        out.add(p, new, eos, tokenizer)
    return out


def _hf_ids(model, tokenizer, encoded: list[list[int]], seeds: list[int], max_new_tokens: int, eos: int, *,
            temperature: float, top_p: float, greedy: bool, batch_size: int) -> list[list[int]]:
    """The ``hf`` backend, ids in / ids out: stock ``model.generate`` on left-padded batches, sampling with
    sampling.py's per-row Gumbel processor. One row of new ids per prompt row (up to max_new_tokens)."""
    device = next(model.parameters()).device
    gen_kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos,
                      do_sample=False, temperature=None, top_p=None, top_k=None)
    rows: list[list[int]] = []
    with torch.no_grad():
        for s in range(0, len(encoded), batch_size):
            chunk = encoded[s:s + batch_size]
            L = max(map(len, chunk))
            if not (greedy or temperature == 0):
                row_seeds = torch.tensor(seeds[s:s + batch_size], dtype=torch.long, device=device)
                sampler = GumbelProcessor(row_seeds, temperature, top_p, prompt_len=L)
                gen_kwargs["logits_processor"] = LogitsProcessorList([sampler])
            ids = torch.full((len(chunk), L), tokenizer.pad_token_id, dtype=torch.long)
            att = torch.zeros_like(ids)
            for i, p in enumerate(chunk):  # left padding
                ids[i, L - len(p):] = torch.tensor(p)
                att[i, L - len(p):] = 1
            seqs = model.generate(input_ids=ids.to(device), attention_mask=att.to(device), **gen_kwargs)
            rows += [seqs[i, L:].tolist() for i in range(len(chunk))]
    return rows
