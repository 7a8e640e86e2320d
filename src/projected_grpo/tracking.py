"""Optional experiment trackers behind one small interface; off by default, never required.

The trainer always writes `metrics.jsonl`; a tracker only mirrors those rows elsewhere. The loop holds a
`Tracker` and calls `log(row, step)` / `close()` unconditionally: `none` is a null object, so there is no
`if wandb:` in the loop. TensorBoard and wandb are imported lazily, only when asked for.

Owns the tracker interface; must never import the trainer or the env package.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

from .errors import UserError

TrackerKind = Literal["none", "tensorboard", "wandb"]


class TrackerError(UserError, RuntimeError):
    """Tracker unavailable or unknown; the CLI prints it as one line."""


class Tracker:
    """Does nothing: the `none` tracker and the base of the others."""

    def log(self, row: dict[str, Any], step: int) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The finite numeric entries of a metrics row (None, strings, lists and NaN are left out)."""
    out = {}
    for k, v in row.items():
        if isinstance(v, bool):
            v = int(v)
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[k] = float(v)
    return out


class TensorBoardTracker(Tracker):
    """Scalars under `<run_dir>/tb`."""

    def __init__(self, run_dir: str | Path, config: dict[str, Any]):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TrackerError("--tracker tensorboard needs the tensorboard package: "
                               "pip install 'projected-grpo[trackers]' (or use --tracker none)") from None
        self._w = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))
        self._w.add_text("config", "\n".join(f"    {k}: {v}" for k, v in sorted(config.items())))

    def log(self, row: dict[str, Any], step: int) -> None:
        for k, v in scalars(row).items():
            if k != "step":
                self._w.add_scalar(k, v, step)

    def close(self) -> None:
        self._w.close()


class WandbTracker(Tracker):
    """One wandb run named after the run directory; project from $WANDB_PROJECT (default projected-grpo)."""

    def __init__(self, run_dir: str | Path, config: dict[str, Any]):
        try:
            import wandb
        except ImportError:
            raise TrackerError("--tracker wandb needs the wandb package: pip install wandb "
                               "(or use --tracker none)") from None
        self._run = wandb.init(project=os.environ.get("WANDB_PROJECT", "projected-grpo"), name=Path(run_dir).name,
                               dir=str(run_dir), config=config)

    def log(self, row: dict[str, Any], step: int) -> None:
        self._run.log({k: v for k, v in scalars(row).items() if k != "step"}, step=step)

    def close(self) -> None:
        self._run.finish()


_NEEDS = {"tensorboard": ("tensorboard", "pip install 'projected-grpo[trackers]'"), "wandb": ("wandb", "pip install wandb")}


def check_tracker(kind: str) -> None:
    """TrackerError now, before any model loads, when ``kind`` is unknown or its package is not installed."""
    import importlib.util

    if kind == "none":
        return
    if kind not in _NEEDS:
        raise TrackerError(f"unknown tracker {kind!r}; choose none, tensorboard or wandb")
    package, fix = _NEEDS[kind]
    if importlib.util.find_spec(package) is None:
        raise TrackerError(f"--tracker {kind} needs the {package} package: {fix} (or use --tracker none)")


def make_tracker(kind: TrackerKind, run_dir: str | Path, config: dict[str, Any]) -> Tracker:
    """`none` → a tracker that does nothing; `tensorboard` / `wandb` → lazily imported, TrackerError if missing."""
    if kind == "none":
        return Tracker()
    if kind == "tensorboard":
        return TensorBoardTracker(run_dir, config)
    if kind == "wandb":
        return WandbTracker(run_dir, config)
    raise TrackerError(f"unknown tracker {kind!r}; choose none, tensorboard or wandb")
