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
    flags = ["--steps", "3", "--intervention", "erase", "--eval-problems", "2", "--max-new-tokens", "40"]
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
