"""Statistics for the study: paired bootstrap intervals, an exact sign-flip test, Holm, a power note.

Every Δ of a report is paired: arm − vanilla of the same seed (and, where the runs logged per-problem
outcomes, of the same held-out problem). The functions take plain numbers so that the tests can pin
them on hand-computed cases.

- ``bootstrap_ci(d)``: percentile interval of the mean of the paired per-seed differences ``d`` (n,),
  seeds resampled with replacement.
- ``hier_bootstrap_ci(a, b)``: two-stage paired bootstrap over seeds, then held-out problems within
  each drawn seed; ``a[s]``, ``b[s]`` (P,) are one seed's per-problem outcomes of the two arms on the
  same problems. The problem stage adds the finite-eval-set noise that a per-seed rate hides.
- ``sign_flip_p(d)``: exact (2^n sign patterns; Monte Carlo above ``EXACT_MAX``) one-sided p of
  "mean d < 0" under the null that each seed's difference is symmetric about 0. With n seeds the
  smallest attainable p is 2^-n: 5 seeds cannot go below 0.031.
- ``holm(p)``: Holm–Bonferroni adjusted p-values (step-down, monotone, capped at 1).
- ``mde(sd, n)``: smallest true mean difference a paired one-sided t-test at level ``alpha`` detects
  with ``power``: (t_{1−α, n−1} + t_{power, n−1}) · sd / √n.

Owns the statistics (bootstrap, sign-flip, Holm, power); must never import torch or another module of the package.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np

LEVEL = 0.95
N_BOOT = 10_000
EXACT_MAX = 16  # seeds: up to 2^16 sign patterns enumerated exactly
ALPHA = 0.05
POWER = 0.8


def _clean(d) -> np.ndarray:
    return np.asarray([float(x) for x in d if x is not None and math.isfinite(float(x))], dtype=np.float64)


def bootstrap_ci(d: Sequence[float], level: float = LEVEL, n_boot: int = N_BOOT, seed: int = 0
                 ) -> tuple[float, float] | None:
    """Percentile ``level`` interval of mean(d) over seeds resampled with replacement; None for n < 2."""
    d = _clean(d)
    if d.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(1)
    q = (1 - level) / 2
    return float(np.quantile(means, q)), float(np.quantile(means, 1 - q))


def hier_bootstrap_ci(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], level: float = LEVEL,
                      n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float] | None:
    """Two-stage paired bootstrap of mean(a − b): seeds with replacement, then within each drawn seed its
    problems with replacement (the same problem indices for a and b). ``a[s]``, ``b[s]``: (P_s,)."""
    diffs = [np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64) for x, y in zip(a, b)
             if x is not None and y is not None and len(x) == len(y) and len(x) > 0]
    if len(diffs) < 2:
        return None
    rng = np.random.default_rng(seed)
    S = len(diffs)
    if len({x.size for x in diffs}) == 1:  # one eval set for every seed (the trainer's split): vectorised
        D, P = np.stack(diffs), diffs[0].size  # (S, P)
        seeds = rng.integers(0, S, size=(n_boot, S, 1))
        means = D[seeds, rng.integers(0, P, size=(n_boot, S, P))].mean((1, 2))
    else:
        means = np.empty(n_boot)
        for i in range(n_boot):
            means[i] = np.mean([diffs[s][rng.integers(0, diffs[s].size, size=diffs[s].size)].mean()
                                for s in rng.integers(0, S, size=S)])
    q = (1 - level) / 2
    return float(np.quantile(means, q)), float(np.quantile(means, 1 - q))


def sign_flip_p(d: Sequence[float], n_mc: int = 100_000, seed: int = 0) -> float | None:
    """One-sided p of "mean(d) < 0": the share of sign patterns whose mean is ≤ the observed one
    (exact for n ≤ EXACT_MAX, else Monte Carlo with the observed pattern counted). None for n = 0."""
    d = _clean(d)
    n = d.size
    if n == 0:
        return None
    obs = d.sum()
    tol = 1e-12 * max(1.0, float(np.abs(d).sum()))
    if n <= EXACT_MAX:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        return float(np.mean(signs @ np.abs(d) <= obs + tol))
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(n_mc, n))
    return float((np.sum(signs @ np.abs(d) <= obs + tol) + 1) / (n_mc + 1))


def holm(p: Sequence[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values, in the input order; None entries stay None and do not count."""
    idx = [i for i, x in enumerate(p) if x is not None]
    m = len(idx)
    out: list[float | None] = [None] * len(p)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: p[i])):
        running = max(running, min(1.0, (m - rank) * float(p[i])))
        out[i] = running
    return out


def mde(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """Smallest true mean paired difference a one-sided t-test at ``alpha`` detects with ``power``."""
    if n < 2 or sd is None or not math.isfinite(sd):
        return None
    from scipy.stats import t

    return float((t.ppf(1 - alpha, n - 1) + t.ppf(power, n - 1)) * sd / math.sqrt(n))


def min_p(n: int) -> float:
    """The smallest p the exact one-sided sign-flip test can give with n paired seeds."""
    return 2.0 ** -n
