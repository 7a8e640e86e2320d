"""The trainer with the fast rollout backend on CPU (eager decode), and its failure paths.

On CPU fastgen runs the same decode step eagerly (no graphs, no compile) and, in fp32, draws the same
tokens as HF ``generate`` (test_fastgen.py), so a whole `train` run with ``rollout_backend=fast`` must
give the metrics of the same run with the ``hf`` backend. The device run of this path (compile + CUDA
graphs) is tests/test_gpu.py (``pytest -m gpu``).
"""

import json
from pathlib import Path

import pytest
import torch

from projected_grpo import fastgen
from projected_grpo.cli import main
from projected_grpo.rollout import Rollouts

TIMING = {"step_time_s", "gen_time_s", "grade_time_s", "tokens_per_s"}


def _train(run_dir, *flags):
    rc = main(["train", "--preset", "smoke", "--run-dir", str(run_dir), "--sandbox-workers", "2", *flags])
    assert rc == 0
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_train_fast_backend_equals_hf_backend(tmp_path):
    flags = ["--steps", "2", "--intervention", "erase", "--mix-ratio", "0.5", "--eval-problems", "2",
             "--max-new-tokens", "16"]
    fast = _train(tmp_path / "fast", "--rollout-backend", "fast", *flags)
    hf = _train(tmp_path / "hf", "--rollout-backend", "hf", *flags)
    assert [r["step"] for r in fast] == [1, 2]
    assert all(r["rollout_capture_failed"] == 0 for r in fast)  # CPU: no graphs, nothing to fall back from
    numeric = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING and numeric(v)} for r in rows]
    other = lambda rows: [{k: v for k, v in r.items() if k not in TIMING and not numeric(v)} for r in rows]
    assert other(fast) == other(hf)  # per-problem 0/1 vectors, None (not measured), flags: equal, not approximately
    exact = ("reward", "hack_s", "solve_s", "hack_t", "solve_t", "frac_truncated", "frac_zero_var", "loss", "gn", "dS")
    assert [[r[k] for k in exact] for r in fast] == [[r[k] for k in exact] for r in hf]  # the same samples
    # the projection diagnostics agree to float32 rounding (seen: cin 1e-8 relative, cout ~3e-8 vs 4e-8
    # where it is zero in exact arithmetic)
    assert strip(fast) == [pytest.approx(r, rel=1e-6, abs=1e-6) for r in strip(hf)]
    assert fast[-1]["dS"] > 0 and "hack_kept" in fast[-1]  # it trained and evaluated


class _Dec:
    def __init__(self, err):
        self.err, self.graphs = err, {1: object()}

    def capture(self, pool):
        if self.err:
            raise RuntimeError(self.err)


def test_capture_failure_falls_back_to_eager_and_is_recorded():
    out = Rollouts([], [], [], [])
    assert fastgen.capture_or_eager(_Dec(None), None, out) and out.capture_failed == 0
    dec = _Dec("operation not permitted when stream is capturing\nmore detail")
    with pytest.warns(UserWarning, match="capture failed"):
        assert not fastgen.capture_or_eager(dec, None, out)
    assert dec.graphs == {} and out.capture_failed == 1
    assert out.capture_error == "operation not permitted when stream is capturing"


def test_capture_failure_reaches_the_metrics(tmp_path, monkeypatch):
    """A rollout that fell back to eager decoding says so in metrics.jsonl, not only in a warning."""
    from projected_grpo import train as train_mod

    real = train_mod.generate

    def failing(*a, **kw):
        r = real(*a, **kw)
        r.capture_failed, r.capture_error = 1, "boom"
        return r

    monkeypatch.setattr(train_mod, "generate", failing)
    rows = _train(tmp_path / "r", "--rollout-backend", "fast", "--steps", "1", "--eval-problems", "0")
    assert rows[0]["rollout_capture_failed"] == 1


def test_non_finite_pair_gradients_stop_extraction_with_one_line(tiny_adapter):
    from projected_grpo.config import ConfigError
    from projected_grpo.hack_subspace import extract_basis

    model, tok, adapter = tiny_adapter
    name = next(iter(adapter.modules))
    with torch.no_grad():
        adapter.modules[name].U[0, 0] = float("nan")
    pairs = [(tok.apply_chat_template([{"role": "user", "content": "q"}], add_generation_prompt=True, tokenize=False),
              "print('ok')", "return 1", "return 2")]
    with pytest.raises(ConfigError) as e:
        extract_basis(model, adapter, tok, pairs, k=1)
    msg = str(e.value)
    assert "\n" not in msg and "non-finite" in msg and "pad id" in msg
    assert any(n in msg for n in adapter.modules)


def test_gram_svd_matches_torch_svd():
    """The GPU set-up's SVD (fp64 Gram eigendecomposition + QR), checked on CPU: same singular values,
    orthonormal factors, the same rank-1 terms as torch.linalg.svd, for tall, wide and square weights
    with a few near-zero directions."""
    from projected_grpo.adapter import gram_svd

    gen = torch.Generator().manual_seed(0)
    for o, i in ((48, 24), (24, 48), (32, 32)):
        w = torch.randn(o, i, generator=gen) * 0.02
        w[:, :2] *= 1e-6
        U, S, Vh = gram_svd(w)
        m = min(o, i)
        assert U.shape == (o, m) and S.shape == (m,) and Vh.shape == (m, i) and U.dtype == torch.float32
        U2, S2, Vh2 = torch.linalg.svd(w.double(), full_matrices=False)
        assert torch.allclose(S.double(), S2, atol=1e-7 * float(S2[0]))
        assert torch.allclose(U.double().T @ U.double(), torch.eye(m, dtype=torch.float64), atol=1e-6)
        assert torch.allclose(Vh.double() @ Vh.double().T, torch.eye(m, dtype=torch.float64), atol=1e-6)
        assert float(torch.linalg.norm((U * S) @ Vh - w) / torch.linalg.norm(w)) < 1e-6
        for k in range(5):  # distinct singular values: each rank-1 term is unique (sign-free)
            assert torch.allclose(torch.outer(U[:, k], Vh[k]).double(), torch.outer(U2[:, k], Vh2[k]), atol=1e-5)

