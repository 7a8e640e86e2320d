"""Fast no-grad generation for Llama / Qwen2 / Qwen3-shaped HF causal LMs.  (backend ``fast``)

A compact decode loop over the HF model's own weight tensors (no copy; under ``adapter.merged()``
they are the merged weights), so what it computes is the HF forward written out once:

  - static KV cache ``(layers, B, kv_heads, T_max, head_dim)`` sized prompt + max_new_tokens;
  - one batched prefill of left-padded prompts (per-row position ids ``t - pad_i``; pad queries
    attend only to themselves, so no NaN ever enters the cache);
  - a decode step over static buffers whose in-place updates (cache write at column ``cur``,
    position += 1, mask column opened) make it replayable: on CUDA it is captured as CUDA graphs,
    one per KV-length bucket (``bucket`` columns), so a step reads only the filled part of the cache;
    on CPU the same function runs eagerly (this is what the CPU tests check);
  - sampling on the device with the batch-invariant Gumbel sampler of ``sampling.py`` (same
    (seed, position, token) hash, position passed as a device tensor so it can live in a graph);
    greedy = argmax. Hence for equal logits the fast and HF backends draw the same tokens;
  - per-row stop at EOS: finished rows emit padding; the host checks "all finished" every
    ``check_every`` steps (one sync) and stops early.

Ids in, ids out (`generate_ids`): tokenising the prompts, cutting rows at EOS and building ``Rollouts``
is rollout.generate's, for both backends (the one entry point: ``rollout.generate(..., backend="fast")``).

Owns: the fast decode engine (``Decoder``, ``generate_ids``, ``model_spec``, ``check_architecture``).
Must never import: rollout.py (it imports this module), the trainer (train, grpo, projection, ...), env/.

Why not HF ``generate`` with a ``StaticCache``: its step attends over the whole static cache every
step (no length buckets) and its mask/cache bookkeeping is Python that a graph must freeze; written
out here, the step is ~40 lines and every tensor it touches is ours. Measurements: docs/PERF.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F

from .errors import UserError
from .sampling import _MASK31, _mix, top_p_mask

SUPPORTED = ("llama", "qwen2", "qwen3", "mistral")


class FastGenError(UserError, RuntimeError):
    """A model this backend cannot run (architecture, activation, live adapter knobs)."""


# ---------------------------------------------------------------------------- weights
def _lin(m):
    """(weight, bias) of an nn.Linear or of a KnobLinear's base layer (the merged weight under
    ``adapter.merged()``). Refuses live non-zero knobs: this path never runs the hook."""
    if hasattr(m, "base") and hasattr(m, "scale"):
        s = m.scale()
        if s is not None and bool((s != 0).any()):
            raise FastGenError("fast generation reads base weights: call it under adapter.merged() "
                               "(live non-zero knobs would be ignored)")
        m = m.base
    return m.weight, m.bias


@dataclass
class Layer:
    ln1: torch.Tensor
    ln2: torch.Tensor
    q: tuple
    k: tuple
    v: tuple
    o: tuple
    gate: tuple
    up: tuple
    down: tuple
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None


@dataclass
class Spec:
    layers: list[Layer]
    embed: torch.Tensor
    norm: torch.Tensor
    lm_head: torch.Tensor
    inv_freq: torch.Tensor  # (head_dim/2,) fp32
    rope_scale: float
    eps: float
    n_heads: int
    n_kv: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device
    extra: dict = field(default_factory=dict)

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V bytes one token takes in the static cache (all layers)."""
        return 2 * len(self.layers) * self.n_kv * self.head_dim * torch.empty((), dtype=self.dtype).element_size()


def check_architecture(cfg) -> None:
    """Refuse (FastGenError) an HF config this backend cannot run; needs no weights (checked before loading)."""
    mt = getattr(cfg, "model_type", "")
    if mt not in SUPPORTED:
        raise FastGenError(f"--rollout-backend fast supports model types {list(SUPPORTED)}, not {mt!r}; "
                           f"use --rollout-backend hf")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise FastGenError(f"--rollout-backend fast supports silu MLPs, not {cfg.hidden_act!r}; use --rollout-backend hf")
    if getattr(cfg, "use_sliding_window", False) or (mt == "mistral" and getattr(cfg, "sliding_window", None)):
        raise FastGenError("--rollout-backend fast has no sliding-window attention; use --rollout-backend hf")


def model_spec(model) -> Spec:
    cfg = model.config
    check_architecture(cfg)
    dec = model.model
    layers = []
    for lyr in dec.layers:
        a, m = lyr.self_attn, lyr.mlp
        qn, kn = getattr(a, "q_norm", None), getattr(a, "k_norm", None)
        layers.append(Layer(lyr.input_layernorm.weight, lyr.post_attention_layernorm.weight,
                            _lin(a.q_proj), _lin(a.k_proj), _lin(a.v_proj), _lin(a.o_proj),
                            _lin(m.gate_proj), _lin(m.up_proj), _lin(m.down_proj),
                            None if qn is None else qn.weight, None if kn is None else kn.weight))
    n_heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    rot = dec.rotary_emb
    emb = dec.embed_tokens.weight
    return Spec(layers, emb, dec.norm.weight, _lin(model.get_output_embeddings())[0], rot.inv_freq.float(),
                float(getattr(rot, "attention_scaling", 1.0)), float(cfg.rms_norm_eps), n_heads,
                cfg.num_key_value_heads, head_dim, emb.dtype, emb.device)


# ---------------------------------------------------------------------------- the forward, written out
def rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """HF LlamaRMSNorm / Qwen3RMSNorm, op for op (fp32 statistics, cast, then weight)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


def linear(x, wb):
    return F.linear(x, wb[0], wb[1])


def rope(pos: torch.Tensor, inv_freq: torch.Tensor, scale: float, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """pos (B, T) → cos, sin (B, 1, T, head_dim), as HF's rotary embedding computes them."""
    freqs = pos[..., None].float() * inv_freq
    e = torch.cat((freqs, freqs), dim=-1)
    return (e.cos() * scale).to(dtype)[:, None], (e.sin() * scale).to(dtype)[:, None]


def _rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def pre_attn(x, ln1, wq, bq, wk, bk, wv, bv, qn, kn, cos, sin, eps: float, hd: int):
    """x (B, T, H) → q (B, nh, T, d), k, v (B, nkv, T, d): input norm, projections, Qwen3's per-head
    q/k norm, rotary. Plain tensor arguments so one torch.compile graph serves every layer."""
    B, T, _ = x.shape
    h = rms(x, ln1, eps)
    q = F.linear(h, wq, bq).view(B, T, -1, hd)
    k = F.linear(h, wk, bk).view(B, T, -1, hd)
    v = F.linear(h, wv, bv).view(B, T, -1, hd).transpose(1, 2)
    if qn is not None:  # Qwen3: per-head RMSNorm before rotary
        q, k = rms(q, qn, eps), rms(k, kn, eps)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    return q, k, v


def attend(q, k, v, mask, n_kv: int, impl: str):
    """q (B, nh, T, d); k, v (B, nkv, S, d); additive mask (B, 1, T, S) → (B, T, nh·d). ``impl``: "bmm"
    (grouped-head matmuls, any device), "sdpa", or "triton" (decode only, CUDA: decode_attn's split-KV
    kernel, never inside torch.compile)."""
    B, nh, T, d = q.shape
    if impl == "triton":
        from .decode_attn import split_kv_attend

        return split_kv_attend(q, k, v, mask, n_kv)
    if impl == "sdpa":
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=d ** -0.5, enable_gqa=True)
    else:  # "bmm": the g query heads of a kv head share one read of its K and V (decode: T = 1)
        g = nh // n_kv
        qg = q.reshape(B, n_kv, g * T, d)
        s = torch.matmul(qg, k.transpose(-1, -2)).float() * (d ** -0.5)  # (B, nkv, g·T, S)
        s = s.view(B, n_kv, g, T, -1) + mask[:, :, None].float()
        p = s.softmax(-1).to(q.dtype).view(B, n_kv, g * T, -1)
        o = torch.matmul(p, v).view(B, nh, T, d)
    return o.transpose(1, 2).reshape(B, T, nh * d)


def post_o(x, o, wo, bo, ln2, wg, bg, wu, bu, wd, bd, eps: float):
    """o_proj of the attention output o (B, T, nh·d) + residual, gated MLP + residual → new x (B, T, H)."""
    x = x + F.linear(o, wo, bo)
    h = rms(x, ln2, eps)
    return x + F.linear(F.silu(F.linear(h, wg, bg)) * F.linear(h, wu, bu), wd, bd)


def post_attn(x, q, k, v, mask, wo, bo, ln2, wg, bg, wu, bu, wd, bd, eps: float, n_kv: int, impl: str):
    """Attention over the cache span, then `post_o` → new x (B, T, H)."""
    return post_o(x, attend(q, k, v, mask, n_kv, impl), wo, bo, ln2, wg, bg, wu, bu, wd, bd, eps)


def layer_pre(fn, sp: Spec, L: Layer, x, cos, sin):
    return fn(x, L.ln1, *L.q, *L.k, *L.v, L.q_norm, L.k_norm, cos, sin, sp.eps, sp.head_dim)


def layer_post(fn, sp: Spec, L: Layer, x, q, k, v, mask, impl, fn_o=post_o):
    """``fn`` (post_attn, maybe compiled) for one layer; the "triton" kernel runs outside it, then ``fn_o``."""
    if impl == "triton":
        return fn_o(x, attend(q, k, v, mask, sp.n_kv, impl), *L.o, L.ln2, *L.gate, *L.up, *L.down, sp.eps)
    return fn(x, q, k, v, mask, *L.o, L.ln2, *L.gate, *L.up, *L.down, sp.eps, sp.n_kv, impl)


def logits_last(sp: Spec, x):
    return F.linear(rms(x, sp.norm, sp.eps), sp.lm_head).float()


# ---------------------------------------------------------------------------- sampling (graph-safe)
def uniform_t(row_seeds: torch.Tensor, position: torch.Tensor, vocab: int) -> torch.Tensor:
    """``sampling.uniform`` with the position as a device tensor (so a CUDA graph can advance it)."""
    base = _mix((row_seeds & _MASK31) ^ _mix(position + 0x9E37))
    tok = torch.arange(vocab, device=row_seeds.device, dtype=torch.long)
    x = _mix(base[:, None] * 0x7FF + _mix(tok)[None, :])
    x = _mix(x ^ (base[:, None] >> 7))
    return (x.double() + 0.5) / float(1 << 31)


def gumbel_argmax(scores, row_seeds, position):
    """argmax(scores + Gumbel) with ``sampling``'s hash: the part worth fusing (integer hash over (B, V))."""
    g = -torch.log(-torch.log(uniform_t(row_seeds, position, scores.shape[-1])))
    return (scores.double() + g).argmax(-1)


def sample_t(logits, row_seeds, position, temperature: float, top_p: float, argmax_fn=gumbel_argmax):
    """``sampling.sample`` with a tensor position; logits (B, V) fp32 → (B,) long. The top-p mask (a
    sort) stays eager: inductor fails to generate its cumsum under dynamic shapes (torch 2.11)."""
    if temperature == 0:
        return logits.argmax(-1)
    return argmax_fn(top_p_mask(logits / temperature, top_p), row_seeds, position)


_COMPILED: dict[str, object] = {}


def kernels(compile: bool):
    """(pre_attn, post_attn, post_o, sample_t), compiled with torch.compile(dynamic=True) when asked: one
    compile serves every layer, batch size and cache span; it fuses the ~50 small elementwise kernels
    of a layer step (norms, rotary, masking, SiLU) and the sampler's integer hash over (B, vocab)."""
    if not compile:
        return pre_attn, post_attn, post_o, sample_t
    if not _COMPILED:
        import torch._dynamo

        # shapes vary (batch, cache span, model width): dynamic=True keeps it to a few graphs, and the
        # limit is raised so a recompile never silently drops the step back to eager
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        _COMPILED.update(pre=torch.compile(pre_attn, dynamic=True), post=torch.compile(post_attn, dynamic=True),
                         post_o=torch.compile(post_o, dynamic=True), argmax=torch.compile(gumbel_argmax, dynamic=True))
    fused = _COMPILED["argmax"]
    return _COMPILED["pre"], _COMPILED["post"], _COMPILED["post_o"], partial(sample_t, argmax_fn=fused)


# ---------------------------------------------------------------------------- the engine
@dataclass
class GenStats:
    prefill_s: float = 0.0
    decode_s: float = 0.0
    capture_s: float = 0.0
    steps: int = 0
    graphs: int = 0


class Decoder:
    """Static buffers + the replayable decode step for one (batch, prompt length, budget)."""

    def __init__(self, sp: Spec, B: int, L: int, max_new: int, eos: int, pad: int, temperature: float,
                 top_p: float, attn: str, bucket: int, compile: bool = False):
        self.sp, self.B, self.L, self.max_new = sp, B, L, max_new
        self.f_pre, self.f_post, self.f_post_o, self.f_sample = kernels(compile)
        self.eos, self.pad, self.temperature, self.top_p, self.attn = eos, pad, temperature, top_p, attn
        self.T = L + max_new
        dev, dt = sp.device, sp.dtype
        self.bucket = bucket
        n = len(sp.layers)
        self.kc = torch.zeros(n, B, sp.n_kv, self.T, sp.head_dim, device=dev, dtype=dt)
        self.vc = torch.zeros_like(self.kc)
        self.neg = torch.finfo(dt).min
        self.mask = torch.full((B, 1, 1, self.T), self.neg, device=dev, dtype=dt)  # additive, per key column
        self.tok = torch.zeros(B, dtype=torch.long, device=dev)  # input token of the step
        self.pos = torch.zeros(B, dtype=torch.long, device=dev)  # its position id
        self.cur = torch.zeros(1, dtype=torch.long, device=dev)  # its cache column
        self.t = torch.zeros(1, dtype=torch.long, device=dev)  # index of the token it samples
        self.seeds = torch.zeros(B, dtype=torch.long, device=dev)
        self.finished = torch.zeros(B, dtype=torch.bool, device=dev)
        self.out = torch.full((B, max_new), pad, dtype=torch.long, device=dev)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}

    def span(self, cur: int) -> int:
        """Cache columns a step at column ``cur`` reads: a multiple of ``bucket``, capped at T."""
        return min(self.T, (cur // self.bucket + 1) * self.bucket)

    # -- the step: every write is in place into the buffers above
    def emit(self, logits):
        nxt = self.f_sample(logits, self.seeds, self.t, self.temperature, self.top_p)
        nxt = torch.where(self.finished, torch.full_like(nxt, self.pad), nxt)
        self.out.index_copy_(1, self.t, nxt[:, None])
        self.finished |= nxt == self.eos
        self.tok.copy_(nxt)

    def step(self, S: int):
        sp = self.sp
        self.mask.index_fill_(3, self.cur, 0.0)
        cos, sin = rope(self.pos[:, None], sp.inv_freq, sp.rope_scale, sp.dtype)
        x = F.embedding(self.tok[:, None], sp.embed)  # (B, 1, H)
        m = self.mask[..., :S]
        for i, L in enumerate(sp.layers):
            q, k, v = layer_pre(self.f_pre, sp, L, x, cos, sin)
            self.kc[i].index_copy_(2, self.cur, k)
            self.vc[i].index_copy_(2, self.cur, v)
            x = layer_post(self.f_post, sp, L, x, q, self.kc[i, :, :, :S], self.vc[i, :, :, :S], m, self.attn,
                           self.f_post_o)
        self.t += 1
        self.emit(logits_last(sp, x[:, -1]))
        self.pos += 1
        self.cur += 1

    # -- prefill: eager, over the whole left-padded prompt block
    def prefill(self, ids: torch.Tensor, pads: torch.Tensor, seeds: torch.Tensor):
        sp, B, L = self.sp, self.B, self.L
        ar = torch.arange(L, device=sp.device)
        pos = (ar[None, :] - pads[:, None]).clamp(min=0)  # (B, L)
        valid = ar[None, :] >= pads[:, None]  # (B, L) key is a real token
        allow = (ar[None, :, None] >= ar[None, None, :]) & (valid[:, None, :] | torch.eye(L, dtype=torch.bool,
                                                                                          device=sp.device)[None])
        mask = torch.zeros(B, 1, L, L, device=sp.device, dtype=sp.dtype).masked_fill(~allow[:, None], self.neg)
        cos, sin = rope(pos, sp.inv_freq, sp.rope_scale, sp.dtype)
        x = F.embedding(ids, sp.embed)
        for i, Ly in enumerate(sp.layers):
            q, k, v = layer_pre(pre_attn, sp, Ly, x, cos, sin)
            self.kc[i, :, :, :L] = k
            self.vc[i, :, :, :L] = v
            x = layer_post(post_attn, sp, Ly, x, q, k, v, mask, "sdpa")
        self.mask.fill_(self.neg)
        self.mask[:, 0, 0, :L].masked_fill_(valid, 0.0)
        self.seeds.copy_(seeds)
        self.finished.zero_()
        self.out.fill_(self.pad)
        self.t.zero_()
        nxt = sample_t(logits_last(sp, x[:, -1]), self.seeds, self.t, self.temperature, self.top_p)
        self.out[:, 0] = nxt
        self.finished |= nxt == self.eos
        self.tok.copy_(nxt)
        self.pos.copy_(pos[:, -1] + 1)
        self.cur.fill_(L)

    # -- CUDA graphs, one per KV span; captured on scratch state before the prefill
    def capture(self, pool=None):
        spans = sorted({self.span(c) for c in range(self.L, self.T - 1)})
        if not spans:
            return
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):  # warm-up off the capture: cuBLAS handles, compilation, allocator
            for S in {spans[0], spans[-1]}:
                self.cur.fill_(S - 1)
                self.step(S)
        torch.cuda.current_stream().wait_stream(s)
        pool = pool if pool is not None else torch.cuda.graph_pool_handle()
        for S in spans:
            self.cur.fill_(self.L)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                self.step(S)
            self.graphs[S] = g
        torch.cuda.synchronize()

    def run_step(self, cur: int):
        S = self.span(cur)
        g = self.graphs.get(S)
        if g is not None:
            g.replay()
        else:
            self.step(S)


def capture_or_eager(dec: "Decoder", pool, record) -> bool:
    """Capture ``dec``'s decode graphs; on failure decode eagerly (never lose a rollout to a capture
    problem) and count it in ``record.capture_failed`` / ``record.capture_error`` (``record``: anything
    with those two attributes; rollout.generate passes its ``Rollouts``, whose counts the trainer writes
    into the step's metrics as ``rollout_capture_failed``). Returns whether graphs were captured."""
    try:
        dec.capture(pool)
        return True
    except RuntimeError as e:
        import warnings

        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        warnings.warn(f"CUDA graph capture failed, decoding without graphs: {msg}")
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        dec.graphs.clear()
        record.capture_failed += 1
        record.capture_error = record.capture_error or msg
        return False


def _sync(dev: torch.device):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def generate_ids(model, encoded: list[list[int]], seeds: list[int], max_new_tokens: int, *, eos: int, pad: int,
                 temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False, batch_size: int | None = None,
                 cuda_graphs: bool = True, compile: bool | None = None, attn: str | None = None, bucket: int = 64,
                 check_every: int = 16, stats: GenStats | None = None, record=None) -> list[list[int]]:
    """Ids in, ids out: one row of ``max_new_tokens`` sampled ids per prompt row of ``encoded`` (prompt
    token ids, any lengths; ``seeds``: one per row), padded with ``pad`` after a row's ``eos``. Rows are
    cut, decoded and collected into ``Rollouts`` by rollout.generate (backend ``fast``), the one entry
    point. ``batch_size`` rows decode together (default: all of them, or equal batches whose KV cache fits in
    half the free device memory: rows_per_batch). ``stats`` (optional) receives
    prefill / decode / capture seconds; ``record`` (optional, see capture_or_eager) counts capture
    failures. ``compile`` (default: on CUDA) fuses the decode step's small kernels with torch.compile
    (first call: ~1 min)."""
    import time
    from types import SimpleNamespace

    if not encoded:
        return []
    if len(seeds) != len(encoded):
        raise ValueError(f"need one seed per completion ({len(encoded)}), got {len(seeds)}")
    sp = model_spec(model)
    dev = sp.device
    record = record if record is not None else SimpleNamespace(capture_failed=0, capture_error="")
    temp = 0.0 if (greedy or temperature == 0) else float(temperature)
    bs = batch_size or rows_per_batch(len(encoded), max(map(len, encoded)) + max_new_tokens, sp.kv_bytes_per_token,
                                      free_device_bytes(dev))
    st = stats if stats is not None else GenStats()
    use_graphs = cuda_graphs and dev.type == "cuda"
    compile = (dev.type == "cuda") if compile is None else compile
    if attn in (None, "triton"):  # default: the split-KV kernel where it runs (CUDA, Triton, head size 2^k ≥ 16)
        from .decode_attn import supports

        attn = "triton" if supports(dev, sp.head_dim) else "bmm"
    pool = torch.cuda.graph_pool_handle() if use_graphs else None
    rows: list[list[int]] = []
    with torch.no_grad():
        for s0 in range(0, len(encoded), bs):
            chunk = encoded[s0:s0 + bs]
            B, L = len(chunk), max(map(len, chunk))
            ids = torch.full((B, L), pad, dtype=torch.long)
            for i, p in enumerate(chunk):
                ids[i, L - len(p):] = torch.tensor(p, dtype=torch.long)
            pads = torch.tensor([L - len(p) for p in chunk], device=dev)
            dec = Decoder(sp, B, L, max_new_tokens, eos, pad, temp, top_p, attn, bucket, compile)
            t0 = time.perf_counter()
            if use_graphs:
                capture_or_eager(dec, pool, record)
            _sync(dev)
            t1 = time.perf_counter()
            dec.prefill(ids.to(dev), pads, torch.tensor(seeds[s0:s0 + bs], dtype=torch.long, device=dev))
            _sync(dev)
            t2 = time.perf_counter()
            cur = L
            for step in range(1, max_new_tokens):
                if step % check_every == 0 and bool(dec.finished.all()):
                    break
                dec.run_step(cur)
                cur += 1
                st.steps += 1
            _sync(dev)
            t3 = time.perf_counter()
            st.capture_s += t1 - t0
            st.prefill_s += t2 - t1
            st.decode_s += t3 - t2
            st.graphs += len(dec.graphs)
            rows += dec.out.cpu().tolist()
            del dec
    return rows


KV_MEMORY_FRACTION = 0.5  # of the free device memory, for one decode batch's static KV cache


def free_device_bytes(dev: torch.device) -> int | None:
    """Free memory of a CUDA device (None elsewhere: no limit is applied)."""
    return torch.cuda.mem_get_info(dev)[0] if dev.type == "cuda" else None


def rows_per_batch(n_rows: int, tokens_per_row: int, kv_bytes_per_token: int, free_bytes: int | None,
                   fraction: float = KV_MEMORY_FRACTION) -> int:
    """Rows decoded together by default: all of them, unless their static KV cache (rows × tokens × bytes)
    would take more than ``fraction`` of the free device memory; then equal batches that fit (at least 1 row).
    E.g. 4B, 1200 rows × (200 + 1024) tokens: 216 GB of cache in one batch, 4 batches of 300 on an H200."""
    if free_bytes is None or n_rows <= 1:
        return max(1, n_rows)
    fit = max(1, int(fraction * free_bytes // (tokens_per_row * kv_bytes_per_token)))
    n_batches = -(-n_rows // fit)
    return -(-n_rows // n_batches)


def kv_bytes_per_token(model) -> int:
    """K and V bytes one token adds to the cache (all layers): Spec.kv_bytes_per_token of ``model``."""
    return model_spec(model).kv_bytes_per_token


