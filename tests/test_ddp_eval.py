"""Sharded held-out evaluation over torch.distributed (2 gloo CPU processes) equals one process, and each
rank generates and grades only its share; the process group's timeout comes from PROJECTED_GRPO_DIST_TIMEOUT_S.

Run as a script (``python -m torch.distributed.run --nproc-per-node 2 tests/test_ddp_eval.py OUT``) this
file is the worker: every rank evaluates the tiny model with moved knobs and writes what it graded and got.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

N_PROBLEMS = 5  # odd: rank 0 gets 3 problems, rank 1 gets 2
CONDITIONS = (("kept", True), ("abl", True), ("abl", False))
SAMPLES = 2


class CountingGrader:
    """The real sandboxed grader, remembering which problems it was asked to grade."""

    def __init__(self, grader):
        self.grader, self.seen = grader, []

    def grade_many(self, items):
        self.seen += [p.id for p, _ in items]
        return self.grader.grade_many(items)


def evaluate_tiny(cache: Path) -> dict:
    """The tiny model with δS and δS_hack moved (seeded: identical on every rank), evaluated on the first
    N_PROBLEMS builtin problems, greedy + SAMPLES samples, with the deployed-model diagnostics; twice
    through the step-0 cache (the second call must grade nothing)."""
    import contextlib

    from projected_grpo import diagnostics
    from projected_grpo import evaluate as ev
    from projected_grpo.adapter import SVDAdapter
    from projected_grpo.config import DEFAULT_TARGETS
    from projected_grpo.env.grader import GraderPool
    from projected_grpo.env.problems import DATA_SEED, load_problems
    from projected_grpo.models import load_model

    torch.set_num_threads(1)
    model, tok = load_model("tiny")
    adapter = SVDAdapter.attach(model, DEFAULT_TARGETS)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in adapter.modules.values():
            m.delta_s.copy_(torch.randn(m.delta_s.shape, generator=gen) * 0.3)
            m.delta_s_hack.copy_(torch.randn(m.delta_s_hack.shape, generator=gen) * 0.3)
    problems = load_problems("builtin", seed=DATA_SEED)[:N_PROBLEMS]
    spec = ev.EvalSpec(conditions=CONDITIONS, samples=SAMPLES, temperature=1.0, max_new_tokens=12)

    @contextlib.contextmanager
    def views(ablate: bool):
        with adapter.merged(ablate):
            yield model

    out = {}
    with GraderPool(workers=1) as pool, torch.no_grad():
        for name, probs, kw in (("plain", problems, {}), ("cached", problems, {"cache": cache, "cache_key": {"t": 1}}),
                                ("cache_hit", problems, {"cache": cache, "cache_key": {"t": 1}}),
                                ("one_problem", problems[:1], {})):  # fewer problems than ranks: rank 1 has none
            grader = CountingGrader(pool)
            res = ev.evaluate(views, tok, grader, probs, spec, adapter=adapter,
                              extras=(diagnostics.eval_extra(None),), **kw)
            out[name] = {"graded": grader.seen, "records": [asdict(r) for r in res.records], "row": res.metrics_row()}
    out["ids"] = [p.id for p in problems]
    return out


def _worker(out_dir: str) -> None:
    from projected_grpo import distributed as dist

    dist.init()
    res = evaluate_tiny(Path(out_dir) / "cache")
    (Path(out_dir) / f"rank{dist.rank()}.json").write_text(json.dumps(res))
    dist.shutdown()


def test_two_ranks_shard_the_evaluation_and_equal_one_process(tmp_path):
    # CPU and gloo even where GPUs are visible (with them, distributed.init picks NCCL, and the model is on the CPU)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                             "29571", __file__, str(tmp_path)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    threads = torch.get_num_threads()
    try:  # meanwhile, the reference in this process (world 1), single-threaded like the ranks
        single = evaluate_tiny(tmp_path / "cache-single")
    finally:  # never leave this process single-threaded: later in-process runs must match their subprocesses
        torch.set_num_threads(threads)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    ids = single["ids"]
    per_problem = len(CONDITIONS) * (1 + SAMPLES)  # completions graded per problem
    assert sorted(single["plain"]["graded"]) == sorted(ids * per_problem)
    for r, got in enumerate(ranks):
        for name in ("plain", "cached"):  # each rank generated and graded problems r, r + 2, ... only
            assert sorted(got[name]["graded"]) == sorted(ids[r::2] * per_problem), (r, name)
        assert got["cache_hit"]["graded"] == []  # rank 0 read the entry and broadcast it: nobody graded
        assert sorted(got["one_problem"]["graded"]) == sorted(ids[:1] * per_problem if r == 0 else [])
        for name in ("plain", "cached", "cache_hit", "one_problem"):
            a, b = single[name], got[name]
            assert b["records"] == a["records"], (r, name)  # every completion's text, greedy and sampled
            assert set(b["row"]) == set(a["row"])
            for key, va in a["row"].items():
                if key.startswith("kl_base"):  # Σ KL summed per rank then across ranks: float order only
                    assert b["row"][key] == pytest.approx(va, rel=1e-6, abs=1e-9), (r, name, key)
                else:
                    assert b["row"][key] == va, (r, name, key)
    assert single["plain"]["row"]["kl_base_kept"] > 0 and single["plain"]["row"]["kl_base_abl"] > 0


@pytest.mark.parametrize("raw, want", [(None, 3600.0), ("", 3600.0), ("7200", 7200.0), (" 90.5 ", 90.5)])
def test_dist_timeout_from_the_environment(raw, want):
    from projected_grpo import distributed as dist

    env = {} if raw is None else {dist.TIMEOUT_ENV: raw}
    assert dist.timeout_s(env) == want


@pytest.mark.parametrize("raw", ["abc", "0", "-5", "nan", "inf", "1h"])
def test_bad_dist_timeout_is_one_line_error(raw, monkeypatch, capsys, tmp_path):
    from projected_grpo import distributed as dist
    from projected_grpo.cli import main

    with pytest.raises(ValueError, match=dist.TIMEOUT_ENV):
        dist.timeout_s({dist.TIMEOUT_ENV: raw})
    # the trainer checks it before any rendezvous (WORLD_SIZE 2 with no peer would otherwise wait)
    monkeypatch.setenv(dist.TIMEOUT_ENV, raw)
    monkeypatch.setenv("WORLD_SIZE", "2")
    rc = main(["train", "--preset", "smoke", "--steps", "1", "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: {dist.TIMEOUT_ENV}=") and err.count("\n") == 1, err
    assert not dist.active()


if __name__ == "__main__":
    _worker(sys.argv[1])
