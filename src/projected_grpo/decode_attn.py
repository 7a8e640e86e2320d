"""Split-KV decode attention for the fast backend on CUDA (``fastgen`` ``attn="triton"``).

One query token per row attends over the static KV cache's filled span. Each program reads one
(row, kv head, KV split) slice of K and V exactly once and serves the kv head's ``g`` query heads
(grouped-query attention): the query heads are the rows of a 16-row tile (padded), so QKᵀ and PV run on
the tensor cores while the kernel stays bound by the K/V read. With few rows (small batch) the span is
cut into splits that run in parallel, each keeping an online softmax (running max, sum, weighted V), and
a short combine weights the splits by their maxima (flash-decoding). Masking is the decode step's own
additive (B, 1, 1, S) mask row (left padding and not-yet-written columns).

Triton is imported on first use: CPU runs never need it (the CPU path is ``fastgen.attend``'s ``bmm``,
which the GPU test ``tests/test_gpu.py`` compares this kernel against).

Owns: the decode attention kernel. Must never import another module of the package.
"""

from __future__ import annotations

import functools

import torch

BLOCK_N = 64  # KV columns per inner iteration
MIN_PROGRAMS = 264  # about two programs per SM of an H100/H200: split the span until there are this many


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    # S, chunk and SPLITS vary with the span: never specialised on, so one compiled kernel serves every span
    # (it is compiled in the decoder's warm-up step, never during a CUDA graph capture)
    @triton.jit(do_not_specialize=["S", "chunk", "SPLITS"])
    def decode_kernel(Q, K, V, M, O, Acc, Mx, Ls,
                      sqb, sqh, skb, skh, skt, svb, svh, svt, smb, sob, soh,
                      S, chunk, scale,
                      SPLITS, G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BN: tl.constexpr,
                      FP32: tl.constexpr):
        b, h, sp = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        g, d = tl.arange(0, GP), tl.arange(0, D)
        live = g < G
        q = tl.load(Q + b * sqb + (h * G + g)[:, None] * sqh + d[None, :], mask=live[:, None], other=0.0)
        start = sp * chunk
        end = tl.minimum(start + chunk, S)
        m_i = tl.full([GP], -1.0e30, dtype=tl.float32)
        l_i = tl.zeros([GP], dtype=tl.float32)
        acc = tl.zeros([GP, D], dtype=tl.float32)
        for n0 in range(start, end, BN):
            n = n0 + tl.arange(0, BN)
            inside = n < end
            k = tl.load(K + b * skb + h * skh + n[:, None] * skt + d[None, :], mask=inside[:, None], other=0.0)
            if FP32:  # fp32 caches (the equality checks): no TF32 rounding
                s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale  # (GP, BN)
            else:
                s = tl.dot(q, tl.trans(k)) * scale
            add = tl.load(M + b * smb + n, mask=inside, other=0.0).to(tl.float32)
            s = tl.where(inside[None, :], s + add[None, :], -1.0e30)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(V + b * svb + h * svh + n[:, None] * svt + d[None, :], mask=inside[:, None], other=0.0)
            if FP32:
                acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        if SPLITS == 1:
            out = acc / l_i[:, None]
            tl.store(O + b * sob + (h * G + g)[:, None] * soh + d[None, :], out.to(O.dtype.element_ty),
                     mask=live[:, None])
        else:
            base = ((b * tl.num_programs(1) + h) * SPLITS + sp) * GP  # (B, nkv, SPLITS, GP) row-major
            tl.store(Acc + (base + g)[:, None] * D + d[None, :], acc)
            tl.store(Mx + base + g, m_i)
            tl.store(Ls + base + g, l_i)

    return decode_kernel


def supports(device: torch.device, head_dim: int) -> bool:
    """Whether the kernel can run: a CUDA device, Triton importable, a power-of-two head size ≥ 16."""
    if device.type != "cuda" or head_dim < 16 or head_dim & (head_dim - 1):
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def splits_for(B: int, n_kv: int, S: int) -> int:
    """KV splits per (row, kv head): enough programs to fill the GPU, each split at least one block."""
    want = -(-MIN_PROGRAMS // (B * n_kv))
    return max(1, min(want, -(-S // BLOCK_N)))


def split_kv_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, n_kv: int) -> torch.Tensor:
    """q (B, nh, 1, d); k, v (B, nkv, S, d) with unit stride on d; additive mask (B, 1, 1, S) →
    (B, 1, nh·d) in q's dtype. Equals ``fastgen.attend(..., impl="bmm")`` up to float rounding."""
    B, nh, T, D = q.shape
    S = k.shape[2]
    assert T == 1 and k.stride(3) == 1 and v.stride(3) == 1 and mask.stride(3) == 1, "decode step layout"
    q = q.contiguous()
    G = nh // n_kv
    GP = max(16, 1 << (G - 1).bit_length())  # tl.dot needs at least 16 rows
    splits = splits_for(B, n_kv, S)
    chunk = -(-(-(-S // splits)) // BLOCK_N) * BLOCK_N
    splits = -(-S // chunk)  # no empty split
    out = torch.empty(B, nh, D, device=q.device, dtype=q.dtype)
    if splits > 1:
        acc = torch.empty(B, n_kv, splits, GP, D, device=q.device, dtype=torch.float32)
        mx = torch.empty(B, n_kv, splits, GP, device=q.device, dtype=torch.float32)
        ls = torch.empty_like(mx)
    else:
        acc = mx = ls = out  # unused
    _kernel()[(B, n_kv, splits)](
        q, k, v, mask, out, acc, mx, ls,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        mask.stride(0), out.stride(0), out.stride(1),
        S, chunk, D ** -0.5, splits,
        G=G, GP=GP, D=D, BN=BLOCK_N, FP32=q.dtype == torch.float32, num_warps=4, num_stages=2)
    if splits > 1:
        top = mx.amax(2, keepdim=True)
        w = torch.exp(mx - top)  # (B, nkv, splits, GP)
        o = (acc * w[..., None]).sum(2) / (ls * w).sum(2)[..., None]  # (B, nkv, GP, D)
        out = o[:, :, :G].reshape(B, nh, D).to(q.dtype)
    return out.reshape(B, 1, nh * D)
