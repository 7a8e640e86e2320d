"""CPU cost of the GRPO forward/backward on the embedded model (knobs on every Linear, full rank).

One demo-shaped batch: 4 HumanEval prompts x group 4 (1 student row of 96 tokens + 3 teacher rows of
60). Times one forward+backward over the 16 rows (best of --repeats):
  - one pass per row (`completion_logprobs`), micro-batches of 16 and of 4 rows;
  - prompt sharing (`shared_prefix_logprobs`) as the trainer does it: per source, whole groups;
  - the same under bf16 autocast (`--amp`, the demo preset's setting).
Then one student rollout of the step (4 prompts x 96 tokens, T=0.7, hf backend): from the fp32 merged
model, and from its bf16 copy (`--amp`).
Usage: .venv/bin/python benchmarks/bench_cpu_step.py [--repeats 2]"""

from __future__ import annotations

import argparse
import time

import torch

from projected_grpo.adapter import SVDAdapter
from projected_grpo.config import DEFAULT_TARGETS
from projected_grpo.env.problems import load_problems
from projected_grpo.env.prompts import render_prompt
from projected_grpo.grpo import completion_logprobs, make_batch, shared_prefix_logprobs
from projected_grpo.models import load_model
from projected_grpo.rollout import generate


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args(argv)
    problems = load_problems("humaneval", seed=0)
    model, tok = load_model("smollm2", torch.float32, "cpu")
    adapter = SVDAdapter.attach(model, DEFAULT_TARGETS)
    g = torch.Generator().manual_seed(0)
    texts = [render_prompt(tok, problems[i]) for i in torch.randperm(len(problems), generator=g)[:4].tolist()]
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    student = [(u, list(range(400, 496))) for u in range(4)]
    teacher = [(u, list(range(500, 560))) for u in range(4) for _ in range(3)]
    rows = [(prompts[u], c) for u, c in student + teacher]
    print(f"{torch.get_num_threads()} threads; prompt tokens {[len(p) for p in prompts]}; "
          f"{sum(len(p) + len(c) for p, c in rows)} row tokens")

    def one_pass(size):
        for s in range(0, len(rows), size):
            (-completion_logprobs(model, make_batch(rows[s:s + size], tok.pad_token_id)).sum()).backward()

    def shared(size):
        parts = [student] + [teacher[k:k + size - size % 3] for k in range(0, len(teacher), size - size % 3)]
        for part in parts:  # per source, whole groups of 3 teacher rows, <= size rows
            used = sorted({u for u, _ in part})
            lp, _ = shared_prefix_logprobs(model, [prompts[u] for u in used],
                                           [(used.index(u), c) for u, c in part], tok.pad_token_id)
            (-lp.sum()).backward()

    def amp(fn):
        def run(*args):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                fn(*args)
        return run

    print("| path | s per forward+backward |\n|---|---|")
    for name, fn in (("one pass, micro-batch 16", lambda: one_pass(16)), ("one pass, micro-batch 4", lambda: one_pass(4)),
                     ("prompt sharing, micro-batch 4", lambda: shared(4)),
                     ("prompt sharing, micro-batch 8", lambda: shared(8)),
                     ("prompt sharing, micro-batch 4, bf16 autocast (--amp)", lambda: amp(shared)(4))):
        best = float("inf")
        for _ in range(a.repeats):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
            for p in adapter.parameters():
                p.grad = None
        print(f"| {name} | {best:.1f} |", flush=True)
    def rollout(amp_copy: bool):
        if amp_copy:  # what the trainer does with --amp: a bf16 copy of the merged model, made per rollout
            model_ = adapter.plain_copy(torch.bfloat16)
            return generate(model_, tok, texts, 1, 96, temperature=0.7, seeds=[1, 2, 3, 4])
        with adapter.merged():
            return generate(model, tok, texts, 1, 96, temperature=0.7, seeds=[1, 2, 3, 4])

    print("\n| rollout (4 x 96 tokens) | s |\n|---|---|")
    for name, flag in (("fp32 merged model", False), ("bf16 copy, copy included (--amp)", True)):
        best = float("inf")
        for _ in range(a.repeats):
            t = time.perf_counter()
            rollout(flag)
            best = min(best, time.perf_counter() - t)
        print(f"| {name} | {best:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
