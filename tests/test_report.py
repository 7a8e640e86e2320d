"""Tables and plots from synthetic run directories with hand-computed numbers."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest

from projected_grpo import report
from projected_grpo.report import ReportError, load_run, results

MATCH = "m000000001"


def write_run(root: Path, intervention: str, source: str, seed: int, hack: list[float], solve: list[float],
              match: str = MATCH, evals: dict | None = None, summary: bool = True, extra: dict | None = None,
              name: str | None = None) -> Path:
    """A run dir whose train rates are `hack`/`solve` per step; `evals` lands on the last row."""
    arm = intervention if source == "real" else f"{intervention}-{source}"
    d = root / (name or f"{arm}-s{seed}-{match[:4]}")
    d.mkdir(parents=True)
    cfg = {"intervention": intervention, "vhack_source": source, "seed": seed, "steps": len(hack)}
    (d / "config.json").write_text(json.dumps({
        "config": cfg, "hash": f"{match[-4:]}{arm}"[:10], "match_hash": match, "arm": arm,
        "versions": {}, "command": "test", "created": "2025-01-01T00:00:00"}))
    rows = []
    for i, (h, s) in enumerate(zip(hack, solve)):
        row = {"step": i + 1, "reward": h + s, "hack_s": h, "solve_s": s, "cin_s": 0.5, "cin_t": None, "cout": 0.0,
               "cout_update": 0.1, "dS": 1.0, "dSh": 0.3 * i if intervention == "route" else 0.0, **(extra or {})}
        rows.append(row)
    if evals:
        rows[-1].update(evals)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if summary:
        (d / "summary.json").write_text(json.dumps({"ok": True}))
    return d


def pad(last5: list[float]) -> list[float]:
    """Two early steps far from the tail, so a wrong window changes the mean."""
    return [0.99, 0.99, *last5]


def js(paths, **kw) -> dict:
    return json.loads(results([str(p) for p in paths], fmt="json", **kw))


def se(xs: list[float]) -> float:
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))


# ------------------------------------------------------------------------- loading
def test_load_run_keeps_last_row_per_step(tmp_path):
    d = write_run(tmp_path, "erase", "real", 3, pad([0.1] * 5), pad([0.2] * 5))
    with open(d / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 7, "hack_s": 0.7, "solve_s": 0.2}) + "\n")
    run = load_run(d)
    assert (run.arm, run.seed, run.match_hash, run.complete) == ("erase", 3, MATCH, True)
    assert [r["step"] for r in run.rows] == list(range(1, 8))
    assert run.rows[-1]["hack_s"] == 0.7
    assert run.last_mean("hack_s", 5) == pytest.approx((0.1 * 4 + 0.7) / 5)


def test_malformed_inputs_raise_report_error(tmp_path):
    with pytest.raises(ReportError, match="not a run directory"):
        load_run(tmp_path)
    d = write_run(tmp_path, "none", "real", 0, [0.1, 0.2], [0.1, 0.2])
    (d / "metrics.jsonl").write_text('{"step": 0}\n{"step": 1, oops}\n{"step": 2}\n')
    with pytest.raises(ReportError, match=r"metrics.jsonl: malformed JSON at line 2"):
        load_run(d)
    (d / "metrics.jsonl").write_text('{"step": 0}\n')
    (d / "config.json").write_text('{"config": {},\n "hash": }')
    with pytest.raises(ReportError, match=r"config.json: malformed JSON at line 2"):
        load_run(d)
    (d / "config.json").write_text('{"config": {"seed": 0}}')
    with pytest.raises(ReportError, match="missing 'hash'"):
        load_run(d)
    with pytest.raises(ReportError, match="no such file"):
        results([str(tmp_path / "nope")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReportError, match="holds none"):
        results([str(empty)])


def test_partial_last_line_of_killed_run_is_skipped(tmp_path):
    d = write_run(tmp_path, "none", "real", 0, [0.1, 0.2], [0.1, 0.2], summary=False)
    with open(d / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "hack_')
    run = load_run(d)
    assert len(run.rows) == 2 and not run.complete
    assert any("partial" in n for n in run.notes)


# ------------------------------------------------------------------------- tables
@pytest.fixture
def sweep(tmp_path) -> Path:
    """vanilla, erase and erase-random over seeds 0..2, plus a route run per seed with evaluations."""
    root = tmp_path / "sweep"
    van_h, van_s = [0.5, 0.6, 0.7], [0.30, 0.40, 0.50]
    er_h, er_s = [0.2, 0.2, 0.4], [0.25, 0.45, 0.20]
    for s in range(3):
        ev_v = {"hack_kept": 0.8 - 0.1 * s, "solve_kept": 0.3, "hack_abl": 0.8 - 0.1 * s, "solve_abl": 0.3}
        ev_r = {"hack_kept": 0.7, "solve_kept": 0.35 + 0.05 * s, "hack_abl": 0.1 * s, "solve_abl": 0.25}
        # last-5 tails whose means are van_h[s] etc. (tail = x-0.1, x-0.05, x, x+0.05, x+0.1)
        tail = lambda x: [x - 0.1, x - 0.05, x, x + 0.05, x + 0.1]  # noqa: E731
        write_run(root, "none", "real", s, pad(tail(van_h[s])), pad(tail(van_s[s])), evals=ev_v)
        write_run(root, "erase", "real", s, pad(tail(er_h[s])), pad(tail(er_s[s])))
        write_run(root, "erase", "random", s, pad([0.6] * 5), pad([0.4] * 5))
        write_run(root, "route", "real", s, pad([0.65] * 5), pad([0.4] * 5), evals=ev_r)
    return root


def test_per_run_and_grouped_means_and_se(sweep):
    doc = js([sweep])
    assert len(doc["runs"]) == 12
    erase0 = next(r for r in doc["runs"] if r["arm"] == "erase" and r["seed"] == 0)
    assert erase0["hack_s"] == pytest.approx(0.2) and erase0["solve_s"] == pytest.approx(0.25)
    assert erase0["cin_t"] is None and erase0["hack_kept"] is None and erase0["steps"] == "7/7"
    assert erase0["last_n"] == 5  # the N actually averaged
    assert js([sweep], last=50)["runs"][0]["last_n"] == 7  # a run with fewer steps: all of them, and it says so
    groups = {g["arm"]: g for g in doc["groups"]}
    assert set(groups) == {"none", "erase", "erase-random", "route"}
    g = groups["erase"]
    assert g["n"] == 3 and g["seeds"] == "0,1,2"
    assert g["hack_s"]["mean"] == pytest.approx(0.8 / 3)
    assert g["hack_s"]["se"] == pytest.approx(se([0.2, 0.2, 0.4]))
    assert g["hack_s"]["se"] == pytest.approx(0.0666667, abs=1e-6)  # by hand: sd 0.11547 / √3
    assert g["solve_s"]["mean"] == pytest.approx(0.3)
    assert g["cin_t"] is None and g["cin_s"]["se"] == pytest.approx(0.0)
    assert groups["route"]["hack_abl"]["mean"] == pytest.approx(0.1)


def test_paired_deltas_by_hand(sweep):
    doc = js([sweep])
    summ = {(r["arm"], r["view"]): r for r in doc["paired_summary"]}
    assert set(summ) == {("erase", "kept"), ("erase-random", "kept"), ("route", "kept"), ("route", "ablated")}
    e = summ[("erase", "kept")]
    assert e["numbers"] == "train" and e["n"] == 3  # erase has no evaluation → train rates for both sides
    # Δhack = [0.2-0.5, 0.2-0.6, 0.4-0.7] = [-0.3, -0.4, -0.3]: mean -1/3, SE = 1/30
    assert e["Δhack"]["mean"] == pytest.approx(-1 / 3)
    assert e["Δhack"]["se"] == pytest.approx(1 / 30)
    # Δsolve = [-0.05, +0.05, -0.30]: mean -0.1, all |Δ| and |mean| within 0.10 except seed 2
    assert e["Δsolve"]["mean"] == pytest.approx(-0.1)
    assert e["Δsolve"]["se"] == pytest.approx(se([-0.05, 0.05, -0.30]))
    assert e["matched_solve"] is True and e["seeds_matched"] == "2/3"
    per = [r for r in doc["paired"] if r["arm"] == "erase"]
    assert [r["seed"] for r in per] == [0, 1, 2]
    assert [r["Δhack"] for r in per] == pytest.approx([-0.3, -0.4, -0.3])
    assert [r["matched_solve"] for r in per] == [True, True, False]
    assert all(r["vanilla"] == f"none-s{r['seed']}-m000" for r in per)

    # route: eval numbers on both sides. vanilla eval hack = [0.8, 0.7, 0.6], solve 0.3
    rk, ra = summ[("route", "kept")], summ[("route", "ablated")]
    assert rk["numbers"] == ra["numbers"] == "eval"
    assert rk["Δhack"]["mean"] == pytest.approx(0.0)  # [-0.1, 0, 0.1]
    assert rk["Δhack"]["se"] == pytest.approx(0.1 / math.sqrt(3))
    assert rk["Δsolve"]["mean"] == pytest.approx(0.1)  # [0.05, 0.1, 0.15]
    assert ra["Δhack"]["mean"] == pytest.approx(-0.6)  # [0-0.8, 0.1-0.7, 0.2-0.6]
    assert ra["Δhack"]["se"] == pytest.approx(se([-0.8, -0.6, -0.4]))
    assert ra["Δsolve"]["mean"] == pytest.approx(-0.05) and ra["matched_solve"] is True
    route_rows = [r for r in doc["paired"] if r["arm"] == "route"]
    assert sorted({r["view"] for r in route_rows}) == ["ablated", "kept"] and len(route_rows) == 6
    assert not doc["unmatched"]

    md = results([str(sweep)])
    assert "-0.333 ± 0.033" in md and "| route | real | ablated | eval |" in md


def test_different_hashes_never_group_and_unmatched_listed(sweep, tmp_path):
    other = "m000000002"
    # same arm and seed as the sweep's erase runs, different config: its own group, no vanilla of its own
    write_run(tmp_path / "b", "erase", "real", 0, pad([0.9] * 5), pad([0.9] * 5), match=other)
    write_run(tmp_path / "b", "none", "real", 7, pad([0.1] * 5), pad([0.1] * 5))  # vanilla, lone seed
    write_run(tmp_path / "b", "erase", "real", 9, pad([0.2] * 5), pad([0.2] * 5))  # seed with no vanilla
    doc = js([sweep, tmp_path / "b"])
    erase_groups = [g for g in doc["groups"] if g["arm"] == "erase"]
    assert sorted((g["match_hash"], g["n"]) for g in erase_groups) == [(MATCH, 4), (other, 1)]
    assert next(g for g in erase_groups if g["match_hash"] == other)["hack_s"] == {"mean": pytest.approx(0.9),
                                                                                  "se": None, "n": 1}
    assert next(g for g in erase_groups if g["match_hash"] == MATCH)["hack_s"]["mean"] == pytest.approx(1.0 / 4)
    unmatched = {(u["arm"], u["seed"], u["match_hash"]) for u in doc["unmatched"]}
    assert unmatched == {("erase", 0, other), ("erase", 9, MATCH)}
    # the matched erase summary still covers exactly its 3 paired seeds
    e = next(r for r in doc["paired_summary"] if r["arm"] == "erase" and r["match_hash"] == MATCH)
    assert e["n"] == 3 and e["Δhack"]["mean"] == pytest.approx(-1 / 3)
    md = results([str(sweep), str(tmp_path / "b")])
    assert "Runs with no vanilla" in md and "erase-s9-m000" in md


def test_incomplete_runs_reported_not_aggregated(tmp_path):
    write_run(tmp_path, "none", "real", 0, pad([0.5] * 5), pad([0.5] * 5))
    write_run(tmp_path, "erase", "real", 0, pad([0.1] * 5), pad([0.4] * 5), summary=False)
    doc = js([tmp_path])
    assert [r["status"] for r in doc["runs"]] == ["done", "incomplete"]
    assert [g["arm"] for g in doc["groups"]] == ["none"] and not doc["paired"]
    assert any("erase-s0" in n and "left out" in n for n in doc["notes"])
    doc = js([tmp_path], include_incomplete=True)
    assert doc["paired_summary"][0]["Δhack"]["mean"] == pytest.approx(-0.4)


def test_route_without_eval_has_kept_row_and_a_note(tmp_path):
    write_run(tmp_path, "none", "real", 0, pad([0.5] * 5), pad([0.5] * 5))
    write_run(tmp_path, "route", "real", 0, pad([0.4] * 5), pad([0.5] * 5))
    doc = js([tmp_path])
    assert [(r["view"], r["numbers"]) for r in doc["paired_summary"]] == [("kept", "train")]
    assert any("no ablated row" in n for n in doc["notes"])


def test_csv_and_last_window(sweep):
    text = results([str(sweep)], fmt="csv", last=1)
    sections = [s for s in text.strip().split("\n\n")]
    assert [s.splitlines()[0].split(":")[0] for s in sections] == [
        "# runs", "# groups", "# paired_summary", "# paired", "# unmatched"]
    rows = list(csv.DictReader(io.StringIO("\n".join(sections[1].splitlines()[1:]))))
    erase = next(r for r in rows if r["arm"] == "erase")
    # last=1: the tail's last value x+0.1 → erase hack_s = mean([0.3, 0.3, 0.5])
    assert float(erase["hack_s"]) == pytest.approx(1.1 / 3)
    assert float(erase["hack_s_se"]) == pytest.approx(se([0.3, 0.3, 0.5]))


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    assert report.results_cli([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and "Traceback" not in err
    write_run(tmp_path, "none", "real", 0, pad([0.5] * 5), pad([0.5] * 5))
    assert report.results_cli([str(tmp_path)], fmt="xml") == 2
    assert report.results_cli([str(tmp_path)], last=0) == 2
    out = tmp_path / "r.md"
    assert report.results_cli([str(tmp_path)], out=str(out)) == 0 and "## Runs" in out.read_text()
    assert report.plot_cli([str(tmp_path / "missing")], str(tmp_path / "x.png")) == 2


# ------------------------------------------------------------------------- plot
def test_plot_writes_a_valid_png(sweep, tmp_path):
    import matplotlib.image as mpimg

    # a partially evaluated run series and a null-only key must not break plotting
    out = report.plot([str(sweep)], tmp_path / "plots" / "dyn.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(out)
    assert img.ndim == 3 and img.shape[0] > 500 and img.shape[1] > 1000
    assert img[..., :3].std() > 0.05  # not a blank canvas
    out2 = report.plot([str(sweep)], tmp_path / "mm.png", band="minmax", smooth=3)
    assert out2.stat().st_size > 10_000
    with pytest.raises(ReportError, match="band"):
        report.plot([str(sweep)], tmp_path / "z.png", band="iqr")


def test_run_dirs_from_before_the_metric_rename_read_the_same(tmp_path):
    """`solve_s`/`solve_t` were logged as `gt_s`/`gt_t`: an old run dir gives the same tables."""
    new = write_run(tmp_path / "new", "erase", "real", 0, pad([0.1] * 5), pad([0.3, 0.2, 0.2, 0.4, 0.2]))
    old = tmp_path / "old" / new.name
    old.parent.mkdir()
    import shutil

    shutil.copytree(new, old)
    rows = [json.loads(x) for x in (old / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r["gt_s"], r["gt_t"] = r.pop("solve_s"), 0.5
    (old / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b = js([new])["runs"][0], js([old])["runs"][0]
    assert b["solve_s"] == pytest.approx(0.26) and a["solve_s"] == b["solve_s"]
    assert load_run(old).rows[0]["solve_t"] == 0.5 and "gt_s" not in load_run(old).rows[0]
