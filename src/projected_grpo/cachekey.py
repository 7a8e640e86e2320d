"""Keys of the on-disk caches (hack basis, teacher pool): an entry is reused only when everything that
determines its content is equal, so no edit of code, data, weights or settings can load a stale entry.

What enters each key (a changed input is a new entry, never an overwrite):
  - hack basis (`basis_key`): extraction settings, the pairs (rendered prompts included), the adapted weights
    (their SVD keys), the knob values, every other weight and buffer of the model (`weights_digest`), the
    tokenizer (vocabulary, merges, specials, chat template), the source of the code that computes it
    (`BASIS_SOURCES`) and the torch / transformers versions;
  - teacher pool (`teacher_pool_key`): the problems' full content, the modes, the pool settings, the grader's
    reward settings and timeout, the source of the whole environment package (templates, grader, sandbox)
    and the Python version the sandbox runs;
  - warm start (`warmstart_key`): its settings and seed, the exact rows it trains on (prompt text, completion),
    the model as for the basis (`model_digest`) and the code that trains it (`WARMSTART_SOURCES`). Never
    the arm: every arm of a seed loads the same warm-started knobs;
  - prior probe (`probe_key`): the warm start's key (or the bare model's), the sampling settings, the probed
    problems' content, the grader's settings and the environment's source.

Owns nothing on disk; never imports train (train and hack_subspace call it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import torch

PACKAGE = Path(__file__).parent  # tests point this at an edited copy of the package
BASIS_SOURCES = ("hack_subspace.py", "adapter.py", "grpo.py", "cachekey.py")
WARMSTART_SOURCES = ("warmstart.py", "adapter.py", "grpo.py", "cachekey.py")
_CHUNK = 1 << 22  # elements per fingerprint chunk: bounded float64 scratch on the weight's device


def source_digest(files) -> str:
    """sha256 over the named package files (paths relative to the package, their bytes)."""
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.encode() + b"\0" + (PACKAGE / f).read_bytes() + b"\0")
    return h.hexdigest()


def env_sources() -> list[str]:
    """Every module of the environment package: prompts, templates, grader, sandbox, pool, datasets."""
    return sorted(str(p.relative_to(PACKAGE)) for p in (PACKAGE / "env").glob("*.py"))


def tokenizer_digest(tok) -> str:
    """Vocabulary, merges, normaliser, specials and chat template: everything that turns text into ids."""
    backend = getattr(tok, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tok.get_vocab().items()))
    extra = json.dumps([getattr(tok, "chat_template", None), tok.special_tokens_map, type(tok).__name__],
                       sort_keys=True, default=str)
    return hashlib.sha256((body + "\0" + extra).encode()).hexdigest()


@torch.no_grad()
def tensor_fingerprint(t: torch.Tensor) -> bytes:
    """(sum x, sum x², sum x·w_i) in float64 on the tensor's device, w_i a fixed pseudo-random weight per
    position: any changed element or moved element changes it (a collision needs a crafted edit), and a
    GPU-resident 4B model is fingerprinted without copying it to the host."""
    flat = t.detach().reshape(-1)
    acc = torch.zeros(3, dtype=torch.float64, device=flat.device)
    for s in range(0, flat.numel(), _CHUNK):
        x = flat[s:s + _CHUNK].double()
        w = torch.sin(torch.arange(s, s + x.numel(), device=x.device, dtype=torch.float64) * 0.7548776662 + 0.5)
        acc += torch.stack([x.sum(), (x * x).sum(), (x * w).sum()])
    return f"{tuple(t.shape)}|{t.dtype}|".encode() + acc.cpu().numpy().tobytes()


def weights_digest(model, skip: set[int]) -> str:
    """Fingerprint of every parameter and buffer of ``model`` whose id is not in ``skip`` (the adapted
    weights, keyed by their SVD keys, and the adapter's own knobs and factors)."""
    h = hashlib.sha256()
    seen = set(skip)
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        h.update(name.encode() + b"\0" + tensor_fingerprint(t))
    return h.hexdigest()


def basis_key(model, adapter, tokenizer, pairs, settings: dict) -> str:
    """The hack-basis cache key (see the module docstring for what enters it)."""
    import transformers

    h = hashlib.sha256()
    h.update(json.dumps(settings, sort_keys=True).encode())
    h.update(adapter.metadata()["svd_keys"].encode())
    for t in adapter.knob_tensors().values():  # knob values matter for a refresh mid-run
        h.update(t.numpy().tobytes())
    h.update(json.dumps(pairs).encode())
    own = {id(x) for m in adapter.modules.values()
           for x in (m.base.weight, m.delta_s, m.delta_s_hack, m.delta_s0, m.U, m.Vh, m.S)}
    h.update(weights_digest(model, own).encode())
    h.update(tokenizer_digest(tokenizer).encode())
    h.update(source_digest(BASIS_SOURCES).encode())
    h.update(f"torch {torch.__version__} transformers {transformers.__version__}".encode())
    return h.hexdigest()[:20]


def teacher_pool_key(cfg, problems) -> str:
    """The teacher-pool cache key: ``cfg`` a Config, ``problems`` the training problems the pool covers."""
    content = [dataclasses.asdict(p) for p in problems]
    h = hashlib.sha256(json.dumps([cfg.dataset, content, cfg.teacher_per_problem,  # every mode: known modes don't enter
                                   cfg.format_bonus, cfg.pass_reward, cfg.sandbox_timeout_s],
                                  sort_keys=True, default=str).encode())
    h.update(source_digest(env_sources()).encode())
    h.update(sys.version.encode())  # the sandbox runs this interpreter
    return h.hexdigest()[:16]


def model_digest(model, adapter, tokenizer) -> str:
    """The model as the caches see it: adapted weights (SVD keys), knob values (δS₀ included when set), every
    other weight and buffer, the tokenizer, the torch / transformers versions."""
    import transformers

    h = hashlib.sha256(adapter.metadata()["svd_keys"].encode())
    for t in adapter.knob_tensors().values():
        h.update(t.numpy().tobytes())
    own = {id(x) for m in adapter.modules.values()
           for x in (m.base.weight, m.delta_s, m.delta_s_hack, m.delta_s0, m.U, m.Vh, m.S)}
    h.update(weights_digest(model, own).encode())
    h.update(tokenizer_digest(tokenizer).encode())
    h.update(f"torch {torch.__version__} transformers {transformers.__version__}".encode())
    return h.hexdigest()


def warmstart_key(model, adapter, tokenizer, rows: list[tuple[str, str]], settings: dict) -> str:
    """The warm-start cache key: ``settings`` (steps, hack fraction, lr, seed, ...; never the arm), the rows
    trained on in order (prompt text, completion), the model before it (`model_digest`), the code."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    h.update(json.dumps(rows).encode())
    h.update(model_digest(model, adapter, tokenizer).encode())
    h.update(source_digest(WARMSTART_SOURCES).encode())
    return h.hexdigest()[:20]


def probe_key(model_key: str, problems, settings: dict) -> str:
    """The prior probe's cache key: the probed model's key (a warm start's, or `model_digest`), ``settings``
    (samples, temperature, token budget, grader rewards and timeout...), the problems' content, the
    environment's source (prompts, grader, sandbox) and the Python version the sandbox runs."""
    content = [dataclasses.asdict(p) for p in problems]
    h = hashlib.sha256(json.dumps([model_key, settings, content], sort_keys=True, default=str).encode())
    h.update(source_digest([*env_sources(), "warmstart.py", "rollout.py", "fastgen.py", "sampling.py"]).encode())
    h.update(sys.version.encode())
    return h.hexdigest()[:20]
