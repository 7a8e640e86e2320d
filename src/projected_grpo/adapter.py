"""SVD-basis adapter: per-Linear knobs δS (trained) and δS_hack (quarantine, zeroed at deployment).

For a target ``nn.Linear`` with weight ``W = U diag(S) Vh`` (SVD in fp32, cached on disk under the
weight's content hash) the wrapped layer computes::

    y = W x + U ((Vh x) ⊙ (δS₀ + δS + δS_hack))    δS, δS_hack ∈ ℝ^r, r = rank kept

At δS = δS_hack = 0 (and no δS₀) the extra term is an exact zero, so the output equals the base layer bit
for bit. ``δS₀`` is a frozen base offset, absent unless a warm start (warmstart.py) set one with ``rebase()``:
then "the base" (``zeroed()``, the KL reference, δS = 0) is the warm-started model, and δS, δS_hack are what
RL adds to it.
Contexts switch the knobs without touching their values: ``zeroed()`` (reference policy: base model),
``ablated()`` (δS_hack off: the deployed model of the route arm), ``merged()`` (no-grad rollouts with
the knobs folded into the weights, so generation never pays the hook); ``plain_copy()`` is the same
folded model as a detached copy in another dtype (bf16 rollouts of an fp32 model).

``fused()`` is the training forward's fast path (the GPU presets, ``--knob-forward merged``): inside it each
layer multiplies once by ``W' = W + U diag(s) Vh`` (formed once per context in the weight's dtype) and reads
the knob gradient off ``Σ_t (Vh x)_t ⊙ (U^T ∂y)_t`` in one autograd node — one matmul less in the forward
and in the backward and about half the kernels of the branch. With bf16 weights W' rounds knob changes
below the weight's precision, as the rollouts' ``merged()`` model does: the trained and the sampled
networks are then the same; the knob gradient itself is exact for that network.

``capture_row_grads()`` records, during backward, the knob gradient of every batch row separately,
``(B, r)`` per module, from the hook math (``Σ_t (Vh x)_t ⊙ (U^T ∂y)_t``) — one backward gives the
student and teacher gradients used by the cin_s / cin_t diagnostics and the per-completion gradients
used to extract the hack subspace.

Owns the SVD-basis adapter and its knobs; must never import the trainer (train, grpo, projection) or the env package.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import ConfigError, layer_ranges, layers_beyond
from .errors import UserError
from .models import cache_dir


class AdapterError(UserError, RuntimeError):
    """A knob file that does not fit this model (different base, modules or ranks)."""


def weight_key(weight: torch.Tensor, rank: int | None) -> str:
    """Content hash of a weight (+ shape, dtype, rank): the SVD cache key. A changed weight can
    never hit an old entry."""
    h = hashlib.sha256()
    w = weight.detach().contiguous().cpu()
    h.update(f"{tuple(w.shape)}|{w.dtype}|{rank}".encode())
    h.update(w.view(torch.uint8).numpy() if w.dtype != torch.bool else w.numpy())  # the buffer itself: no copy
    return h.hexdigest()[:24]


# Factors already read from (or written to) a cache file in this process, by file (the demo's three arms
# attach the same model one after the other: reading ~1 GB of factors again costs ~14 s on the 2-core CPU,
# copying them ~0.5 s). Off unless a caller turns it on (`shared_factors()`: the demo verb), and an entry
# holds only while the file on disk is the one it was read from (same inode, size and mtime), so a process
# never uses other bits than the file other processes of that cache read (an SVD recomputed elsewhere can
# differ in the last bits). Bounded: models larger than the budget re-read. Every caller gets its own copy:
# a layer's buffers may be written in place (tests plant values in them), and that must never reach the next.
_MEMO: dict[str, tuple[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
_MEMO_MAX_BYTES = 2 << 30
_MEMO_ON = False


@contextlib.contextmanager
def shared_factors() -> Iterator[None]:
    """Within: adapters attached in this process reuse SVD factors already read (see _MEMO); emptied on exit."""
    global _MEMO_ON
    _MEMO_ON = True
    try:
        yield
    finally:
        _MEMO_ON = False
        _MEMO.clear()


def _stamp(path: Path) -> tuple:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def _remember(path: Path, U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor) -> None:
    used = sum(t.numel() * t.element_size() for _, f in _MEMO.values() for t in f)
    if _MEMO_ON and used + sum(t.numel() * t.element_size() for t in (U, S, Vh)) <= _MEMO_MAX_BYTES:
        _MEMO[str(path)] = (_stamp(path), (U.clone(), S.clone(), Vh.clone()))


def _recall(path: Path):
    entry = _MEMO.get(str(path)) if _MEMO_ON else None
    if entry is None or not path.exists() or _stamp(path) != entry[0]:
        return None
    return tuple(t.clone() for t in entry[1])


def svd_factors(weight: torch.Tensor, rank: int | None, use_cache: bool = True):
    """``U (out, r), S (r,), Vh (r, in)`` of the fp32 weight, top-``rank`` directions kept. S is fp32; U and Vh are
    fp32 too, except for a bf16/fp16 weight, whose layer keeps them in that dtype anyway (KnobLinear's buffers):
    they are stored and returned in it (a 4B model's full-rank factors: 16 GB on disk instead of 32)."""
    key = weight_key(weight, rank)
    path = cache_dir() / "svd" / f"{key}.safetensors"
    if use_cache and (hit := _recall(path)) is not None:  # the bits of that very file
        return (*hit, key)
    if use_cache and path.exists():
        t = load_file(path)
        _remember(path, t["U"], t["S"], t["Vh"])
        return t["U"], t["S"], t["Vh"], key
    # on the weight's own device: a GPU factors a 4B model's Linears in seconds, a CPU in minutes
    if weight.is_cuda:
        U, S, Vh = gram_svd(weight.detach())
    else:
        U, S, Vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)
    if rank is not None:
        U, S, Vh = U[:, :rank], S[:rank], Vh[:rank]
    half = weight.dtype if weight.dtype in (torch.bfloat16, torch.float16) else torch.float32
    U, S, Vh = U.to(half).cpu().contiguous(), S.cpu().contiguous(), Vh.to(half).cpu().contiguous()
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")  # never draw from torch RNG here
        save_file({"U": U, "S": S, "Vh": Vh}, tmp)
        tmp.replace(path)
        _remember(path, U, S, Vh)
    return U, S, Vh, key


def gram_svd(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD ``U (out, m), S (m,), Vh (m, in)`` (m = min side, S descending) through the fp64
    eigendecomposition of the smaller Gram matrix, returned in fp32. On an H200 (docs/PERF.md) this is
    ~7x faster than ``torch.linalg.svd``'s default GPU driver (gesvdj) on a 6144x2048 weight and more
    accurate (reconstruction 5e-15 vs 5e-4). Singular vectors of the small side come from ``eigh``; the
    other side is ``W v / s``, re-orthonormalised by a QR so directions with tiny ``s`` stay orthonormal.
    Each rank-1 term ``u_i s_i v_iᵀ`` is unique for distinct ``s_i``, so knobs mean the same as with any
    other SVD."""
    w = weight.double()
    tall = w.shape[0] >= w.shape[1]
    a = w if tall else w.T  # (big, m)
    ev, V = torch.linalg.eigh(a.T @ a)  # ascending
    ev, V = ev.flip(0).clamp(min=0), V.flip(1)
    S = ev.sqrt()
    Q, R = torch.linalg.qr(a @ V)  # a V = U diag(S); QR fixes the columns with tiny S
    sign = torch.where(torch.diagonal(R) < 0, -1.0, 1.0).to(Q.dtype)
    Ub = Q * sign  # (big, m), columns aligned with a V
    if tall:
        U, Vh = Ub, V.T
    else:
        U, Vh = V, Ub.T
    return U.float(), S.float(), Vh.float()


class _FusedKnob(torch.autograd.Function):
    """y = x W'ᵀ (+ b) with W' = W + U diag(s) Vh given; ∂s = Σ_t (x Vhᵀ)_t ⊙ (∂y U)_t, ∂x = ∂y W'.

    x (..., in) in the compute dtype; w (out, in) = W' (no grad); U (out, r), Vh (r, in); s (r,) fp32."""

    @staticmethod
    def forward(ctx, x, w, bias, U, Vh, s):
        h = x @ Vh.T  # (..., r): all the backward needs of x
        ctx.save_for_backward(h, w, U)
        ctx.s_dtype = s.dtype
        return nn.functional.linear(x, w, bias)

    @staticmethod
    def backward(ctx, g):
        h, w, U = ctx.saved_tensors
        g = g.to(w.dtype)
        gs = (h * (g @ U)).reshape(-1, h.shape[-1]).sum(0, dtype=torch.float32) if ctx.needs_input_grad[5] else None
        gx = g @ w if ctx.needs_input_grad[0] else None
        return gx, None, None, None, None, None if gs is None else gs.to(ctx.s_dtype)


class KnobLinear(nn.Module):
    """``nn.Linear`` plus the δS / δS_hack branch in its SVD basis. The base layer is kept as is."""

    def __init__(self, base: nn.Linear, rank: int | None = None, use_cache: bool = True):
        super().__init__()
        self.base = base
        U, S, Vh, self.svd_key = svd_factors(base.weight, rank, use_cache)
        dev, dt = base.weight.device, base.weight.dtype
        self.register_buffer("U", U.to(dev, dt), persistent=False)  # (out, r)
        self.register_buffer("Vh", Vh.to(dev, dt), persistent=False)  # (r, in)
        self.register_buffer("S", S.to(dev), persistent=False)  # (r,) fp32, for reference
        r = S.numel()
        self.delta_s = nn.Parameter(torch.zeros(r, device=dev))  # fp32 knobs
        self.delta_s_hack = nn.Parameter(torch.zeros(r, device=dev))
        self.register_buffer("delta_s0", torch.zeros(r, device=dev), persistent=False)  # frozen base offset (r,)
        self.has_base = False  # δS₀ set (a warm start): else the branch is skipped, bit-identical to the base
        self.state = "live"  # live | zeroed | ablated | merged
        self.row_grads: torch.Tensor | None = None  # (B, r) after a captured backward
        self.capture = False
        self.fused: dict | None = None  # inside SVDAdapter.fused(): state → W' (out, in), formed on first use

    @property
    def rank(self) -> int:
        return self.delta_s.numel()

    def scale(self) -> torch.Tensor | None:
        base = self.delta_s0 if self.has_base else None
        if self.state == "merged":
            return None
        if self.state == "zeroed":
            return base
        s = self.delta_s if self.state == "ablated" else self.delta_s + self.delta_s_hack
        return s if base is None else base + s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale()
        if scale is None:
            return self.base(x)
        if self.fused is not None and not self.capture:
            return self._fused_forward(x, scale)  # W' x: the base product is inside W'
        y = self.base(x)
        h = x @ self.Vh.T  # (..., r)
        hs = h * scale.to(h.dtype)
        if self.capture and hs.requires_grad:
            hs.register_hook(self._row_grad_hook(h))
        return y + hs @ self.U.T

    def _fused_forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        dt = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        w = self.fused.get(self.state)
        if w is None or w.dtype != dt:
            with torch.no_grad():
                W = self.base.weight
                w = torch.addmm(W.float(), self.U.float() * scale.detach(), self.Vh.float()).to(dt)
            self.fused[self.state] = w
        b = self.base.bias
        with torch.autocast(x.device.type, enabled=False):
            if not (torch.is_grad_enabled() and scale.requires_grad):  # nothing to differentiate: skip x Vhᵀ
                return nn.functional.linear(x.to(dt), w, None if b is None else b.to(dt))
            return _FusedKnob.apply(x.to(dt), w, None if b is None else b.to(dt), self.U.to(dt), self.Vh.to(dt), scale)

    def _row_grad_hook(self, h: torch.Tensor):
        def hook(grad: torch.Tensor):
            # ∂L/∂δS for each batch row: Σ over positions of h ⊙ ∂L/∂hs.  (B, r)
            g = (h.detach().float() * grad.float()).reshape(h.shape[0], -1, h.shape[-1]).sum(1)
            self.row_grads = g if self.row_grads is None else self.row_grads + g

        return hook

    def delta_weight(self, ablate_hack: bool) -> torch.Tensor:
        """``U diag([δS₀ +] δS [+ δS_hack]) Vh`` in fp32, shape (out, in)."""
        s = self.delta_s if ablate_hack else self.delta_s + self.delta_s_hack
        if self.has_base:
            s = self.delta_s0 + s
        return (self.U.float() * s.detach()) @ self.Vh.float()


_warned_merge = False


def _warn_low_precision_merge(modules: dict) -> None:
    """bf16/fp16 weights round W + U diag(δS) Vh: knob changes below the weight's precision
    (~4e-3 relative in bf16) are partly lost in the merged copy used for generation."""
    global _warned_merge
    if _warned_merge or not modules:
        return
    dtype = next(iter(modules.values())).base.weight.dtype
    if dtype in (torch.bfloat16, torch.float16):
        import warnings

        warnings.warn(f"merging knobs into {dtype} weights for generation rounds small knob updates; "
                      "rollouts then sample a slightly different policy than the one trained "
                      "(use --dtype float32 for exact merges)", stacklevel=3)
        _warned_merge = True


_LAYER_RE = re.compile(r"\.(?:layers|h|blocks)\.(\d+)\.")


class SVDAdapter:
    """All knob layers of one model. ``attach`` wraps the target Linears in place."""

    def __init__(self, model: nn.Module, modules: dict[str, KnobLinear], base_id: str):
        self.model = model
        self.modules = modules
        self.base_id = base_id

    # ------------------------------------------------------------------ construction
    @classmethod
    def attach(
        cls,
        model: nn.Module,
        targets: tuple[str, ...],
        layers: str | None = None,
        rank: int | None = None,
        use_cache: bool = True,
    ) -> "SVDAdapter":
        wanted_layers = None
        if layers is not None:  # config.validate and preflight check first; a spec built in code gets the same lines
            n = 1 + max((int(m.group(1)) for name, _ in model.named_modules() if (m := _LAYER_RE.search(f".{name}."))),
                        default=-1)
            try:
                ranges, error = layer_ranges(layers), layers_beyond(layers, n)
            except ConfigError as e:
                raise AdapterError(str(e)) from None
            if error:
                raise AdapterError(error)
            wanted_layers = {i for a, b in ranges for i in range(a, b + 1)}  # bounded by the model's layer count now
        found: dict[str, KnobLinear] = {}
        for name, mod in list(model.named_modules()):
            if not isinstance(mod, nn.Linear) or name.split(".")[-1] not in targets:
                continue
            if wanted_layers is not None:
                m = _LAYER_RE.search(f".{name}.")
                if m is None or int(m.group(1)) not in wanted_layers:
                    continue
            found[name] = KnobLinear(mod, rank, use_cache)
        if not found:
            names = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
            raise AdapterError(f"--target-modules {' '.join(targets)}: no Linear layer of the model"
                               + (f" in --layers {layers}" if layers else "") + f" ends with these names; its Linear "
                               f"layers are named {names[:12]}" + (" ..." if len(names) > 12 else ""))
        base_id = str(getattr(model, "name_or_path", "") or getattr(model.config, "name_or_path", ""))
        adapter = cls(model, found, base_id)
        adapter._swap_plain(plain=False)  # the knob layers go in
        return adapter

    # ------------------------------------------------------------------ knobs
    def knobs(self) -> list[nn.Parameter]:
        return [m.delta_s for m in self.modules.values()]

    def hack_knobs(self) -> list[nn.Parameter]:
        return [m.delta_s_hack for m in self.modules.values()]

    def parameters(self) -> list[nn.Parameter]:
        return self.knobs() + self.hack_knobs()

    @property
    def has_base(self) -> bool:
        """Whether a base offset δS₀ is set (a warm-started base)."""
        return any(m.has_base for m in self.modules.values())

    @torch.no_grad()
    def rebase(self) -> None:
        """Fold δS into the frozen base offset (δS₀ += δS, δS = 0): from now on ``zeroed()``, the KL
        reference and "δS = 0" mean the model as it is now. δS_hack must be zero (nothing quarantined yet)."""
        for m in self.modules.values():
            if bool(m.delta_s_hack.detach().any()):
                raise ValueError("rebase with a nonzero δS_hack: the quarantine must start empty")
            m.delta_s0.add_(m.delta_s.detach())
            m.delta_s.zero_()
            m.has_base = True

    @torch.no_grad()
    def set_base(self, base: dict[str, torch.Tensor] | None) -> None:
        """Set δS₀ per module ({module: (r,)}), or clear it (None): the base the knobs are trained from."""
        for n, m in self.modules.items():
            if base is None:
                m.delta_s0.zero_()
                m.has_base = False
            else:
                m.delta_s0.copy_(base[n].to(m.delta_s0))
                m.has_base = True

    def base_knobs(self) -> dict[str, torch.Tensor]:
        """{module: δS₀ (r,)} on CPU (zeros when no base is set)."""
        return {n: m.delta_s0.detach().cpu().clone() for n, m in self.modules.items()}

    def norms(self) -> tuple[float, float]:
        """(‖δS‖, ‖δS_hack‖) over all modules."""
        ds = torch.sqrt(sum((p.detach() ** 2).sum() for p in self.knobs()))
        dh = torch.sqrt(sum((p.detach() ** 2).sum() for p in self.hack_knobs()))
        return float(ds), float(dh)

    @property
    def n_knobs(self) -> int:
        return sum(m.rank for m in self.modules.values())

    # ------------------------------------------------------------------ contexts
    @contextlib.contextmanager
    def _state(self, state: str) -> Iterator[None]:
        previous = {n: m.state for n, m in self.modules.items()}
        try:
            for m in self.modules.values():
                m.state = state
            yield
        finally:
            for n, m in self.modules.items():
                m.state = previous[n]

    def zeroed(self):
        """All knobs off: the base model, i.e. the free reference policy."""
        return self._state("zeroed")

    def ablated(self):
        """δS_hack off (δS kept): the deployed model of the route arm."""
        return self._state("ablated")

    @contextlib.contextmanager
    def merged(self, ablate_hack: bool = False) -> Iterator[None]:
        """Fold the knobs into the base weights for no-grad generation; restore exactly on exit."""
        originals: dict[str, torch.Tensor] = {}
        _warn_low_precision_merge(self.modules)
        try:
            with torch.no_grad(), self._state("merged"):
                for n, m in self.modules.items():
                    w = m.base.weight
                    originals[n] = w.data
                    w.data = (w.data.float() + m.delta_weight(ablate_hack)).to(w.dtype)
                yield
        finally:
            for n, w in originals.items():
                self.modules[n].base.weight.data = w

    def _swap_plain(self, plain: bool) -> None:
        """Put the plain base Linears (plain=True) or the knob layers (plain=False) into the live model."""
        for n, m in self.modules.items():
            parent_name, _, child = n.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            setattr(parent, child, m.base if plain else m)

    def plain_copy(self, dtype: torch.dtype, ablate_hack: bool = False) -> nn.Module:
        """A detached copy of the model with the knobs merged, plain Linear layers (no U / Vh buffers)
        and parameters in ``dtype`` (buffers such as rotary frequencies keep theirs): rollouts on a
        cheaper dtype than training (``--amp``), and the export. Each merged weight is computed straight
        into the copy; the live model is never modified beyond a module swap undone in ``finally``."""
        import copy

        memo: dict[int, object] = {}
        with torch.no_grad():
            for m in self.modules.values():
                w = m.base.weight
                merged = (w.float() + m.delta_weight(ablate_hack)).to(dtype)
                memo[id(w)] = nn.Parameter(merged, requires_grad=w.requires_grad)
        try:
            self._swap_plain(plain=True)
            out = copy.deepcopy(self.model, memo)
        finally:
            self._swap_plain(plain=False)
        for p in out.parameters():
            p.data = p.data.to(dtype)
        return out

    @contextlib.contextmanager
    def fused(self, on: bool = True) -> Iterator[None]:
        """During the block the knob layers take the fused path (see the module docstring); the merged
        weights it forms live until the block ends (one extra weight copy). The knobs must not change
        inside it (the trainer's forward/backward: the optimizer steps outside)."""
        if not on:
            yield
            return
        for m in self.modules.values():
            m.fused = {}
        try:
            yield
        finally:
            for m in self.modules.values():
                m.fused = None

    @contextlib.contextmanager
    def capture_row_grads(self) -> Iterator[dict[str, torch.Tensor]]:
        """During the block, backward records per-row knob gradients; the dict is filled on exit."""
        out: dict[str, torch.Tensor] = {}
        for m in self.modules.values():
            m.capture, m.row_grads = True, None
        try:
            yield out
        finally:
            for n, m in self.modules.items():
                if m.row_grads is not None:
                    out[n] = m.row_grads
                m.capture, m.row_grads = False, None

    # ------------------------------------------------------------------ save / load / export
    def metadata(self) -> dict:
        return {
            "base_model": self.base_id,
            "dtype": str(next(iter(self.modules.values())).base.weight.dtype).removeprefix("torch."),
            "modules": json.dumps({n: m.rank for n, m in self.modules.items()}),
            "svd_keys": json.dumps({n: m.svd_key for n, m in self.modules.items()}),
        }

    def knob_tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for n, m in self.modules.items():
            out[f"{n}.delta_s"] = m.delta_s.detach().cpu().contiguous()
            out[f"{n}.delta_s_hack"] = m.delta_s_hack.detach().cpu().contiguous()
            if self.has_base:  # only then: knob files without a warm start are as before
                out[f"{n}.delta_s0"] = m.delta_s0.detach().cpu().contiguous()
        return out

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        save_file(self.knob_tensors(), tmp, metadata=self.metadata())
        tmp.replace(path)

    def load(self, path: str | Path) -> None:
        """Load knobs saved by `save`; refuses a file made on another base model or module set."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for corrupt files
            raise AdapterError(f"{path}: not a readable knob file ({type(e).__name__}: {e})") from None
        mine = self.metadata()
        if meta.get("dtype", mine["dtype"]) != mine["dtype"]:
            raise AdapterError(f"{path}: knobs were trained on {meta['dtype']} weights, this model is {mine['dtype']}; "
                               f"load it with --dtype {meta['dtype']}")
        if json.loads(meta.get("svd_keys", "{}")) != json.loads(mine["svd_keys"]):
            theirs = meta.get("base_model", "?")
            raise AdapterError(
                f"{path}: knobs were saved on base model {theirs!r} with other weights/modules/ranks "
                f"than this model ({mine['base_model']!r}); refusing to load"
            )
        with torch.no_grad():
            for n, m in self.modules.items():
                m.delta_s.copy_(tensors[f"{n}.delta_s"])
                m.delta_s_hack.copy_(tensors[f"{n}.delta_s_hack"])
        # a file is the whole model: its base offset (a warm start) comes with it, or there is none
        self.set_base({n: tensors[f"{n}.delta_s0"] for n in self.modules} if f"{next(iter(self.modules))}.delta_s0"
                      in tensors else None)

    def export(self, out_dir: str | Path, tokenizer=None) -> Path:
        """Deployment model: δS merged into the weights, δS_hack ablated, plain Linear layers,
        ``save_pretrained`` to ``out_dir``. The live model is left untouched."""
        out_dir = Path(out_dir)
        plain = self.plain_copy(next(iter(self.modules.values())).base.weight.dtype, ablate_hack=True)
        plain.requires_grad_(True)
        plain.save_pretrained(out_dir)
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir)
        return out_dir
