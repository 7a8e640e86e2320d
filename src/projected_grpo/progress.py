"""Progress that never goes silent: named set-up steps with their times, and an evaluation status line.

    [route s0] model load (smollm2) ...
    [route s0] model load (smollm2): done in 4.1 s

Each step prints when it starts (so a slow one says what it is doing) and when it ends, on stderr next
to the tqdm bar. ``Progress(None)`` is silent (quiet runs, data-parallel ranks > 0).

Owns progress bars and set-up step timing; must never import another module of the package.
"""

from __future__ import annotations

import contextlib
import sys
import time


class Progress:
    def __init__(self, prefix: str | None):
        self.prefix = prefix  # None: silent
        self.times: dict[str, float] = {}  # step name -> seconds, for a caller that wants them

    def __call__(self, msg: str) -> None:
        """A one-off note."""
        if self.prefix is not None:
            print(f"{self.prefix} {msg}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def step(self, name: str):
        self(f"{name} ...")
        t0 = time.perf_counter()
        yield
        self.times[name] = dt = time.perf_counter() - t0
        self(f"{name}: done in {dt:.1f} s")


def eval_status(bar, n_problems: int) -> None:
    """Say on the bar's own line that the greedy evaluation runs (the bar does not move meanwhile)."""
    if n_problems:
        bar.set_postfix_str(f"evaluating {n_problems} held-out problems (greedy) ...", refresh=True)
