"""GRPO pieces: batching, chunked completion log-probs, advantages, the clipped surrogate, K3 KL.

Departures from the GRPO paper, on purpose:
  - advantage ``R − mean(R)`` by default (Dr.GRPO); ``std`` standardises as in the paper;
  - fixed-denominator loss ``Σ_tokens / (n_completions · max_new_tokens)`` by default (unbiased in
    length), ``token_mean`` as in the paper;
  - a group mixes live student samples with cached teacher completions; one optimizer step per
    batch by default, so the PPO ratio is 1 at the step (the clip acts only with --ppo-epochs > 1,
    train.update);
  - the KL reference is the same network with its knobs zeroed (no second model).

Owns the GRPO maths (advantages, log-probs, loss); must never import another module of the package.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint


@dataclass
class Batch:
    """Right-padded ``[prompt | completion | pad]`` rows.

    input_ids (B, L); attention_mask (B, L); completion_mask (B, L): 1 on completion tokens.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor

    def to(self, device) -> "Batch":
        device = torch.device(device)
        return Batch(*(to_device(t, device) for t in (self.input_ids, self.attention_mask, self.completion_mask)))

    @property
    def completion_lengths(self) -> torch.Tensor:  # (B,)
        return self.completion_mask.sum(1)


def make_batch(rows: list[tuple[list[int], list[int]]], pad_id: int) -> Batch:
    """``rows`` of (prompt_ids, completion_ids) → a right-padded Batch."""
    L = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    att = torch.zeros((len(rows), L), dtype=torch.long)
    comp = torch.zeros((len(rows), L), dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor(list(p) + list(c))
        att[i, :n] = 1
        comp[i, len(p):n] = 1
    return Batch(ids, att, comp)


def encode_completion(tokenizer, text: str) -> list[int]:
    """Token ids of a completion text followed by EOS (how a finished sample ends)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def _chunk_logp(lm_head, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = lm_head(h).float()  # (n, vocab) — only `chunk` rows ever exist at once
    return logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)


def completion_logprobs(model, batch: Batch, chunk: int = 1024) -> torch.Tensor:
    """Per-token log-probs of the completion tokens, (B, L) with zeros off the completion.

    Only completion positions go through the LM head, ``chunk`` tokens at a time, each chunk
    recomputed in backward (never the full fp32 (B, L, vocab) tensor)."""
    decoder = model.base_model
    hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    # position t predicts token t+1
    target_mask = batch.completion_mask[:, 1:].bool()  # (B, L-1)
    rows, cols = target_mask.nonzero(as_tuple=True)
    h = hidden[rows, cols]  # (N, H)
    targets = batch.input_ids[rows, cols + 1]  # (N,)
    flat = _lm_head_logp(model.get_output_embeddings(), h, targets, chunk)
    out = torch.zeros(batch.input_ids.shape, dtype=torch.float32, device=hidden.device)
    out[rows, cols + 1] = flat
    return out


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without a stream sync: on CUDA a plain ``.to()`` of pageable memory waits
    for the whole GPU queue to drain, so the CPU stops running ahead of a launch-heavy backward (the 4B
    profile in docs/PERF.md counted ~16 such syncs per micro-batch pass); pinned + non_blocking does not."""
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def shared_prefix_logprobs(model, prompts: list[list[int]], rows: list[tuple[int, list[int]]], pad_id: int,
                           chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of completions that share prompts, each prompt run through the decoder once.

    ``prompts``: U prompt id lists; ``rows``: B (prompt index, completion ids). The prompts' KV cache is
    repeated to the rows (gradients flow back through it), so a group of G completions of one prompt
    costs one prompt pass instead of G. Returns (logp, mask), both (B, Lc): column j is completion
    token j. Equals `completion_logprobs` on the concatenated rows up to float rounding, and is
    deterministic (the repeat is expand + cat, whose backward is a plain sum: no scatter-add).

    Raises ``NotImplementedError`` for caches other than per-layer keys/values (e.g. linear-attention
    states): use `completion_logprobs` there."""
    device = next(model.parameters()).device
    decoder = model.base_model
    order = sorted(range(len(rows)), key=lambda i: rows[i][0])  # rows of one prompt contiguous
    counts = [sum(1 for pi, _ in rows if pi == u) for u in range(len(prompts))]
    Lp, Lc = max(map(len, prompts)), max(len(c) for _, c in rows)
    p_ids = torch.full((len(prompts), Lp), pad_id, dtype=torch.long)
    p_att = torch.zeros_like(p_ids)
    for i, p in enumerate(prompts):  # right padding: real prompt tokens keep positions 0..len-1
        p_ids[i, :len(p)], p_att[i, :len(p)] = torch.tensor(p), 1
    c_ids = torch.full((len(rows), Lc), pad_id, dtype=torch.long)
    c_att = torch.zeros_like(c_ids)
    for k, i in enumerate(order):
        c = rows[i][1]
        c_ids[k, :len(c)], c_att[k, :len(c)] = torch.tensor(c), 1
    r, c = c_att.bool().nonzero(as_tuple=True)  # on the host: no sync
    back = torch.empty(len(rows), dtype=torch.long)
    back[torch.tensor(order)] = torch.arange(len(rows))
    p_len = torch.tensor([len(p) for p in prompts])
    p_ids, p_att, c_ids, c_att, p_len, r, c, back = (to_device(t, device) for t in (p_ids, p_att, c_ids, c_att, p_len,
                                                                                    r, c, back))
    out = decoder(input_ids=p_ids, attention_mask=p_att, use_cache=True)
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    layers = getattr(cache, "layers", None)
    if not layers or not all(hasattr(layer, "keys") and hasattr(layer, "values") for layer in layers):
        raise NotImplementedError(f"prompt sharing needs a key/value cache, got {type(cache).__name__}")
    for layer in layers:
        layer.keys, layer.values = _repeat_rows(layer.keys, counts), _repeat_rows(layer.values, counts)
    cache_arg = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
    hidden = decoder(input_ids=c_ids, attention_mask=torch.cat([_repeat_rows(p_att, counts), c_att], 1),
                     position_ids=_repeat_rows(p_len, counts)[:, None] + torch.arange(Lc, device=device),
                     use_cache=True, **{cache_arg: cache}).last_hidden_state  # (B, Lc, H), prompt-sorted rows
    # completion token j is predicted by the hidden state before it: the prompt's last one for j = 0
    last = out.last_hidden_state[torch.arange(len(prompts), device=device), p_len - 1]  # (U, H)
    pred = torch.cat([_repeat_rows(last, counts)[:, None], hidden[:, :-1]], 1)  # (B, Lc, H)
    logp = torch.zeros(c_ids.shape, dtype=torch.float32, device=device)
    logp[r, c] = _lm_head_logp(model.get_output_embeddings(), pred[r, c], c_ids[r, c], chunk)
    return logp[back], c_att[back]


def _repeat_rows(t: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Row u of ``t`` repeated counts[u] times along dim 0 (expand + cat: a deterministic backward)."""
    return torch.cat([t[u:u + 1].expand(n, *t.shape[1:]) for u, n in enumerate(counts) if n])


def _lm_head_logp(lm_head, h: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """log p(target) for (N, H) hidden states, ``chunk`` rows at a time, recomputed in backward."""
    pieces = []
    for s in range(0, h.shape[0], chunk):
        hs, ts = h[s:s + chunk], targets[s:s + chunk]
        if torch.is_grad_enabled() and hs.requires_grad:
            pieces.append(checkpoint(_chunk_logp, lm_head, hs, ts, use_reentrant=False))
        else:
            pieces.append(_chunk_logp(lm_head, hs, ts))
    return torch.cat(pieces) if pieces else h.new_zeros(0, dtype=torch.float32)


def naive_completion_logprobs(model, batch: Batch) -> torch.Tensor:
    """Reference implementation (full logits) for tests."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    logp = logits[:, :-1].log_softmax(-1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    out = torch.zeros(batch.input_ids.shape, dtype=torch.float32, device=logits.device)
    out[:, 1:] = logp * batch.completion_mask[:, 1:]
    return out


def advantages(rewards: torch.Tensor, kind: str = "center", eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards (P, G) → (advantages (P, G), zero_variance (P,) bool). Zero-variance groups get 0."""
    mean = rewards.mean(1, keepdim=True)
    adv = rewards - mean
    if kind == "std":
        adv = adv / (rewards.std(1, keepdim=True, unbiased=False) + eps)
    elif kind != "center":
        raise ValueError(f"unknown advantage kind {kind!r}")
    zero_var = (rewards.max(1).values - rewards.min(1).values) == 0
    adv = torch.where(zero_var[:, None], torch.zeros_like(adv), adv)
    return adv, zero_var


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None, adv: torch.Tensor,
              mask: torch.Tensor, clip_eps: float, beta: float, loss_norm: str, max_new_tokens: int):
    """Clipped surrogate + optional K3 KL. logp/old/ref/mask (B, L); adv (B,). Returns (loss, kl_mean).

    ``fixed``: Σ_tokens / (B · max_new_tokens); ``token_mean``: mean over each row's tokens, then rows."""
    mask = mask.float()
    ratio = torch.exp(logp - old_logp)
    a = adv[:, None]
    surrogate = torch.minimum(ratio * a, ratio.clamp(1 - clip_eps, 1 + clip_eps) * a)
    per_token = -surrogate
    kl = torch.zeros_like(logp)
    if ref_logp is not None and beta > 0:
        d = ref_logp - logp
        kl = torch.exp(d) - d - 1  # K3 estimator, ≥ 0
        per_token = per_token + beta * kl
    n_tok = mask.sum().clamp(min=1)
    kl_mean = (kl * mask).sum() / n_tok
    if loss_norm == "fixed":
        loss = (per_token * mask).sum() / (mask.shape[0] * max_new_tokens)
    elif loss_norm == "token_mean":
        loss = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    else:
        raise ValueError(f"unknown loss_norm {loss_norm!r}")
    return loss, kl_mean.detach()


def row_weights(mask: torch.Tensor, loss_norm: str, max_new_tokens: int) -> torch.Tensor:
    """Per-row denominator factor of `grpo_loss`, (B,): used to give extraction the same normalisation."""
    if loss_norm == "fixed":
        return torch.full((mask.shape[0],), 1.0 / max_new_tokens, device=mask.device)
    return 1.0 / mask.float().sum(1).clamp(min=1)
