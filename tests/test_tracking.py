"""Trackers: `none` is a null object; tensorboard/wandb are lazy and fail with one clear line."""

from __future__ import annotations

import sys
import types

import pytest

from projected_grpo.tracking import Tracker, TrackerError, make_tracker, scalars

ROW = {"step": 3, "hack_s": 0.25, "cin_t": None, "fired": True, "arm": "erase", "bad": float("nan"), "n": 2}


def test_none_tracker_does_nothing(tmp_path):
    with make_tracker("none", tmp_path, {"seed": 0}) as t:
        assert type(t) is Tracker
        t.log(ROW, 3)
    assert list(tmp_path.iterdir()) == []


def test_scalars_keep_only_finite_numbers():
    assert scalars(ROW) == {"step": 3.0, "hack_s": 0.25, "fired": 1.0, "n": 2.0}


def test_unknown_kind():
    with pytest.raises(TrackerError, match="unknown tracker 'mlflow'"):
        make_tracker("mlflow", ".", {})  # type: ignore[arg-type]


@pytest.mark.parametrize("kind,module", [("tensorboard", "torch.utils.tensorboard"), ("wandb", "wandb")])
def test_missing_package_is_one_clear_line(kind, module, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(TrackerError, match=f"--tracker {kind} needs the") as e:
        make_tracker(kind, tmp_path, {})
    assert "\n" not in str(e.value)


def test_tensorboard_logs_scalars_at_step(monkeypatch, tmp_path):
    calls = []

    class Writer:
        def __init__(self, log_dir):
            calls.append(("init", log_dir))

        def add_text(self, tag, text):
            calls.append(("text", tag))

        def add_scalar(self, k, v, step):
            calls.append((k, v, step))

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    t = make_tracker("tensorboard", tmp_path, {"seed": 1})
    t.log(ROW, 3)
    t.close()
    assert calls[0] == ("init", str(tmp_path / "tb"))
    assert set(calls[2:-1]) == {("hack_s", 0.25, 3), ("fired", 1.0, 3), ("n", 2.0, 3)}
    assert calls[-1] == ("close",)


def test_wandb_logs_scalars_at_step(monkeypatch, tmp_path):
    logged, inits = [], []

    class FakeRun:
        def log(self, d, step):
            logged.append((d, step))

        def finish(self):
            logged.append("finish")

    def init(**kw):
        inits.append(kw)
        return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    with make_tracker("wandb", tmp_path / "erase-s0", {"seed": 0}) as t:
        t.log(ROW, 3)
    assert inits[0]["project"] == "projected-grpo" and inits[0]["name"] == "erase-s0"
    assert inits[0]["config"] == {"seed": 0}
    assert logged == [({"hack_s": 0.25, "fired": 1.0, "n": 2.0}, 3), "finish"]
