"""Data-parallel training (torchrun, gloo, 2 CPU processes) equals a single-process run, the sharded
held-out evaluation at the start and the end included (its rates exactly; the sharding itself: test_ddp_eval.py)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

TIMING = {"step_time_s", "gen_time_s", "grade_time_s", "tokens_per_s"}
EVAL = tuple(f"{w}_{v}" for w in ("hack", "solve") for v in ("kept", "abl", "nohint")) + ("eval_",)


def test_two_ranks_equal_single_process(tmp_path):
    # evaluation at the start and the end, sharded over the ranks (3 problems: 2 on rank 0, 1 on rank 1), sampled
    flags = ["train", "--preset", "smoke", "--steps", "3", "--prompts-per-step", "4", "--intervention", "route",
             "--eval-problems", "3", "--eval-at-start", "--eval-samples", "2", "--sandbox-workers", "1",
             "--max-new-tokens", "16", "--vhack-pairs", "4"]  # short completions, few pairs: the same sharding
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # separate caches: the ddp run computes its step-0 evaluation instead of reading the single run's
    subprocess.run([sys.executable, "-m", "projected_grpo.cli", *flags, "--run-dir", str(single)], check=True,
                   env={**env, "PROJECTED_GRPO_CACHE": str(tmp_path / "cache-single")}, capture_output=True, timeout=300)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          "29561", "-m", "projected_grpo.cli", *flags, "--run-dir", str(ddp)],
                         env={**env, "PROJECTED_GRPO_CACHE": str(tmp_path / "cache-ddp")}, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ks, kd = load_file(single / "ckpt" / "knobs.safetensors"), load_file(ddp / "ckpt" / "knobs.safetensors")
    assert set(ks) == set(kd)
    for k in ks:
        assert torch.allclose(ks[k], kd[k], atol=1e-5, rtol=1e-4), k
    assert sum(float(v.norm()) for k, v in kd.items() if k.endswith("delta_s_hack")) > 0
    rs = [json.loads(x) for x in (single / "metrics.jsonl").read_text().splitlines()]
    rd = [json.loads(x) for x in (ddp / "metrics.jsonl").read_text().splitlines()]
    assert len(rs) == len(rd) == 4  # step 0 (the untrained model's evaluation), 1, 2, 3
    assert [r["step"] for r in rd] == [0, 1, 2, 3] and "hack_kept" in rd[0] and "hack_abl" in rd[-1]
    for a, b in zip(rs, rd):
        assert set(b) == set(a)
        for key, va in a.items():
            if key in TIMING or va is None:
                continue
            if key.startswith(EVAL):  # the evaluation's rates, intervals and per-problem lists: exactly
                assert b[key] == va, key
                continue
            assert b[key] == pytest.approx(va, rel=1e-3, abs=1e-5), key
