"""SIGKILL, SIGTERM and Ctrl-C during training: the run stops (SIGTERM, Ctrl-C: with one line and exit 128 + signal,
the checkpoint on disk whole: the last finished step), and `--resume` continues to the same metrics and knobs as
one uninterrupted run (made once, in this process, and shared by the three tests)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from projected_grpo import train as train_mod
from projected_grpo.cli import main

TIMING = {"step_time_s", "gen_time_s", "grade_time_s", "tokens_per_s"}
FLAGS = ["--preset", "smoke", "--steps", "4", "--intervention", "route", "--sandbox-workers", "1", "--eval-every", "2",
         "--eval-problems", "2", "--max-new-tokens", "16"]  # short evaluations: the resume must reproduce them


def _env():
    """The subprocess's environment: as many torch threads as this process's `full` run used (conftest's), else a
    many-core machine would sum fp32 reductions in another order there and the equality would fail by a bit."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}


def _rows(run):
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in (run / "metrics.jsonl").read_text().splitlines()]


def _same_run(a, b):
    assert _rows(a) == _rows(b)
    ka, kb = load_file(a / "ckpt" / "knobs.safetensors"), load_file(b / "ckpt" / "knobs.safetensors")
    assert ka.keys() == kb.keys() and all(torch.equal(ka[k], kb[k]) for k in ka)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The uninterrupted run the three tests compare against."""
    path = tmp_path_factory.mktemp("full") / "run"
    assert main(["train", *FLAGS, "--run-dir", str(path)]) == 0
    return path


CMD = [sys.executable, "-m", "projected_grpo.cli", "train", *FLAGS]


def _start_and_wait_for_two_rows(run, **popen):
    """A training subprocess into ``run``, returned once its metrics.jsonl holds 2 rows (or after 600 s)."""
    proc = subprocess.Popen([*CMD, "--run-dir", str(run)], env=_env(), stdout=subprocess.DEVNULL, **popen)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 600  # a loaded 2-core machine runs a smoke step in tens of seconds
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    return proc


def _resume(run):
    subprocess.run([*CMD, "--run-dir", str(run), "--resume"], check=True, env=_env(), capture_output=True)


def test_sigterm_then_resume_equals_uninterrupted(tmp_path, full):
    stopped = tmp_path / "stopped"
    proc = _start_and_wait_for_two_rows(stopped, stderr=subprocess.PIPE, text=True)
    metrics = stopped / "metrics.jsonl"
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted"), err
    n = len(metrics.read_text().splitlines())
    assert 2 <= n < 4, "the run must be stopped mid-way"
    state = torch.load(stopped / "ckpt" / "state.pt", weights_only=False)
    assert state["step"] == n  # the checkpoint is the last finished step's, whole
    assert not (stopped / "ckpt.tmp").exists() and not (stopped / "ckpt.old").exists()
    _resume(stopped)
    _same_run(full, stopped)


def test_ctrl_c_while_the_checkpoint_is_written_waits_for_it(tmp_path, monkeypatch, capsys, full):
    """Ctrl-C delivered in the middle of save_checkpoint: the checkpoint is finished first, then the run
    stops (exit 130); resuming gives the uninterrupted run."""
    save, knob_save = train_mod.RunDir.save_checkpoint, train_mod.SVDAdapter.save
    calls = []

    def save_checkpoint(self, adapter, state, basis):
        calls.append(state["step"])
        return save(self, adapter, state, basis)

    def knob_save_then_ctrl_c(self, path):
        knob_save(self, path)
        if calls[-1] == 2 and "ckpt.tmp" in str(path):  # the knobs of step 2 written, basis and state not yet
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # the handler runs now: were it not deferred, the checkpoint would stay at step 1

    monkeypatch.setattr(train_mod.RunDir, "save_checkpoint", save_checkpoint)
    monkeypatch.setattr(train_mod.SVDAdapter, "save", knob_save_then_ctrl_c)
    part = tmp_path / "part"
    capsys.readouterr()
    assert main(["train", *FLAGS, "--run-dir", str(part)]) == 128 + signal.SIGINT
    assert "interrupted" in capsys.readouterr().err
    assert calls == [1, 2]  # stopped right after step 2's checkpoint, which is complete
    assert torch.load(part / "ckpt" / "state.pt", weights_only=False)["step"] == 2
    monkeypatch.setattr(train_mod.RunDir, "save_checkpoint", save)
    monkeypatch.setattr(train_mod.SVDAdapter, "save", knob_save)
    assert main(["train", *FLAGS, "--run-dir", str(part), "--resume"]) == 0
    _same_run(full, part)


def test_kill_and_resume_equals_uninterrupted(tmp_path, full):
    """SIGKILL of the run and its sandbox servers mid-way (no handler runs), then --resume in a new process."""
    killed = tmp_path / "killed"
    proc = _start_and_wait_for_two_rows(killed, stderr=subprocess.DEVNULL, start_new_session=True)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len((killed / "metrics.jsonl").read_text().splitlines())
    assert 2 <= n_before < 4, "the run must be killed mid-way"
    _resume(killed)
    _same_run(full, killed)
