"""stats.py on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from projected_grpo.stats import bootstrap_ci, hier_bootstrap_ci, holm, mde, min_p, sign_flip_p


def test_holm_hand_computed():
    # sorted 0.01, 0.03, 0.04 → ×3, ×2, ×1 = 0.03, 0.06, 0.04 → monotone 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, None, 0.9]) == pytest.approx([1.0, None, 1.0], nan_ok=True)  # None not counted: m = 2
    assert holm([0.5, None, 0.9])[1] is None
    assert holm([]) == []


def test_sign_flip_exact_hand_computed():
    assert sign_flip_p([-1.0, -2.0, -3.0]) == pytest.approx(1 / 8)  # only the observed pattern is as low
    # sums of ±1 ±2 ±3: 6, 0, 2, -4, 4, -2, 0, -6; five are <= the observed 0
    assert sign_flip_p([-1.0, -2.0, 3.0]) == pytest.approx(5 / 8)
    assert sign_flip_p([0.0, 0.0]) == 1.0
    assert sign_flip_p([]) is None
    assert min_p(5) == pytest.approx(1 / 32)
    assert sign_flip_p([-0.3] * 5) == pytest.approx(min_p(5))


def test_sign_flip_monte_carlo_agrees_with_exact_tail():
    d = [-0.1] * 17 + [0.1] * 3  # n = 20 > EXACT_MAX: Monte Carlo; exact = P(Binomial(20, 1/2) <= 3)
    from math import comb

    exact = sum(comb(20, k) for k in range(4)) / 2 ** 20
    assert sign_flip_p(d) == pytest.approx(exact, abs=2e-4)


def test_bootstrap_hand_computed():
    assert bootstrap_ci([0.2, 0.2, 0.2]) == pytest.approx((0.2, 0.2))
    # n = 2: resampled means 0 (1/4), 0.5 (1/2), 1 (1/4): the 2.5 % and 97.5 % quantiles are 0 and 1
    assert bootstrap_ci([0.0, 1.0]) == pytest.approx((0.0, 1.0))
    assert bootstrap_ci([0.4]) is None
    # large n: the percentile interval approaches mean ± 1.96 SE
    d = np.random.default_rng(1).normal(0.3, 1.0, 400)
    lo, hi = bootstrap_ci(d)
    se = d.std(ddof=1) / np.sqrt(d.size)
    assert lo == pytest.approx(d.mean() - 1.96 * se, abs=0.25 * se)
    assert hi == pytest.approx(d.mean() + 1.96 * se, abs=0.25 * se)


def test_hier_bootstrap_hand_computed():
    # every problem of every seed differs by exactly -0.5: the interval is that point
    a = [[0.0, 0.5, 0.0], [0.5, 0.5, 0.0]]
    b = [[0.5, 1.0, 0.5], [1.0, 1.0, 0.5]]
    assert hier_bootstrap_ci(a, b) == pytest.approx((-0.5, -0.5))
    # one seed, one problem varies: two seeds with differences (0, -1) on one problem each → like bootstrap_ci
    assert hier_bootstrap_ci([[0.0], [0.0]], [[0.0], [1.0]]) == pytest.approx((-1.0, 0.0))
    # the problem stage widens the interval when per-seed means agree but problems disagree
    a2 = [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]
    b2 = [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]
    lo, hi = hier_bootstrap_ci(a2, b2)
    assert bootstrap_ci([0.0, 0.0, 0.0]) == pytest.approx((0.0, 0.0)) and lo < -0.3 and hi > 0.3
    assert hier_bootstrap_ci([[1.0]], [[0.0]]) is None


def test_mde_hand_computed():
    # t_{0.95, 7} = 1.894579, t_{0.8, 7} = 0.896030: (1.894579 + 0.896030) / sqrt(8) = 0.986629
    assert mde(1.0, 8) == pytest.approx(0.986629, abs=1e-5)
    assert mde(0.5, 8) == pytest.approx(0.5 * 0.986629, abs=1e-5)
    assert mde(1.0, 1) is None
