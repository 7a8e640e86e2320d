"""Generation backends for no-grad rollouts.

``hf``: stock ``model.generate`` (the reference backend). ``fast``: fastgen.py (static KV cache, CUDA
graphs, same sampler, same ``Rollouts``). Knobs are folded into the weights by the
caller (``adapter.merged()``), so generation never pays the adapter hook. Sampling is batch-invariant
(sampling.py): each completion has its own seed, derived by the caller from run coordinates, so a
resumed, re-batched or data-parallel run draws the same samples as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessorList

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
             top_p: float = 1.0, greedy: bool = False, seeds: list[int] | None = None, batch_size: int = 64,
             backend: str = "hf", compile: bool | None = None) -> Rollouts:
    """Sample ``n`` completions for each prompt text (already chat-templated); ``seeds`` gives one
    seed per completion (len(prompts) * n), default 0..N-1. ``backend``: ``hf`` or ``fast``
    (``compile``: fuse the fast decode step with torch.compile; default on CUDA)."""
    if backend == "fast":
        from . import fastgen

        return fastgen.generate(model, tokenizer, prompts, n, max_new_tokens, temperature=temperature, top_p=top_p,
                                greedy=greedy, seeds=seeds, compile=compile)
    if backend != "hf":
        raise ValueError(f"unknown rollout backend {backend!r}")
    out = Rollouts([], [], [], [])
    if n == 0 or not prompts:
        return out
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    flat = [p for p in prompts for _ in range(n)]
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in flat]
    seeds = list(range(len(flat))) if seeds is None else list(seeds)
    if len(seeds) != len(flat):
        raise ValueError(f"need one seed per completion ({len(flat)}), got {len(seeds)}")
    gen_kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos,
                      do_sample=False, temperature=None, top_p=None, top_k=None)
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
            for i, p in enumerate(chunk):
                out.add(p, seqs[i, L:].tolist(), eos, tokenizer)
    return out
