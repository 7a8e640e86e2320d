"""Device tests (``pytest -m gpu``; deselected by default): the trainer with the fast backend on CUDA,
torch.compile and CUDA graphs on. Run on the GPU machine by benchmarks/bench_gpu.py (results in
docs/PERF.md)."""

import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu

TIMING = {"step_time_s", "gen_time_s", "grade_time_s", "tokens_per_s"}


def _train(run_dir, *flags):
    from projected_grpo.cli import main

    rc = main(["train", "--preset", "smoke", "--device", "cuda", "--run-dir", str(run_dir), "--sandbox-workers", "4",
               "--rollout-backend", "fast", "--rollout-compile", *flags])
    assert rc == 0
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(autouse=True)
def _need_cuda():
    if not torch.cuda.is_available():
        pytest.fail("pytest -m gpu needs a CUDA device")


def test_train_fast_compiled_graphs_on_cuda_is_deterministic(tmp_path):
    # --deterministic: without it the memory-efficient attention backward accumulates in a varying order
    # (2026-12-01: two runs differed at step 1 once the trainer stopped using cuDNN attention)
    flags = ["--steps", "3", "--intervention", "erase", "--eval-problems", "2", "--max-new-tokens", "40",
             "--deterministic"]
    a = _train(tmp_path / "a", *flags)
    b = _train(tmp_path / "b", *flags)
    assert [r["step"] for r in a] == [1, 2, 3]
    assert all(r["rollout_capture_failed"] == 0 for r in a + b)  # graphs were captured, no eager fallback
    assert all(r["loss"] == r["loss"] and r["gn"] == r["gn"] for r in a)  # finite (NaN != NaN)
    assert a[-1]["dS"] > 0 and "hack_kept" in a[-1]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
    assert strip(a) == strip(b)  # same config and seed on the GPU -> same metrics


def test_fast_equals_hf_in_fp32_on_cuda(tmp_path):
    """fp32 on the device: the compiled, graph-replayed decode draws HF generate's tokens."""
    flags = ["--steps", "2", "--dtype", "float32", "--eval-problems", "0", "--max-new-tokens", "32"]
    fast = _train(tmp_path / "f", *flags)
    from projected_grpo.cli import main

    assert main(["train", "--preset", "smoke", "--device", "cuda", "--run-dir", str(tmp_path / "h"),
                 "--sandbox-workers", "4", "--rollout-backend", "hf", *flags]) == 0
    hf = [json.loads(x) for x in (tmp_path / "h" / "metrics.jsonl").read_text().splitlines()]
    keys = ("reward", "hack_s", "solve_s", "frac_truncated")
    assert [[r[k] for k in keys] for r in fast] == [[r[k] for k in keys] for r in hf]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_split_kv_kernel_matches_bmm_attention(dtype, tol):
    """decode_attn's Triton kernel == fastgen's grouped-head matmul attention, across batch sizes (1 row:
    many KV splits; 256 rows: one), spans that end mid-block, GQA widths 1/2/4, and left-padded masks."""
    from projected_grpo.decode_attn import splits_for
    from projected_grpo.fastgen import attend

    g = torch.Generator(device="cuda").manual_seed(0)
    seen = set()
    for B, n_kv, G, S in ((1, 8, 2, 700), (3, 4, 4, 130), (64, 8, 2, 65), (256, 8, 2, 384), (5, 2, 1, 17)):
        T = S + 40  # a static cache longer than the span, like the decoder's
        q = torch.randn(B, n_kv * G, 1, 128, device="cuda", dtype=dtype, generator=g)
        k = torch.randn(B, n_kv, T, 128, device="cuda", dtype=dtype, generator=g)[:, :, :S]
        v = torch.randn(B, n_kv, T, 128, device="cuda", dtype=dtype, generator=g)[:, :, :S]
        mask = torch.zeros(B, 1, 1, T, device="cuda", dtype=dtype)
        for b in range(B):  # left padding of b % 70 columns, and one unwritten column at the end
            mask[b, ..., : b % 70] = torch.finfo(dtype).min
        mask[..., S - 1:] = torch.finfo(dtype).min
        mask = mask[..., :S]
        ref = attend(q.float(), k.float(), v.float(), mask.float(), n_kv, "bmm")
        out = attend(q, k, v, mask, n_kv, "triton")
        assert out.shape == ref.shape and out.dtype == dtype
        assert torch.allclose(out.float(), ref, atol=tol, rtol=tol), (B, n_kv, G, S, (out.float() - ref).abs().max())
        seen.add(splits_for(B, n_kv, S) > 1)
    assert seen == {True, False}  # both the split path and the one-split path ran


def test_fast_triton_attention_draws_the_bmm_tokens_in_fp32(tmp_path):
    """fp32, compile + CUDA graphs: the split-KV kernel's decode draws the same tokens as the bmm path."""
    from types import SimpleNamespace

    from projected_grpo.fastgen import GenStats, generate_ids
    from projected_grpo.models import load_model

    model, tok = load_model("tiny", torch.float32, "cuda")
    enc = [tok(f"def f{i}(x):\n    return", add_special_tokens=False)["input_ids"] * (1 + i % 3) for i in range(12)]
    kw = dict(eos=-1, pad=tok.pad_token_id, temperature=1.0, max_new_tokens=150)
    a = generate_ids(model, enc, list(range(12)), attn="bmm", **kw)
    rec, st = SimpleNamespace(capture_failed=0, capture_error=""), GenStats()
    b = generate_ids(model, enc, list(range(12)), **kw, record=rec, stats=st)  # the default: triton on CUDA
    assert rec.capture_failed == 0 and st.graphs >= 3, rec.capture_error  # replayed from graphs, spans of 1-4 splits
    assert a == b
