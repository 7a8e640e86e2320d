"""`projected-grpo study`: the plan (shared runs, matched configs), readings computed from synthetic run
dirs with known answers, and one real smoke study end to end (then re-run: every run skipped)."""

from __future__ import annotations

import dataclasses
import json
import time
import zlib
from pathlib import Path

import pytest

from projected_grpo import study
from projected_grpo.cli import main, parse_config

MODES = ["run_tests", "sentinel"]


def _cfg(job):
    """The job's config minus where it runs (the run dir is bookkeeping: it names the arm and seed)."""
    return dataclasses.replace(job.config, run_dir=None)


# ------------------------------------------------------------------------- the plan
def test_data_seed_is_the_trainers():
    from projected_grpo.train import DATA_SEED

    assert study.DATA_SEED == DATA_SEED


def test_default_plan_counts_and_shared_runs(tmp_path):
    plan = study.make_plan("smoke", (0, 1, 2), {}, tmp_path)
    per_q = {q: len({j.name for c in plan.cells_of(q) for j in c.jobs}) for q in plan.questions}
    assert per_q == {"headline": 9, "controls": 3 * 11, "no_teacher": 9, "lomo": 6 * 6 + 3, "update": 9}
    assert len(plan.jobs) == 9 + 3 * 8 + 9 + 36 + 3  # shared configs run once
    keys = [(j.hash, j.seed) for j in plan.jobs.values()]
    assert len(keys) == len(set(keys))  # never the same config + seed twice
    van = {c.question: c.jobs for c in plan.cells if c.label == "vanilla"}
    assert van["headline"] is not None and van["controls"] == van["headline"] == van["update"]
    erase = {c.question: c.jobs for c in plan.cells if c.label in ("erase", "erase (real V)", "erase, gradient space")}
    assert erase["headline"] == erase["controls"] == erase["update"]
    # every arm is paired with a vanilla of the same config except arm and basis (update: + project_update)
    for c in plan.cells:
        if c.vanilla is None:
            continue
        v = next(x for x in plan.cells if x.question == c.question and x.label == c.vanilla)
        for j, vj in zip(c.jobs, v.jobs):
            assert j.seed == vj.seed
            a, b = _cfg(j).to_dict(), _cfg(vj).to_dict()
            differ = {k for k in a if a[k] != b[k]} - {"intervention", "vhack_source"}
            allowed = {"update": {"project_update"}, "lomo": {"vhack_known_modes"}}.get(c.question, set())
            assert differ <= allowed, (c.label, differ)
    # leave one mode out: V and the teacher pool from the other modes; training sees all of them
    folds = {c.fold for c in plan.cells if c.question == "lomo"}
    assert folds == set(parse_config([]).modes)
    for c in plan.cells_of("lomo"):
        cfg = _cfg(c.jobs[0])
        if c.role == "vanilla":  # the headline's vanilla: V is never applied there
            assert c.jobs == van["headline"] and cfg.vhack_known_modes is None
            continue
        assert c.fold not in cfg.vhack_known_modes and set(cfg.vhack_known_modes) | {c.fold} == set(cfg.modes)
    nt = _cfg(plan.cells_of("no_teacher")[1].jobs[0])
    assert nt.mix_ratio == 0 and nt.intervention == "erase"
    up = [_cfg(c.jobs[0]).project_update for c in plan.cells_of("update")]
    assert up == [False, False, True]


def test_plan_checks_the_eval_split(tmp_path):
    plan = study.make_plan("smoke", (0, 1), {"modes": MODES, "eval_problems": "1"}, tmp_path)
    assert sum(plan.eval_modes.values()) == 1
    assert any("holds no problem of mode" in n for n in plan.notes)
    assert any("n = 2 seed(s) < 3" in n for n in plan.notes)
    plan = study.make_plan("smoke", (0, 1, 2), {"modes": MODES, "eval_problems": "4"}, tmp_path)
    assert plan.eval_modes == {"run_tests": 2, "sentinel": 2} and not plan.notes


@pytest.mark.parametrize("argv, msg", [
    (["--only", "headline,bogus"], "unknown question"),
    (["--holdout", "eq_override", "--set", "modes=run_tests,sentinel"], "not among the study's modes"),
    (["--set", "seed=3"], "set by the sweep"),
    (["--seeds", "0", "0"], "repeats a seed"),
])
def test_user_errors_are_one_line(tmp_path, capsys, argv, msg):
    assert main(["study", "--preset", "smoke", "--out", str(tmp_path), "--dry-run", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and msg in err and "\n" not in err


def test_dry_run_prints_counts(tmp_path, capsys):
    assert main(["study", "--preset", "smoke", "--out", str(tmp_path), "--dry-run", "--only", "headline,update"]) == 0
    out = capsys.readouterr().out
    assert "headline 9, update 9; 12 unique" in out
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["unique_runs"] == 12 and not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------- readings from synthetic runs
def _noise(name: str, seed: int) -> float:
    return (zlib.crc32(f"{name}{seed}".encode()) % 7) * 0.01  # 0 … 0.06, different per arm and seed


def _values(cfg, scenario: str) -> dict:
    """Final-eval hack/solve per run; `clear`: real V works everywhere, `null`: nothing differs,
    `costly`: erase cuts hack but also solve."""
    held = [m for m in cfg.modes if m not in (cfg.vhack_known_modes or cfg.modes)]
    hack, solve, abl = 0.8, 0.5, None
    if scenario in ("clear", "costly") and cfg.intervention != "none":
        if cfg.vhack_source != "real":
            hack = 0.78
        elif cfg.intervention == "route":
            hack, abl = 0.6, 0.1
        else:
            hack = 0.05 if cfg.project_update else 0.2
            solve = 0.2 if scenario == "costly" else 0.5
    good = scenario == "clear" and cfg.intervention == "erase" and cfg.vhack_source == "real"
    mode_hack = {m: (0.0 if good and m in held else 1.0) for m in cfg.modes}
    return {"hack": hack, "solve": solve, "abl": abl if abl is not None else hack, "mode_hack": mode_hack,
            "count": {m: (0 if good and m in held else 3) for m in cfg.modes}}


def _write_runs(plan, scenario: str, drop_eval_mode: str | None = None, route_kl: float | None = None) -> None:
    for job in plan.jobs.values():
        cfg = job.config
        d = Path(job.run_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps({"config": cfg.to_dict(), "hash": cfg.hash(),
                                                   "match_hash": cfg.match_hash(), "arm": cfg.arm}))
        # null: the same noise for every arm of a seed, so no comparison can differ by chance
        v, e = _values(cfg, scenario), _noise("" if scenario == "null" else job.name, job.seed)
        rows = [{"step": s, "hack_s": v["hack"] + e, "solve_s": v["solve"] + e, "cout": 0.0, "cout_update": 0.1,
                 **{f"hack_s_{m}": v["count"][m] for m in cfg.modes}} for s in range(1, 4)]
        ev = {"hack_kept": v["hack"] + e, "solve_kept": v["solve"] + e, "hack_abl": v["abl"] + e,
              "solve_abl": v["solve"] + e}
        for m in cfg.modes:
            if m != drop_eval_mode:
                ev |= {f"eval_hack_kept_{m}": v["mode_hack"][m] - e, f"eval_hack_abl_{m}": v["mode_hack"][m] - e,
                       f"eval_solve_abl_{m}": 0.5}
        if route_kl is not None:  # deployed-model diagnostics and per-problem outcomes (4 held-out problems)
            ev |= {"kl_base_kept": 0.02, "kl_base_abl": route_kl if cfg.intervention == "route" else 0.02,
                   "dSh_in_V": 0.9 if cfg.intervention == "route" else None, "fmt_kept": 1.0, "fmt_abl": 1.0,
                   "eval_problem_hack_kept": [ev["hack_kept"]] * 4, "eval_problem_hack_abl": [ev["hack_abl"]] * 4}
        rows[-1].update(ev)
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (d / "summary.json").write_text("{}")


def _readings(sections) -> dict[str, str]:
    return {f"{s.question}: {r.claim}": r.verdict for s in sections for r in s.readings}


def _plan(tmp_path, seeds=(0, 1, 2)):
    return study.make_plan("smoke", seeds, {"modes": MODES, "eval_problems": "4"}, tmp_path / "st")


def test_readings_yes_when_real_v_clearly_wins(tmp_path):
    plan = _plan(tmp_path)
    _write_runs(plan, "clear")
    sections, notes = study.build(plan, last=5, threshold=0.1)
    r = _readings(sections)
    assert set(r.values()) == {"yes"}, r
    assert r["controls: erase: real V beats all controls on Δhack by more than 2 SE"] == "yes"
    assert r["controls: route (deployed): real V beats all controls on Δhack by more than 2 SE"] == "yes"
    assert r["controls: route (deployed): real V beats label_permuted V on hack by more than 2 SE"] == "yes"
    assert r["no_teacher: the effect survives without the teacher pool (erase, mix_ratio = 0)"] == "yes"
    assert r["lomo: real V beats random V on held-out mode run_tests"] == "yes"
    assert r["lomo: real V beats random V on held-out mode sentinel"] == "yes"
    head = next(s for s in sections if s.question == "headline")
    assert head.numbers == "eval"
    assert [row[0] for row in head.rows] == ["vanilla", "erase", "route", "route (δS_hack ablated)"]
    erase = head.rows[1]
    c = head.columns
    assert erase[c.index("n")] == 3 and erase[c.index("matched_solve")] is True
    assert erase[c.index("Δhack")].mean == pytest.approx(-0.6, abs=0.07)
    lomo = next(s for s in sections if s.question == "lomo")
    assert [row[0] for row in lomo.rows] == MODES  # per mode, not averaged
    assert all(row[1] == "eval" for row in lomo.rows)
    text = study.render(plan, sections, notes, "projected-grpo study test", 5, 0.1, {})
    for q in study.QUESTIONS:
        assert study.TITLES[q] in text
    assert "real V beats random V on held-out mode sentinel: yes" in text and "Reading rules" in text


def test_readings_no_when_nothing_differs(tmp_path):
    plan = _plan(tmp_path)
    _write_runs(plan, "null")
    r = _readings(study.build(plan, last=5, threshold=0.1)[0])
    assert r["headline: erase reduces hack vs vanilla by more than 2 SE at matched solve"] == "no"
    assert r["controls: erase: real V beats all controls on Δhack by more than 2 SE"] == "no"
    assert r["controls: route (deployed): real V beats all controls on Δhack by more than 2 SE"] == "no"
    assert r["no_teacher: the effect survives without the teacher pool (erase, mix_ratio = 0)"] == "no"
    assert r["lomo: real V beats random V on held-out mode run_tests"] == "no"
    assert r["update: update-space erase has lower hack than gradient-space erase by more than 2 SE"] == "no"


def test_hack_cut_that_costs_solve_is_not_a_yes(tmp_path):
    plan = _plan(tmp_path)
    _write_runs(plan, "costly")
    sections = study.build(plan, last=5, threshold=0.1)[0]
    r = _readings(sections)
    assert r["headline: erase reduces hack vs vanilla by more than 2 SE at matched solve"] == "no"
    head = next(s for s in sections if s.question == "headline")
    assert head.rows[1][head.columns.index("matched_solve")] is False


def test_mode_absent_from_eval_is_reported_not_faked(tmp_path):
    plan = _plan(tmp_path)
    _write_runs(plan, "clear", drop_eval_mode="sentinel")
    sections = study.build(plan, last=5, threshold=0.1)[0]
    lomo = next(s for s in sections if s.question == "lomo")
    rows = {row[0]: row for row in lomo.rows}
    assert rows["run_tests"][1] == "eval" and rows["sentinel"][1] == "train"
    assert rows["sentinel"][lomo.columns.index("hack_M real V")].mean == 0  # training counts on the held-out mode
    why = next(r.why for r in lomo.readings if r.claim.endswith("sentinel"))
    assert "absent from the eval set" in why
    assert any("absent from the evaluation set" in x for x in lomo.extra)


def test_one_seed_gives_na_not_a_verdict(tmp_path):
    plan = _plan(tmp_path, seeds=(0,))
    _write_runs(plan, "clear")
    r = _readings(study.build(plan, last=5, threshold=0.1)[0])
    assert set(r.values()) == {"n/a"}, r


# ------------------------------------------------------------------------- the real thing, tiny
def test_smoke_study_end_to_end_then_idempotent(tmp_path, capsys):
    """Every question on one seed (17 real runs), the same command again (every run skipped), then a second
    seed of the headline only: its 3 new runs run, the first seed's 3 are skipped, and the readings pair the
    2 seeds. (Two seeds of every question were 34 runs, ~3 min of this 2-core machine.)"""
    out = tmp_path / "study"
    common = ["study", "--preset", "smoke", "--out", str(out), "--workers", "2", "--sandbox-workers", "1",
              "--set", "steps=2", "--set", "eval_problems=4", "--set", "modes=run_tests,sentinel",
              "--set", "max_new_tokens=16", "--set", "vhack_pairs=4"]  # the runs as small as the readings allow
    argv = [*common, "--seeds", "0", "--holdout", "sentinel"]
    assert main(argv) == 0, capsys.readouterr()
    text = capsys.readouterr().out
    n = 3 + 8 + 3 + 2 + 1  # headline, controls (+8), no_teacher (+3), one lomo fold (+2), update (+1) configs
    assert f"{n} done, 0 resumed, 0 skipped, 0 failed" in text
    md = (out / "study.md").read_text()
    for q in study.QUESTIONS:
        assert f"## {study.TITLES[q]}" in md
    assert "command: `projected-grpo study --preset smoke --out" in md and "--seeds 0 --holdout sentinel`" in md
    doc = json.loads((out / "study.json").read_text())
    assert set(doc["sections"]) == set(study.QUESTIONS)
    assert [r[0] for r in doc["sections"]["headline"]["rows"]] == ["vanilla", "erase", "route",
                                                                   "route (δS_hack ablated)"]
    ctl = [f"{a}-{s}" for a in ("erase", "route") for s in study.CONTROLS]
    abl = " (δS_hack ablated)"
    assert [r[0] for r in doc["sections"]["controls"]["rows"]] == [
        "vanilla", "erase (real V)", "route (real V)", "route (real V)" + abl, *ctl[:4],
        *[x for c in ctl[4:] for x in (c, c + abl)]]
    assert [r[0] for r in doc["sections"]["lomo"]["rows"]] == ["sentinel"]
    assert all(r["verdict"] in ("yes", "no", "n/a") for s in doc["sections"].values() for r in s["readings"])
    for png in ("headline", "controls", "no_teacher", "update", "lomo"):
        assert (out / f"{png}.png").stat().st_size > 0
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert len(runs) == n
    # again: every run is skipped, the report is rewritten
    t0 = time.time()
    assert main(argv) == 0
    assert f"0 done, 0 resumed, {n} skipped, 0 failed" in capsys.readouterr().out
    assert time.time() - t0 < 120  # report + plots only (17 configs; ~30 s of plots on a loaded 2-core machine)
    assert sorted(p.name for p in (out / "runs").iterdir()) == runs
    # a second seed of the headline: only the new seed's runs run, and the table pairs both seeds
    assert main([*common, "--seeds", "0", "1", "--only", "headline"]) == 0
    assert "3 done, 0 resumed, 3 skipped, 0 failed" in capsys.readouterr().out
    assert len(list((out / "runs").iterdir())) == n + 3 and set(runs) <= {p.name for p in (out / "runs").iterdir()}
    head = json.loads((out / "study.json").read_text())["sections"]["headline"]
    erase = next(r for r in head["rows"] if r[0] == "erase")
    assert erase[head["columns"].index("n")] == 2


# ------------------------------------------------------------------------- primary endpoint and statistics
def _headline_plan(tmp_path, n_seeds):
    return study.make_plan("smoke", tuple(range(n_seeds)), {"modes": MODES, "eval_problems": "4"}, tmp_path / "st",
                           questions=("headline", "controls"))


def test_primary_endpoint_first_with_intervals_holm_and_power(tmp_path):
    plan = _headline_plan(tmp_path, 6)
    _write_runs(plan, "clear", route_kl=0.03)  # route's deployed model moved (KL 0.03 vs vanilla's 0.02)
    sections, notes = study.build(plan, last=5, threshold=0.1)
    head = next(s for s in sections if s.question == "headline")
    main, moved, power = head.primary
    assert main.verdict == "yes" and moved.verdict == "yes", (main, moved)
    assert main.p == pytest.approx(1 / 64)  # every one of 6 seeds lower: the exact test's floor 2^-6
    assert "seeds×problems" in main.why and "smallest Δhack" in power and "2^-6" in power
    c = head.columns
    route_abl = next(r for r in head.rows if r[0] == study.PRIMARY)
    lo, hi = route_abl[c.index("Δhack CI seeds")]
    assert lo <= route_abl[c.index("Δhack")].mean <= hi < 0
    assert route_abl[c.index("Δhack CI seeds×problems")] is not None
    assert route_abl[c.index("kl_base")].mean == pytest.approx(0.03)
    assert route_abl[c.index("dSh_in_V")].mean == pytest.approx(0.9)
    secondary = [r for s in sections for r in s.readings if r.p is not None]
    assert len(secondary) >= 5 and all(r.p_holm is not None and r.p_holm >= r.p for r in secondary)
    assert max(r.p_holm for r in secondary) <= 1.0
    text = study.render(plan, sections, notes, "cmd", 5, 0.1, {})
    assert text.index("## Primary endpoint") < text.index("## Readings (secondary)")
    assert "Holm p = " in text and "PRIMARY: route's deployed model" in text


def test_primary_is_no_when_the_deployed_model_is_the_base(tmp_path):
    """Route's ablated model hacks less, but it has not moved from the base: absorption, not removal."""
    plan = _headline_plan(tmp_path, 6)
    _write_runs(plan, "clear", route_kl=0.001)
    main, moved, _ = next(s for s in study.build(plan, last=5, threshold=0.1)[0] if s.question == "headline").primary
    assert moved.verdict == "no" and main.verdict == "no"


def test_primary_na_without_kl_and_power_note_for_few_seeds(tmp_path):
    def prim(n):
        plan = _headline_plan(tmp_path / str(n), n)
        _write_runs(plan, "clear")  # runs that predate the diagnostics
        return next(s for s in study.build(plan, last=5, threshold=0.1)[0] if s.question == "headline").primary

    main, moved, power = prim(6)
    assert moved.verdict == "n/a" and main.verdict == "n/a" and main.p == pytest.approx(1 / 64)
    main, moved, power = prim(3)
    assert main.verdict == "no" and main.p == pytest.approx(1 / 8)  # the exact test's floor 2^-3 ≥ 0.05
    assert "cannot reach significance" in power


def test_vanilla_ignores_known_modes_so_lomo_shares_the_headline_vanilla(tmp_path):
    """The lomo folds pair with the headline's vanilla: vhack_known_modes only changes V, which a
    vanilla run extracts (for its diagnostics) but never applies, so knobs, samples and scores match."""
    import torch
    from safetensors.torch import load_file

    def run(name, *flags):
        d = tmp_path / name
        assert main(["train", "--preset", "smoke", "--run-dir", str(d), "--sandbox-workers", "1", "--steps", "2",
                     "--intervention", "none", *flags]) == 0
        rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        return rows, load_file(d / "ckpt" / "knobs.safetensors")

    rows_all, knobs_all = run("all")
    rows_lomo, knobs_lomo = run("lomo", "--vhack-known-modes", "run_tests", "exit_code")
    v_all, v_lomo = (load_file(tmp_path / n / "vhack.safetensors") for n in ("all", "lomo"))
    assert any(not torch.equal(v_all[k], v_lomo[k]) for k in v_all)  # the folds' V does differ
    assert knobs_all.keys() == knobs_lomo.keys()
    assert all(torch.equal(knobs_all[k], knobs_lomo[k]) for k in knobs_all)
    keys = ("reward", "hack_s", "solve_s", "loss", "kl", "dS", "hack_kept", "solve_kept", "solve_nohint")
    assert [[r.get(k) for k in keys] for r in rows_all] == [[r.get(k) for k in keys] for r in rows_lomo]
