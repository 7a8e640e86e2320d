"""--ppo-epochs μ: each batch re-used μ times (π_old once, no grad), projected at every epoch (tiny model, CPU)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import projected_grpo.train as train_mod
from projected_grpo.cli import main
from projected_grpo.projection import Projector, hackward_sq

FLAGS = ["--intervention", "erase", "--steps", "2", "--eval-problems", "0", "--clip-eps", "1e-4",
         "--sandbox-workers", "1"]


def _run(run_dir, monkeypatch, *flags):
    applied, old_calls = [], []
    real_apply, real_old = Projector.apply, train_mod.old_logprobs

    def apply(self, modify=True):  # the gradient AdamW is about to use, right after this arm's projection
        diag = real_apply(self, modify)
        left = sum(hackward_sq(self.basis[n], m.delta_s.grad) for n, m in self.adapter.modules.items()
                   if n in self.basis and m.delta_s.grad is not None)
        applied.append((diag["cin"], left))
        return diag

    monkeypatch.setattr(Projector, "apply", apply)
    monkeypatch.setattr(train_mod, "old_logprobs", lambda *a, **k: old_calls.append(1) or real_old(*a, **k))
    assert main(["train", "--preset", "smoke", "--run-dir", str(run_dir), *FLAGS, *flags]) == 0
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return rows, applied, old_calls, load_file(Path(run_dir) / "ckpt" / "knobs.safetensors")


def test_ppo_epochs_reuse_the_batch_clip_and_project_every_epoch(tmp_path, monkeypatch):
    one, applied1, old1, k1 = _run(tmp_path / "mu1", monkeypatch)
    # μ = 1 is the previous step: no π_old pass, ratio exactly 1 (π_old = π detached), one update per step
    assert old1 == [] and len(applied1) == 2
    assert all(r["ratio_mean"] == 1.0 and r["clip_frac"] == 0.0 for r in one)
    two, applied2, old2, k2 = _run(tmp_path / "mu2", monkeypatch, "--ppo-epochs", "2")
    assert len(old2) == 2 and len(applied2) == 4  # π_old once per step; a projected update per epoch
    # epoch 2 sees a moved policy: the ratio leaves 1 and a tight clip clips
    assert all(r["clip_frac"] > 0 and r["ratio_mean"] != 1.0 for r in two)
    # the projection invariant holds at every epoch: no hack-ward component left in the applied gradient,
    # while there was one to remove (cin > 0) in the re-used epochs too
    for cin, left in applied2:
        assert left == pytest.approx(0.0, abs=1e-12)
    assert all(cin > 0 for cin, _ in applied2[1::2])
    # the first epoch of step 1 is μ = 1's step (same batch, ratio 1 up to rounding); the knobs then differ
    for key in ("loss", "gn", "cin_s", "cin_t", "cin", "cout"):
        assert two[0][key] == pytest.approx(one[0][key], rel=1e-4, abs=1e-7), key
    assert two[0]["reward"] == one[0]["reward"]
    assert any(not torch.equal(k1[k], k2[k]) for k in k1 if k.endswith(".delta_s"))
    assert all(torch.count_nonzero(v) == 0 for k, v in k2.items() if k.endswith("delta_s_hack"))  # erase


def test_ppo_epochs_must_be_positive(tmp_path, capsys):
    assert main(["train", "--preset", "smoke", "--ppo-epochs", "0", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "--ppo-epochs must be positive" in err
    assert not (tmp_path / "r").exists()
