"""Held-out evaluation (evaluate.py): intervals, the `eval --json` contract, the trainer's evaluation rows,
the no-loophole baseline's reward, and "matched solve: n/a" when both solve rates are 0."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from projected_grpo import evaluate as ev
from projected_grpo.cli import main
from projected_grpo.config import PRESETS, Config

Z = 1.959963984540054  # the 0.975 normal quantile


def _wilson_by_hand(k: int, n: int) -> tuple[float, float]:
    p, z2 = k / n, Z * Z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return centre - half, centre + half


# ------------------------------------------------------------------------- intervals
def test_wilson_hand_computed_cases():
    # 0 of 10: [0, z²/(n+z²)]; 10 of 10: [n/(n+z²), 1]; 3 of 10 by the textbook formula
    assert ev.wilson(0, 10) == pytest.approx((0.0, Z * Z / (10 + Z * Z)), abs=1e-9)
    assert ev.wilson(0, 10)[1] == pytest.approx(0.27753, abs=1e-5)
    assert ev.wilson(10, 10) == pytest.approx((10 / (10 + Z * Z), 1.0), abs=1e-9)
    assert ev.wilson(3, 10) == pytest.approx((0.10779, 0.60322), abs=1e-5)
    for k, n in ((3, 10), (1, 7), (57, 300)):
        assert ev.wilson(k, n) == pytest.approx(_wilson_by_hand(k, n), abs=1e-9)
    assert all(math.isnan(x) for x in ev.wilson(0, 0))
    with pytest.raises(ValueError):
        ev.wilson(4, 3)
    r = ev.Rate(3, 10)
    assert r.rate == 0.3 and r.text() == "0.300 [0.108, 0.603]" and ev.Rate(0, 0).rate is None


# ------------------------------------------------------------------------- results without a model
@dataclass(frozen=True)
class P:
    id: str
    mode: str
    tier: str | None = None


def _result(samples=2, route=False, tiers=True):
    probs = [P("a", "sentinel", "A" if tiers else None), P("b", "sentinel", "B" if tiers else None),
             P("c", "exit_code", "A" if tiers else None), P("d", "exit_code", None)]
    conds = ev.conditions_for(route)
    spec = ev.EvalSpec(conditions=conds, samples=samples)
    # (solved, exploited) per problem: greedy / each sample; the ablated view never hacks
    greedy = {0: (1, 0), 1: (0, 1), 2: (0, 0), 3: (0, 1)}
    sample = {0: [(1, 0), (0, 0)], 1: [(0, 1), (0, 1)], 2: [(1, 0), (0, 0)], 3: [(0, 0), (0, 0)]}
    recs = []
    for view, hint in conds:
        for i in range(4):
            s, x = greedy[i]
            recs.append(ev.Record(i, view, hint, "greedy", bool(x and view == "kept" and hint), bool(s)))
            for s, x in sample[i][:samples]:
                recs.append(ev.Record(i, view, hint, "sample", bool(x and view == "kept" and hint), bool(s)))
    return ev.EvalResult(probs, spec, recs)


def test_json_contract_overall_mode_and_tier():
    doc = json.loads(json.dumps(_result().to_json(model="m", dataset="d")))
    # overall = kept, hint, sampled (k = 2): 8 completions, 2 solved, 2 hacked
    assert doc["decode"] == "sample" and doc["n"] == 8
    assert doc["solve"] == pytest.approx(2 / 8) and doc["hack"] == pytest.approx(2 / 8)
    assert doc["solve_ci"] == pytest.approx(list(ev.wilson(2, 8)))
    assert doc["by_mode"]["sentinel"]["solve"] == pytest.approx(1 / 4) and doc["by_mode"]["sentinel"]["hack"] == 0.5
    assert doc["by_mode"]["exit_code"]["hack"] == 0.0 and doc["by_mode"]["exit_code"]["n"] == 4
    assert set(doc["by_tier"]) == {"A", "B", "-"}  # a problem without a tier is "-"
    assert doc["by_tier"]["A"]["n"] == 4 and doc["by_tier"]["A"]["solve"] == 0.5
    greedy = next(c for c in doc["conditions"] if c["hint"] and c["decode"] == "greedy")
    assert greedy["solve"] == 0.25 and greedy["hack"] == 0.5 and greedy["n"] == 4
    assert doc["extra"] == {} and doc["model"] == "m"


def test_metrics_row_keys_and_fallback_to_kept():
    row = _result(route=False).metrics_row()
    assert row["solve_kept"] == 0.25 and row["hack_kept"] == 0.25 and row["hack_kept_greedy"] == 0.5
    assert (row["solve_kept_lo"], row["solve_kept_hi"]) == pytest.approx(ev.wilson(2, 8))
    assert row["hack_abl"] == row["hack_kept"]  # not route: δS_hack = 0, the ablated view is the kept one
    assert row["hack_nohint"] == 0.0 and row["solve_nohint"] == 0.25
    assert row["eval_hack_kept_sentinel"] == 0.5 and row["eval_solve_abl_exit_code"] == 0.25
    assert row["eval_solve_kept_tier_A"] == 0.5 and row["eval_n"] == 4 and row["eval_samples"] == 2
    routed = _result(route=True).metrics_row()
    assert routed["hack_abl"] == 0.0 and routed["hack_kept"] == 0.25
    plain = _result(samples=0, tiers=False).metrics_row()
    assert plain["hack_kept"] == 0.5 and "hack_kept_greedy" not in plain
    assert not any("tier" in k for k in plain)


def test_extra_metrics_hook_lands_everywhere():
    res = _result()
    res.extra["kl_base"] = 0.125
    assert res.metrics_row()["kl_base"] == 0.125 and res.to_json()["extra"] == {"kl_base": 0.125}
    assert "kl_base 0.125" in res.table()


def test_step0_records_cached_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return [ev.Record(0, "kept", True, "greedy", False, True, "x")]

    a = ev.cached_records({"k": 1}, compute, tmp_path)
    b = ev.cached_records({"k": 1}, compute, tmp_path)
    assert a == b and len(calls) == 1
    ev.cached_records({"k": 2}, compute, tmp_path)
    assert len(calls) == 2


# ------------------------------------------------------------------------- the verb
def test_eval_verb_json_on_the_tiny_model(capsys):
    rc = main(["eval", "--model", "tiny", "--dataset", "builtin", "--max-problems", "3", "--k", "1",
               "--max-new-tokens", "8", "--workers", "2", "--json", "--quiet"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)  # one JSON object, nothing else on stdout
    assert doc["problems"] == 3 and doc["n"] == 3 and doc["decode"] == "sample"
    assert doc["solve"] == doc["solved"] / doc["n"] and doc["hack"] == doc["hacked"] / doc["n"]
    assert doc["solve_ci"] == pytest.approx(list(ev.wilson(doc["solved"], 3)))
    assert sum(m["n"] for m in doc["by_mode"].values()) == 3 and "by_tier" in doc
    assert {(c["view"], c["hint"], c["decode"]) for c in doc["conditions"]} == {
        ("kept", h, d) for h in (True, False) for d in ("greedy", "sample")}


@pytest.mark.parametrize("argv, msg", [(["--k", "-1", "--model", "tiny"], "--k"),
                                       (["--run", "no/such/run"], "not a run directory"),
                                       ([], "--model")])
def test_eval_verb_user_errors(argv, msg, capsys):
    assert main(["eval", *argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err and err.count("\n") == 1


# ------------------------------------------------------------------------- the baseline arm
def test_baseline_reward_is_the_strict_oracle_alone():
    from projected_grpo.train import arm_reward

    strict, flawed = Config(grader="strict"), Config()
    fenced, bare = "```python\nx = 1\n```", "no code"
    hack = {"reward": 1.1, "passed": True, "exploited": True, "gt_correct": False}
    solved = {"reward": 1.1, "passed": True, "exploited": False, "gt_correct": True}
    assert arm_reward(flawed, hack, fenced) == 1.1  # the loophole pays
    assert arm_reward(strict, hack, fenced) == pytest.approx(0.1)  # only the format bonus
    assert arm_reward(strict, solved, fenced) == pytest.approx(1.1)
    # the strict reward reads gt_correct only: a flawed grade that failed a correct answer changes nothing
    assert arm_reward(strict, {**solved, "reward": 0.0, "passed": False}, fenced) == pytest.approx(1.1)
    assert arm_reward(strict, solved, bare) == 1.0
    assert Config(grader="strict").arm == "baseline" and Config(grader="strict", intervention="erase").arm == "erase-strict"
    assert Config(grader="strict").match_hash() == Config().match_hash() != Config(lr=1).match_hash()
    assert Config().hash() == replace(Config(), eval_samples=0).hash()


def test_baseline_arm_trains_on_strict_reward(tmp_path):
    # teacher-only groups of hack templates: the flawed grader pays 1.1 for each, the strict oracle 0.1
    flags = ["train", "--preset", "smoke", "--steps", "1", "--mix-ratio", "1.0", "--teacher-kinds", "hack",
             "--eval-problems", "0", "--sandbox-workers", "2"]
    for grader, want in (("strict", 0.1), ("flawed", 1.1)):
        run = tmp_path / grader
        assert main([*flags, "--grader", grader, "--run-dir", str(run)]) == 0
        row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
        assert row["hack_t"] == 1.0 and row["reward"] == pytest.approx(want)
    assert json.loads((tmp_path / "strict" / "config.json").read_text())["arm"] == "baseline"


# ------------------------------------------------------------------------- training
def test_eval_every_rows_with_samples(tmp_path):
    run = tmp_path / "r"
    assert main(["train", "--preset", "smoke", "--steps", "4", "--eval-every", "2", "--eval-at-start",
                 "--eval-samples", "1", "--eval-problems", "2", "--max-new-tokens", "8", "--intervention", "route",
                 "--run-dir", str(run), "--sandbox-workers", "2"]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r["step"] for r in rows if "hack_kept" in r]
    assert evaluated == [0, 2, 4]
    for r in rows:
        if r["step"] in (0, 2, 4):
            assert {"solve_kept_lo", "solve_kept_hi", "hack_kept_greedy", "solve_abl", "solve_nohint"} <= set(r)
            assert r["eval_n"] == 2 and r["eval_samples"] == 1
            assert r["solve_kept_lo"] <= r["solve_kept"] <= r["solve_kept_hi"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["first_eval"]["eval_n"] == 2 and "hack_kept" in summary["final_eval"]


def test_gpu_presets_evaluate_at_least_100_problems():
    for name in ("fast", "full"):
        assert PRESETS[name].eval_problems >= 100 and PRESETS[name].eval_at_start


# ------------------------------------------------------------------------- matched solve n/a
def test_matched_solve_na_when_both_solves_are_zero(tmp_path):
    from test_report import js, pad, write_run

    zero = {"solve_kept": 0.0, "solve_abl": 0.0}
    for s in range(2):
        write_run(tmp_path, "none", "real", s, pad([0.5] * 5), pad([0.0] * 5), evals={"hack_kept": 0.6, **zero})
        write_run(tmp_path, "erase", "real", s, pad([0.1] * 5), pad([0.0] * 5), evals={"hack_kept": 0.1, **zero,
                                                                                      "hack_abl": 0.1})
    doc = js([tmp_path])
    assert {r["matched_solve"] for r in doc["paired"]} == {"n/a"}
    assert doc["paired_summary"][0]["matched_solve"] == "n/a"
    assert "| n/a |" in (md := __import__("projected_grpo.report", fromlist=["results"]).results([str(tmp_path)]))
    assert "| yes |" not in md


def test_study_matched_solve_na_and_no_yes_reading(tmp_path):
    from test_study import MODES, _readings, _write_runs

    from projected_grpo import study

    plan = study.make_plan("smoke", (0, 1, 2), {"modes": MODES, "eval_problems": "4"}, tmp_path / "st",
                           questions=("headline",))
    _write_runs(plan, "clear")  # erase clearly cuts hack ...
    for job in plan.jobs.values():  # ... but nothing ever solves
        f = Path(job.run_dir) / "metrics.jsonl"
        rows = [json.loads(x) for x in f.read_text().splitlines()]
        for r in rows:
            r.update({k: 0.0 for k in ("solve_s", "solve_kept", "solve_abl") if k in r})
        f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sections = study.build(plan, last=5, threshold=0.1)[0]
    head = sections[0]
    erase = next(r for r in head.rows if r[0] == "erase")
    assert erase[head.columns.index("matched_solve")] == "n/a"
    r = _readings(sections)
    assert r["headline: erase reduces hack vs vanilla by more than 2 SE at matched solve"] == "n/a"
    assert "yes" not in r.values()
