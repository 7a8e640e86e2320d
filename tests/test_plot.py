"""The dynamics plot of a demo-like sweep, rendered from synthetic run dirs and checked for readability."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from projected_grpo import report

MATCH = "demo000001"


def demo_like_run(root: Path, arm: str, hack: list[float], evals: dict[int, dict]) -> Path:
    """A run dir shaped like the demo's: an evaluation row at step 0, train rows 1..n, evaluations on the last."""
    d = root / f"{arm}-s0"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({
        "config": {"intervention": arm, "vhack_source": "real", "seed": 0, "steps": len(hack)},
        "hash": f"h-{arm}", "match_hash": MATCH, "arm": arm}))
    rows = [{"step": 0, **evals.get(0, {})}] if 0 in evals else []
    for i, h in enumerate(hack, 1):
        rows.append({"step": i, "hack_s": h, "solve_s": 0.0, "reward": 0.1 + h, "cin_s": 0.8, "cin_t": 0.9,
                     "cout": 0.0 if arm != "none" else 0.8, "cout_update": 0.4, "dSh": 0.1 * i * (arm == "route"),
                     **evals.get(i, {})})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "summary.json").write_text("{}")
    return d


@pytest.fixture
def demo_sweep(tmp_path) -> Path:
    start = {"hack_kept": 0.0, "solve_kept": 0.0, "hack_abl": 0.0, "solve_abl": 0.0}
    end = {"hack_kept": 0.44, "solve_kept": 0.0, "hack_abl": 0.44, "solve_abl": 0.0}
    # vanilla and erase coincide everywhere a rate is drawn (as in the demo: solve 0 for all, equal eval hack)
    demo_like_run(tmp_path, "none", [0, 0, 0, 0.25, 0, 0, 0, 0], {0: start, 8: end})
    demo_like_run(tmp_path, "erase", [0, 0, 0, 0.25, 0, 0, 0, 0], {8: end})  # one evaluation: a single point
    demo_like_run(tmp_path, "route", [0, 0, 0.25, 0, 0.25, 0, 0, 0.25], {8: {**end, "hack_abl": 0.0, "hack_kept": 0.11}})
    return tmp_path


def _panels(fig) -> dict[str, object]:
    return {ax.get_title(): ax for ax in fig.axes if ax.get_title()}


def test_demo_plot_is_readable(demo_sweep, tmp_path):
    fig = report.dynamics_figure([demo_sweep])
    fig.canvas.draw()
    panels = _panels(fig)
    assert len(panels) == len(report._PANELS)
    for title, _, series, is_eval, is_rate in report._PANELS:
        ax = panels[title]
        lo, hi = ax.get_xlim()
        assert lo <= 0 and hi >= 8 and hi - lo >= 1, f"{title}: x range {lo, hi} does not show steps 0..8"
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), f"{title}: non-integer step ticks {ticks}"
        if is_rate:
            assert ax.get_ylim() == pytest.approx(report.RATE_YLIM), title
            for coll in ax.collections:  # the bands
                for path in coll.get_paths():
                    ys = path.vertices[:, 1]
                    assert ((ys >= 0) & (ys <= 1)).all(), f"{title}: a band outside [0, 1]"
    # vanilla and erase have equal values in the train hack panel: both lines still visible
    lines = [ln for ln in panels["Student hack rate (train)"].get_lines() if len(ln.get_xdata())]
    assert len(lines) == 3
    by_color = {ln.get_color(): ln for ln in lines}
    none, erase = by_color["black"], by_color["tab:blue"]
    assert list(none.get_ydata()) == list(erase.get_ydata())
    assert none.get_marker() != erase.get_marker()
    assert all(abs(a - b) >= 0.05 for a, b in zip(none.get_xdata(), erase.get_xdata()))
    # offsets stay small: every point is within a quarter step of its integer step
    for ln in lines:
        assert all(abs(x - round(x)) <= 0.25 for x in ln.get_xdata())
    assert report.plot([demo_sweep], tmp_path / "demo.png").stat().st_size > 10_000


def test_single_step_run_has_a_real_x_range(tmp_path):
    demo_like_run(tmp_path, "none", [0.5], {1: {"hack_kept": 1.0, "solve_kept": 0.0}})
    fig = report.dynamics_figure([tmp_path])
    for ax in fig.axes:
        if ax.get_title():
            lo, hi = ax.get_xlim()
            assert hi - lo >= 1 and lo <= 1 <= hi, (ax.get_title(), lo, hi)
