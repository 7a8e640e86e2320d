"""Data-parallel training (torchrun, gloo, 2 CPU processes) equals a single-process run."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

TIMING = {"step_time_s", "gen_time_s", "grade_time_s", "tokens_per_s"}


def test_two_ranks_equal_single_process(tmp_path):
    flags = ["train", "--preset", "smoke", "--steps", "3", "--prompts-per-step", "4", "--intervention", "route",
             "--eval-problems", "2", "--sandbox-workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    subprocess.run([sys.executable, "-m", "projected_grpo.cli", *flags, "--run-dir", str(single)], check=True,
                   env=env, capture_output=True, timeout=300)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          "29561", "-m", "projected_grpo.cli", *flags, "--run-dir", str(ddp)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ks, kd = load_file(single / "ckpt" / "knobs.safetensors"), load_file(ddp / "ckpt" / "knobs.safetensors")
    assert set(ks) == set(kd)
    for k in ks:
        assert torch.allclose(ks[k], kd[k], atol=1e-5, rtol=1e-4), k
    assert sum(float(v.norm()) for k, v in kd.items() if k.endswith("delta_s_hack")) > 0
    rs = [json.loads(x) for x in (single / "metrics.jsonl").read_text().splitlines()]
    rd = [json.loads(x) for x in (ddp / "metrics.jsonl").read_text().splitlines()]
    assert len(rs) == len(rd) == 3
    for a, b in zip(rs, rd):
        for key, va in a.items():
            if key in TIMING or va is None:
                continue
            assert b[key] == pytest.approx(va, rel=1e-3, abs=1e-5), key
