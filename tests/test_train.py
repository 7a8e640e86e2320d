"""Smoke runs of the real trainer through the real CLI (tiny model, builtin problems, CPU)."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from projected_grpo.cli import main
from projected_grpo.hack_subspace import HackBasis

CONTRACT = ("step reward hack_s solve_s hack_t solve_t frac_zero_var frac_truncated loss kl gn cin_s cin_t cin cout "
            "cout_update fired dS dSh step_time_s gen_time_s grade_time_s tokens_per_s").split()
EVAL_KEYS = ("hack_kept", "solve_kept", "hack_abl", "solve_abl", "solve_nohint")
TIMING = {"step_time_s", "gen_time_s", "grade_time_s", "tokens_per_s"}


def _train(run_dir, *flags):
    rc = main(["train", "--preset", "smoke", "--run-dir", str(run_dir), "--sandbox-workers", "2", *flags])
    assert rc == 0
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _knobs(run_dir):
    return load_file(Path(run_dir) / "ckpt" / "knobs.safetensors")


@pytest.mark.parametrize("arm", ["none", "erase", "route"])
def test_arms_metrics_contract(arm, tmp_path):
    rows = _train(tmp_path / arm, "--intervention", arm, "--steps", "3")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert set(CONTRACT) <= set(r), set(CONTRACT) - set(r)
        assert all(f"hack_s_{m}" in r for m in ("run_tests", "sentinel", "exit_code"))
    assert set(EVAL_KEYS) <= set(rows[-1])
    if arm == "route":
        assert rows[-1]["dSh"] > 0
    else:
        assert all(r["dSh"] == 0 for r in rows)
        assert all(torch.count_nonzero(v) == 0 for k, v in _knobs(tmp_path / arm).items() if k.endswith("delta_s_hack"))
    assert rows[-1]["dS"] > 0
    run = tmp_path / arm
    for name in ("config.json", "summary.json", "vhack.safetensors", "ckpt/state.pt", "ckpt/vhack.safetensors"):
        assert (run / name).exists(), name
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["config"]["intervention"] == arm and len(cfg["hash"]) == 10 and "torch" in cfg["versions"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["arm"] == arm and "final_eval" in summary


@pytest.mark.parametrize("source", ["random", "label_permuted", "matched_capture", "nonhack"])
def test_control_bases(source, tmp_path):
    rows = _train(tmp_path / source, "--intervention", "erase", "--vhack-source", source, "--steps", "2",
                  "--eval-problems", "0")  # the evaluation is test_arms_metrics_contract's
    assert len(rows) == 2 and all(r["dSh"] == 0 for r in rows)
    assert json.loads((tmp_path / source / "config.json").read_text())["arm"] == f"erase-{source}"
    if source == "matched_capture":  # fitted at step 1 to real V's captured share, then kept (checkpoint)
        fit = rows[0]
        assert fit["capture_matched"] and abs(fit["capture"] - fit["capture_target"]) <= 0.1 * fit["capture_target"]
        assert abs(fit["cin"] - fit["capture"]) < 1e-4 and "capture" not in rows[1]  # the projector used the fit
        assert HackBasis.load(tmp_path / source / "vhack.safetensors").meta["capture_fitted"] is True


def test_basis_refresh_logs_overlap_and_pure_on_policy_runs(tmp_path):
    rows = _train(tmp_path / "refresh", "--intervention", "route", "--steps", "3", "--vhack-refresh-every", "1",
                  "--mix-ratio", "0", "--eval-problems", "0")
    overlaps = [r["basis_overlap"] for r in rows if "basis_overlap" in r]
    assert len(overlaps) == 2 and all(0.0 <= o <= 1.0 + 1e-6 for o in overlaps)  # refreshed after steps 1, 2
    assert all(r["hack_t"] is None and r["cin_t"] is None for r in rows)  # no teacher rows at mix_ratio 0


def test_route_first_step_equals_erase_with_teacher_only(tmp_path):
    # mix_ratio 1: rollouts do not depend on the model, so both arms see the same gradient at step 1.
    # grad clip off: AdamW's first step would otherwise see route's larger joint norm (eps breaks exactness).
    flags = ["--steps", "1", "--mix-ratio", "1.0", "--grad-clip", "0", "--eval-problems", "0"]
    erase = _train(tmp_path / "e", "--intervention", "erase", *flags)
    route = _train(tmp_path / "r", "--intervention", "route", *flags)
    ke, kr = _knobs(tmp_path / "e"), _knobs(tmp_path / "r")
    for k in ke:
        if k.endswith(".delta_s"):
            assert torch.equal(ke[k], kr[k]), k
    assert erase[0]["fired"] > 0 and route[0]["gn"] > erase[0]["gn"]
    assert route[0]["dSh"] > 0 and erase[0]["dSh"] == 0


def test_gt_correct_never_reaches_the_loss(tmp_path, monkeypatch):
    from projected_grpo.env import grader as grader_mod

    flags = ["--steps", "1", "--eval-problems", "0", "--intervention", "erase"]
    _train(tmp_path / "a", *flags)
    original = grader_mod.GraderPool.grade_many

    def flipped(self, items):
        out = original(self, items)
        for g in out:
            g.gt_correct = not g.gt_correct
        return out

    monkeypatch.setattr(grader_mod.GraderPool, "grade_many", flipped)
    import projected_grpo.train as train_mod
    monkeypatch.setattr(train_mod.TeacherPool, "for_problem", _flip_teacher(train_mod.TeacherPool.for_problem))
    rows_b = _train(tmp_path / "b", *flags)
    ka, kb = _knobs(tmp_path / "a"), _knobs(tmp_path / "b")
    assert all(torch.equal(ka[k], kb[k]) for k in ka)
    rows_a = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert rows_a[0]["loss"] == rows_b[0]["loss"] and rows_a[0]["gn"] == rows_b[0]["gn"]
    assert rows_a[0]["solve_s"] != rows_b[0]["solve_s"] or rows_a[0]["solve_t"] != rows_b[0]["solve_t"]  # the flip did happen


def _flip_teacher(fn):
    import copy

    def wrapped(self, pid):
        out = []
        for tc in fn(self, pid):
            tc = copy.deepcopy(tc)
            tc.grade["gt_correct"] = not tc.grade["gt_correct"]
            out.append(tc)
        return out

    return wrapped


def test_same_seed_same_metrics(tmp_path):
    a = _train(tmp_path / "a", "--steps", "2", "--eval-problems", "0")
    b = _train(tmp_path / "b", "--steps", "2", "--eval-problems", "0")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
    assert strip(a) == strip(b)


def test_amp_is_deterministic_and_close_to_fp32(tmp_path, monkeypatch):
    # bf16 autocast forwards and bf16 rollouts: the same run twice gives the same metrics; knobs stay fp32,
    # the basis is extracted under the same precision (its own cache entry), and step 1 is near fp32's
    import dataclasses

    from projected_grpo.adapter import KnobLinear, SVDAdapter
    from projected_grpo.config import PRESETS
    from projected_grpo.hack_subspace import HackBasis

    copies, out_dtypes = [], set()
    real_copy = SVDAdapter.plain_copy
    monkeypatch.setattr(SVDAdapter, "plain_copy", lambda self, *a, **k: copies.append(a) or real_copy(self, *a, **k))
    real_forward = KnobLinear.forward

    def forward(self, x):
        y = real_forward(self, x)
        out_dtypes.add(y.dtype)
        return y

    monkeypatch.setattr(KnobLinear, "forward", forward)
    a = _train(tmp_path / "a", "--steps", "2", "--eval-problems", "0", "--amp")
    assert copies and all(c[0] == torch.bfloat16 for c in copies)  # rollouts came from bf16 copies
    assert out_dtypes == {torch.bfloat16}  # every knob-layer forward (loss, extraction) ran under autocast
    b = _train(tmp_path / "b", "--steps", "2", "--eval-problems", "0", "--amp")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
    assert strip(a) == strip(b)
    assert {t.dtype for t in _knobs(tmp_path / "a").values()} == {torch.float32}
    amp_basis = HackBasis.load(tmp_path / "a" / "vhack.safetensors")
    assert amp_basis.meta["amp"] is True
    copies.clear()
    out_dtypes.clear()
    full = _train(tmp_path / "fp32", "--steps", "2", "--eval-problems", "0")
    assert not copies and out_dtypes == {torch.float32}
    fp32_basis = HackBasis.load(tmp_path / "fp32" / "vhack.safetensors")
    assert "amp" not in fp32_basis.meta and any(not torch.equal(amp_basis.V[n], fp32_basis.V[n]) for n in amp_basis.V)
    assert a[0]["reward"] == full[0]["reward"]  # step 1 samples from the untrained model: same completions here
    assert a[0]["gn"] != full[0]["gn"] and a[0]["gn"] == pytest.approx(full[0]["gn"], rel=0.05)
    assert a[0]["cin_s"] == pytest.approx(full[0]["cin_s"], abs=0.05)
    # amp enters the run's identity only when on: run names made before the flag existed stay valid
    assert PRESETS["smoke"].hash() != dataclasses.replace(PRESETS["smoke"], amp=True).hash()
    assert "amp" not in PRESETS["smoke"]._identity()


def test_grad_checkpointing_one_pass_matches_prompt_sharing(tmp_path):
    # with gradient checkpointing HF turns the KV cache off, so rows run in one pass each: same numbers
    # and the fused knob forward (--knob-forward merged, the GPU presets' path) gives the branch's numbers in
    # fp32, with and without checkpointing (its forward is recomputed in the backward there)
    a = _train(tmp_path / "a", "--steps", "2", "--eval-problems", "0")
    b = _train(tmp_path / "b", "--steps", "2", "--eval-problems", "0", "--grad-checkpointing")
    c = _train(tmp_path / "c", "--steps", "2", "--eval-problems", "0", "--knob-forward", "merged")
    d = _train(tmp_path / "d", "--steps", "2", "--eval-problems", "0", "--knob-forward", "merged", "--grad-checkpointing")
    for other in (b, c, d):
        for x, y in zip(a, other):
            for k in ("loss", "gn", "cin_s", "cin_t", "dS"):
                assert x[k] == pytest.approx(y[k], rel=1e-4, abs=1e-7), k


def _cli_error(capsys, *argv):
    capsys.readouterr()
    rc = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and "\n" not in err, err
    return err


def test_bad_config_values_one_line_errors(tmp_path, capsys):
    assert "--group" in _cli_error(capsys, "train", "--group", "-2")
    assert "intervention" in _cli_error(capsys, "train", "--intervention", "delete")
    assert "teacher-pool" in _cli_error(capsys, "train", "--teacher-pool", str(tmp_path / "missing.jsonl"),
                                        "--run-dir", str(tmp_path / "r"))
    assert "mix-ratio" in _cli_error(capsys, "train", "--mix-ratio", "1.5")
    assert "preset" in _cli_error(capsys, "train", "--preset", "nope")
    assert "dataset" in _cli_error(capsys, "train", "--dataset", "leetcode:/no/such.jsonl",
                                   "--run-dir", str(tmp_path / "r2"))
    # only real rollouts may enter a group, but a template pool has none: refused before step 1
    assert "--teacher-kinds" in _cli_error(capsys, "train", "--teacher-kinds", "rollout", "--run-dir",
                                           str(tmp_path / "r3"))
    assert "--amp" in _cli_error(capsys, "train", "--amp", "--dtype", "bfloat16")
    _cli_error(capsys, "frobnicate")


def test_existing_run_dir_and_config_mismatch(tmp_path, capsys):
    _train(tmp_path / "r", "--steps", "1", "--eval-problems", "0")
    assert "--resume" in _cli_error(capsys, "train", "--run-dir", str(tmp_path / "r"), "--steps", "1")
    assert "another config" in _cli_error(capsys, "train", "--run-dir", str(tmp_path / "r"), "--resume",
                                          "--lr", "0.5", "--steps", "1")


def test_run_dir_lock_refuses_a_second_writer_and_dies_with_its_holder(tmp_path):
    """Two real processes on one run dir: the second is refused in one line while the first lives; once
    the first is SIGKILLed its lock file stays behind but no longer blocks, and --resume finishes the run.
    The first is SIGSTOPped after its first step (alive, holding the lock, but not racing to its end while the
    second is refused), so a short run suffices on a fast or a slow machine alike."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = tmp_path / "r"
    steps = 4
    cmd = [sys.executable, "-m", "projected_grpo.cli", "train", "--preset", "smoke", "--steps", str(steps),
           "--sandbox-workers", "1", "--eval-problems", "0", "--run-dir", str(run)]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (run / "metrics.jsonl").exists():
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGSTOP)
        assert (run / "metrics.jsonl").exists() and first.poll() is None
        for extra in ([], ["--resume"]):  # resume is refused too: it would rewrite the live run's files
            second = subprocess.run([*cmd, *extra], env=env, capture_output=True, text=True, timeout=120)
            err = second.stderr.strip()
            assert second.returncode == 2 and err.startswith("error:") and "\n" not in err, err
            assert "in use by another training" in err and f"pid {first.pid}" in err, err
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        assert (run / ".lock").exists()  # left behind by the dead holder
        rows_before = len((run / "metrics.jsonl").read_text().splitlines())
        done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    steps_done = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps_done == list(range(1, steps + 1)) and rows_before < steps  # every step once: no second writer got in


def test_resume_of_a_path_without_a_run_is_an_error(tmp_path, capsys):
    err = _cli_error(capsys, "train", "--run-dir", str(tmp_path / "typo"), "--resume")
    assert "--resume" in err and "no run there" in err
    assert not (tmp_path / "typo").exists()  # nothing created
    (tmp_path / "empty").mkdir()
    assert "no run there" in _cli_error(capsys, "train", "--run-dir", str(tmp_path / "empty"), "--resume")


def test_progress_names_every_setup_step_and_the_evaluation(tmp_path, capsys):
    capsys.readouterr()
    _train(tmp_path / "r", "--steps", "1", "--eval-problems", "2", "--eval-at-start", "--intervention", "route")
    err = capsys.readouterr().err
    for step in ("model load (tiny)", "SVD of the adapted layers", "teacher pool", "hack subspace V (real basis",
                 "evaluation of the untrained model (2 problems"):
        assert f"[route s0] {step}" in err, (step, err)
        assert re.search(re.escape(step) + r"[^\n]*: done in \d+\.\d s", err), (step, err)
    assert "evaluating 2 held-out problems (greedy)" in err  # the bar's status while the final evaluation runs


def test_deterministic_flag_sets_kernels_and_replicates_exactly(tmp_path):
    """--deterministic in a run's own process: the kernel switches are on, and two runs of one config and
    seed write identical metrics (timing keys aside); the flag enters the hash only when on."""
    from projected_grpo.config import PRESETS

    assert PRESETS["smoke"].hash() == dataclasses.replace(PRESETS["smoke"], deterministic=False).hash()
    assert PRESETS["smoke"].hash() != dataclasses.replace(PRESETS["smoke"], deterministic=True).hash()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    code = ("import sys, torch; from projected_grpo.cli import main; rc = main(sys.argv[1:]); "
            "assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark; "
            "sys.exit(rc)")
    rows = []
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", code, "train", "--preset", "smoke", "--steps", "2", "--deterministic",
                        "--intervention", "route", "--sandbox-workers", "2", "--max-new-tokens", "16",
                        "--eval-problems", "2", "--run-dir", str(tmp_path / name)],
                       check=True, env=env, capture_output=True)
        rows.append([{k: v for k, v in r.items() if k not in ("step_time_s", "gen_time_s", "grade_time_s",
                                                              "tokens_per_s")}
                     for r in map(json.loads, (tmp_path / name / "metrics.jsonl").read_text().splitlines())])
    assert rows[0] == rows[1]
