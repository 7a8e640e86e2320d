"""`projected-grpo sweep`: real sweeps of real smoke runs on the local and Ray backends (no mocks)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from projected_grpo.cli import main

TIMING = {"step_time_s", "gen_time_s", "grade_time_s", "tokens_per_s"}
# the runs as small as the assertions allow: what is checked is the sweep's bookkeeping, not what a run learns
FAST = ["--set", "steps=2", "--set", "eval_problems=0", "--set", "max_new_tokens=16", "--set", "vhack_pairs=4",
        "--workers", "2", "--sandbox-workers", "1"]


def _sweep(out, *flags):
    return main(["sweep", "--out", str(out), *flags])


def _rows(run_dir):
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if x.strip()]


def _plan(out):
    return json.loads((Path(out) / "sweep.json").read_text())


def _check_finished(out, n, steps):
    plan = _plan(out)
    assert len(plan["runs"]) == n
    for r in plan["runs"]:
        d = Path(r["run_dir"])
        assert d.parent == Path(out).absolute() and d.name == r["name"]
        assert d.name.startswith(f"{r['arm']}-s{r['seed']}-")
        assert (d / "summary.json").is_file(), (d, (d / "train.log").read_text()[-2000:])
        assert [row["step"] for row in _rows(d)] == list(range(1, steps + 1))
    table = (Path(out) / "results.md").read_text()
    for r in plan["runs"]:
        assert r["name"] in table
    assert (Path(out) / "dynamics.png").stat().st_size > 0
    return plan


def test_local_sweep_arms_by_seeds_then_idempotent(tmp_path, capsys):
    out = tmp_path / "sw"
    # 2 arms x 2 seeds (the Ray sweep below runs all three arms)
    assert _sweep(out, "--arms", "none", "route", "--seeds", "0", "1", *FAST) == 0
    plan = _check_finished(out, 4, steps=2)
    assert {(r["arm"], r["seed"]) for r in plan["runs"]} == {(a, s) for a in ("none", "route") for s in (0, 1)}
    text = capsys.readouterr().out
    assert "4 done, 0 resumed, 0 skipped, 0 failed" in text and "Paired vs vanilla" in text
    # the same sweep again: nothing runs
    t0 = time.time()
    assert _sweep(out, "--arms", "none", "route", "--seeds", "0", "1", *FAST) == 0
    assert "0 done, 0 resumed, 4 skipped, 0 failed" in capsys.readouterr().out
    assert time.time() - t0 < 30


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_ray_sweep_local_instance(tmp_path, capsys):
    pytest.importorskip("ray")
    import ray

    out = tmp_path / "sw"
    # 3 runs on 2 workers: one waits for a free worker (the local sweep above runs the arms x seeds grid)
    assert _sweep(out, "--backend", "ray", "--arms", "none", "erase", "route", "--seeds", "0", *FAST) == 0
    _check_finished(out, 3, steps=2)
    assert "3 done, 0 resumed, 0 skipped, 0 failed" in capsys.readouterr().out
    assert not ray.is_initialized()
    deadline = time.time() + 20  # ray.shutdown() kills its raylet, GCS and workers; give them a moment
    while time.time() < deadline and [p for p in _descendants(os.getpid()) if "ray" in _cmdline(p)]:
        time.sleep(0.2)
    left = [_cmdline(p) for p in _descendants(os.getpid()) if "ray" in _cmdline(p)]
    assert not left, left


def _trainer_pid(run_dir: Path) -> int | None:
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and f"--run-dir {run_dir} " in _cmdline(int(p.name)) + " " and \
                "projected_grpo.cli train" in _cmdline(int(p.name)):
            return int(p.name)
    return None


def _wait(cond, timeout=150.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_runs_are_resumed_by_rerunning_the_sweep(tmp_path):
    """Kill one run (the sweep reports it and goes on), then the sweep itself (its runs die with it, no
    orphans); re-running the same command resumes both, and a resumed run equals an uninterrupted one."""
    out = tmp_path / "sw"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "projected_grpo.cli", "sweep", "--out", str(out), "--arms", "route", "--seeds", "0", "1",
           "--set", "steps=6", "--set", "eval_problems=0", "--set", "vhack_pairs=4", "--workers", "2",
           "--sandbox-workers", "1"]
    log = tmp_path / "sweep.out"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait(lambda: (out / "sweep.json").is_file(), what="sweep.json")
        dirs = [Path(r["run_dir"]) for r in _plan(out)["runs"]]
        has_row = lambda d: (d / "metrics.jsonl").is_file() and (d / "metrics.jsonl").read_text().count("\n") >= 1
        _wait(lambda: all(has_row(d) for d in dirs), what="a metrics row in both runs")
        pids = [_trainer_pid(d) for d in dirs]
        assert None not in pids
        os.killpg(pids[0], signal.SIGKILL)  # one run and its sandbox servers: the sweep goes on
        _wait(lambda: "killed by SIGKILL" in log.read_text(), timeout=30, what="the sweep to report the kill")
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep itself: its running runs must die with it
        proc.wait(timeout=30)
        _wait(lambda: _trainer_pid(dirs[1]) is None, timeout=15, what="the orphaned run to die")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert all(1 <= len(_rows(d)) < 6 for d in dirs), "both runs must be killed mid-way"

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 done, 2 resumed, 0 skipped, 0 failed" in again.stdout
    for d in dirs:
        assert "resume:" in (d / "train.log").read_text()
        assert [r["step"] for r in _rows(d)] == [1, 2, 3, 4, 5, 6]
    # equal to an uninterrupted run of the same config (timings aside), started as the sweep starts its runs
    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "projected_grpo.cli", "train", "--config", str(dirs[0] / "config.json"),
                    "--run-dir", str(fresh), "--sandbox-workers", "1"], check=True, capture_output=True, timeout=150,
                   env={**env, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, os.cpu_count() // 2)))})
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
    assert strip(_rows(dirs[0])) == strip(_rows(fresh))


def test_failed_run_is_reported_and_the_others_finish(tmp_path, capsys):
    out = tmp_path / "sw"
    rc = _sweep(out, "--arms", "none", "--grid", "teacher_pool=None,/nonexistent/pool.jsonl",
                "--set", "steps=1", "--set", "eval_problems=0", "--workers", "2", "--sandbox-workers", "1")
    assert rc == 1
    runs = _plan(out)["runs"]
    assert len(runs) == 2
    good = next(r for r in runs if r["point"]["teacher_pool"] is None)
    bad = next(r for r in runs if r["point"]["teacher_pool"] is not None)
    assert (Path(good["run_dir"]) / "summary.json").is_file()
    assert not (Path(bad["run_dir"]) / "summary.json").exists()
    text = capsys.readouterr()
    row = next(ln for ln in text.out.splitlines() if ln.startswith(bad["name"]))
    assert "failed" in row and "exit code 2" in row and "no such file" in row
    assert "1 done, 0 resumed, 0 skipped, 1 failed" in text.out and "1 of 2 runs failed" in text.err
    assert "no such file" in (Path(bad["run_dir"]) / "train.log").read_text()
    assert good["name"] in (out / "results.md").read_text()


def test_toml_grid_dry_run(tmp_path, capsys):
    f = tmp_path / "grid.toml"
    f.write_text('preset = "smoke"\narms = ["none", "erase"]\nsources = ["real", "random"]\nseeds = [0, 1]\n'
                 '[overrides]\nsteps = 3\npreserve_magnitude = true\nmodes = ["run_tests", "sentinel"]\n'
                 '[grid]\nlr = [1e-3, 3e-3]\n')
    out = tmp_path / "sw"
    # the command line wins over the file: seeds 5 only
    assert main(["sweep", "--file", str(f), "--out", str(out), "--seeds", "5", "--set", "steps=4", "--dry-run"]) == 0
    runs = _plan(out)["runs"]
    assert len(runs) == 2 * 2 * 2 and {r["seed"] for r in runs} == {5}
    assert len({r["name"] for r in runs}) == 8 and len({r["hash"] for r in runs}) == 8
    assert {r["point"]["lr"] for r in runs} == {1e-3, 3e-3}
    cfg = runs[0]["config"]  # the run's whole config, typed as train reads it (it launches `train --config`)
    assert cfg["steps"] == 4 and cfg["preserve_magnitude"] is True
    assert cfg["modes"] == ["run_tests", "sentinel"]
    assert {r["config"]["lr"] for r in runs} == {1e-3, 3e-3} and cfg["run_dir"] == runs[0]["run_dir"]
    assert any(r["name"].startswith("erase-random-s5-") for r in runs)
    assert not any(p.is_dir() for p in out.iterdir())  # nothing ran


def test_plan_time_config_is_what_train_reads(tmp_path):
    """Each job's Config is built once; the runner writes it to RUN_DIR/config.json before any run starts
    (a planned run still counts as fresh) and `train --config` reads back the same config."""
    from projected_grpo import runner
    from projected_grpo.config import load_config_file, parse_config
    from projected_grpo.sweep import Grid, expand

    g = Grid(arms=("none", "baseline"), seeds=(0, 2), overrides={"steps": "3", "lr": 1, "modes": "run_tests,sentinel"})
    jobs = expand(g, tmp_path / "sw")
    assert [j.name.split("-s")[0] for j in jobs] == ["none", "none", "baseline", "baseline"]
    for j in jobs:
        # the same config train would build from flags
        flags = ["--steps", "3", "--lr", "1", "--modes", "run_tests", "sentinel", "--seed", str(j.seed),
                 *(["--grader", "strict"] if j.arm == "baseline" else [])]
        assert j.config == parse_config([*flags, "--run-dir", j.run_dir]) and j.hash == j.config.hash()
        assert runner.status_of(j) == "fresh"
        runner.write_config(j)
        meta = json.loads((Path(j.run_dir) / "config.json").read_text())
        assert (meta["hash"], meta["match_hash"], meta["arm"]) == (j.hash, j.match_hash, j.config.arm)
        assert runner.status_of(j) == "fresh" and load_config_file(str(Path(j.run_dir) / "config.json")) == j.config
        argv = runner.train_argv(j, 1, resume=False)
        assert argv[3:6] == ["train", "--config", str(Path(j.run_dir) / "config.json")] and "--resume" not in argv
    (Path(jobs[0].run_dir) / "metrics.jsonl").write_text('{"step": 1}\n')  # started, no summary: resumed
    assert runner.status_of(jobs[0]) == "resume"
    (Path(jobs[0].run_dir) / "summary.json").write_text("{}")
    assert runner.status_of(jobs[0]) == "skip"


@pytest.mark.parametrize("flags, message", [
    (["--set", "no_such_field=1"], "unknown config field 'no_such_field'"),
    (["--set", "steps"], "expected KEY=VALUE"),
    (["--set", "seed=3"], "use --seeds"),
    (["--set", "steps=zero"], "steps"),
    (["--set", "steps=0"], "--steps must be positive"),
    (["--arms", "erase", "bogus"], "unknown arm 'bogus'"),
    (["--sources", "fake"], "unknown vhack source 'fake'"),
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--grid", "lr=1e-3,1e-3"], "give the same config"),
    (["--workers", "0"], "--workers must be >= 1"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, flags, message):
    assert _sweep(tmp_path / "sw", *flags, "--dry-run") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err, err


def test_bad_toml_and_missing_ray(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.toml"
    bad.write_text("arms = [none\n")
    assert _sweep(tmp_path / "sw", "--file", str(bad)) == 2
    assert "bad TOML" in capsys.readouterr().err
    bad.write_text("armz = ['none']\n")
    assert _sweep(tmp_path / "sw", "--file", str(bad)) == 2
    assert "unknown key(s) ['armz']" in capsys.readouterr().err
    bad.write_text("seeds = ['a']\n")
    assert _sweep(tmp_path / "sw", "--file", str(bad)) == 2
    assert "seeds must be a list of integers" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert _sweep(tmp_path / "sw", "--backend", "ray", "--dry-run") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --backend ray needs Ray") and "\n" not in err
