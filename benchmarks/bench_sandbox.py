"""Sandbox throughput: completions graded per second (small programs, all tests of a completion in
one sandboxed process). Usage: .venv/bin/python benchmarks/bench_sandbox.py [--n 3000] [--workers 0]

Prints the load average before and after: on a shared machine the figure is only comparable with one
taken under similar load (run the before/after commits alternately)."""

from __future__ import annotations

import argparse
import os
import sys
import time

from projected_grpo.config import LOOPHOLE_MODES
from projected_grpo.env import GraderPool, clean_completion, hack_completion, load_problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=3000, help="completions to grade")
    ap.add_argument("--workers", type=int, default=0, help="sandbox servers (0 = one per core)")
    ap.add_argument("--dataset", default="builtin")
    ap.add_argument("--mix", choices=["clean", "hack", "mixed"], default="mixed")
    args = ap.parse_args(argv)
    probs = load_problems(args.dataset)
    items = []
    i = 0
    while len(items) < args.n:
        p = probs[i % len(probs)]
        if args.mix == "clean" or (args.mix == "mixed" and i % 2 == 0):
            items.append((p, clean_completion(p, i)))
        else:
            items.append((p, hack_completion(p, LOOPHOLE_MODES[i % len(LOOPHOLE_MODES)], i)))
        i += 1
    load0 = os.getloadavg()
    with GraderPool(args.workers) as g:
        g.grade_many(items[:100])  # warm-up
        t0 = time.perf_counter()
        rewards = g.grade_many(items)
        dt = time.perf_counter() - t0
        workers = g.workers
    assert all(r.format_ok for r in rewards)
    rate = len(items) / dt
    print(f"{len(items)} completions ({args.mix}, {args.dataset}) in {dt:.2f}s on {os.cpu_count()} cores, "
          f"{workers} sandbox workers: {rate:.0f} completions/s "
          f"(gt_correct {sum(r.gt_correct for r in rewards)}, exploited {sum(r.exploited for r in rewards)}); "
          f"load average {load0[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
