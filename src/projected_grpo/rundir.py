"""The run directory: its layout, its writers, its tolerant readers and its checkpoint.

Layout (every name below is spelled here and nowhere else)::

    RUN/config.json          {"config", "hash", "match_hash", "arm", "versions", "command", "created"}
    RUN/metrics.jsonl        one row per optimizer step (step 0: the untrained model's evaluation)
    RUN/samples.jsonl        a few raw student samples per step, with their grades
    RUN/vhack.safetensors    the run's hack basis V (the final one)
    RUN/summary.json         written last: its presence means the run finished
    RUN/ckpt/                knobs.safetensors, vhack.safetensors, state.pt (step, optimizer, scheduler, RNG)
    RUN/.lock                flock of the one live writer

Status (`status`): ``fresh`` (nothing, or only a plan-time config.json), ``resume`` (metrics or a
checkpoint, no summary.json: killed or running), ``done`` (summary.json). Checkpoints are written to
``ckpt.tmp`` and swapped in by two renames, so a kill at any point leaves ``ckpt`` or ``ckpt.old``
whole (`RunDir.open` recovers the latter).

Owns: file names, atomic writes, the resume-time repair of a killed run, `restore` (used by train's
resume, export and eval --run). Never imports train, runner, sweep, study, report, export, evaluate or
cli (they import it); imports config, and hack_subspace lazily (to load a basis).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Literal

from .config import Config, ConfigError, config_from_dict

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SAMPLES = "samples.jsonl"
SUMMARY = "summary.json"
VHACK = "vhack.safetensors"
CKPT = "ckpt"  # folder: KNOBS, VHACK, STATE
KNOBS = "knobs.safetensors"
STATE = "state.pt"
LOCK = ".lock"
Status = Literal["fresh", "resume", "done"]


class RunDirError(ConfigError):
    """A run directory file that cannot be read; the message names the file (and line)."""


# ---------------------------------------------------------------------------- readers (any command)
def is_run(path: str | Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def is_done(path: str | Path) -> bool:
    return (Path(path) / SUMMARY).is_file()


def is_started(path: str | Path) -> bool:
    """A step's rows or a checkpoint exist (a config.json alone, as a sweep writes it at plan time, is not)."""
    p = Path(path)
    return (p / METRICS).exists() or (p / CKPT / STATE).exists() or (p / f"{CKPT}.old").exists()


def status(path: str | Path) -> Status:
    """``done`` (summary.json), ``resume`` (started, no summary: killed or running) or ``fresh`` (nothing, or
    only the config.json written at plan time)."""
    return "done" if is_done(path) else "resume" if is_started(path) else "fresh"


def make_folder(path: str | Path, what: str) -> Path:
    """``mkdir -p path``, or a ConfigError naming the file in the way (not Errno 17 / 20)."""
    path = Path(path)
    blocker = next((p for p in (path, *path.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ConfigError(f"{what} {path}: {blocker} is a file, not a folder; pick another {what}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_run_file(path: str | Path) -> bool:
    """``path`` is one of a run directory's own files (writing a report there would overwrite it)."""
    p = Path(path).expanduser()
    return (is_run(p.parent) and p.name in (CONFIG, METRICS, SAMPLES, SUMMARY, VHACK, LOCK)) or (
        p.parent.name == CKPT and is_run(p.parent.parent))


def read_config(path: str | Path) -> tuple[dict, Config]:
    """(config.json's object, its Config), or a RunDirError naming the file."""
    f = Path(path) / CONFIG
    try:
        meta = json.loads(f.read_text())
        return meta, config_from_dict(meta["config"])
    except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError, ConfigError, a missing "config", wrong types
        raise RunDirError(f"{f} is not a readable run config ({type(e).__name__}: {str(e)[:120]})") from None


def read_metrics(path: str | Path, strict: bool = False, notes: list[str] | None = None) -> list[dict]:
    """metrics.jsonl's rows in step order, the last row per step ([] without the file).

    A line cut by a kill is skipped (noted in ``notes``). ``strict``: only a partial *last* line is
    forgiven; any other unreadable line, or a row without an integer ``step``, raises RunDirError."""
    f = Path(path) / METRICS
    if not f.is_file():
        return []
    text = f.read_text()
    lines = text.splitlines()
    by_step: dict[int, dict] = {}
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if strict and not (i == len(lines) and not text.endswith("\n")):
                raise RunDirError(f"{f}: malformed JSON at line {i}: {e.msg}") from None
            if notes is not None:
                notes.append(f"{f}: skipped a partial last line {i}")
            continue  # its step is redone after the checkpoint
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            if strict:
                raise RunDirError(f"{f}: line {i} is not an object with an integer 'step'")
            continue
        by_step[row["step"]] = row
    return [by_step[s] for s in sorted(by_step)]


def read_summary(path: str | Path) -> dict | None:
    f = Path(path) / SUMMARY
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise RunDirError(f"{f}: malformed JSON at line {e.lineno}: {e.msg}") from None


def final_eval(path: str | Path) -> dict:
    """The run's last evaluation: summary.json's, else the last metrics row that has one ({} if none)."""
    ev = (read_summary(path) or {}).get("final_eval")
    if ev:
        return ev
    evals = [r for r in read_metrics(path) if "hack_kept" in r]
    return evals[-1] if evals else {}


def checkpoint_step(path: str | Path) -> int:
    """Steps done according to the checkpoint (0 without one)."""
    state = RunDir(Path(path)).load_state()
    return 0 if state is None else int(state["step"])


def progress(path: str | Path) -> tuple[int, int, bool]:
    """(steps done, steps planned, finished) of a run dir, from its checkpoint, config and summary."""
    cfg = read_config(path)[1]
    done = checkpoint_step(path)
    return done, cfg.steps, done >= cfg.steps and is_done(path)


def knob_file(path: str | Path) -> Path:
    """The checkpoint's knobs, or a ConfigError when ``path`` is no run dir with a checkpoint."""
    p = Path(path)
    f = p / CKPT / KNOBS
    if not is_run(p) or not f.is_file():
        raise ConfigError(f"{p} is not a run directory with a checkpoint (need {CONFIG} and {CKPT}/{KNOBS})")
    return f


def knob_dtype(path: str | Path, default: str) -> str:
    """The dtype the checkpoint's knobs were trained on (their safetensors metadata), else ``default``."""
    from safetensors import safe_open

    f = knob_file(path)
    try:
        with safe_open(str(f), "pt") as h:
            return (h.metadata() or {}).get("dtype", default)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own types for a truncated or foreign file
        raise ConfigError(f"{f} is not a readable knob file ({type(e).__name__}); the checkpoint is corrupt: "
                          f"restore it, or train the run again") from None


def restore(path: str | Path, adapter):
    """Load the checkpoint's knobs into ``adapter`` (a SVDAdapter attached to the run's base model) and
    return the checkpoint's basis (a HackBasis; None if the checkpoint has none): the one step of
    resume (train), export and eval --run that reads a checkpoint's weights."""
    from .hack_subspace import HackBasis

    adapter.load(knob_file(path))
    f = Path(path) / CKPT / VHACK
    return HackBasis.load(f) if f.is_file() else None


# ---------------------------------------------------------------------------- the writer (train)
class RunDir:
    """Atomic writes of config, metrics, checkpoints and summary; one writer at a time (``lock``)."""

    LOCK = LOCK

    def __init__(self, path: Path):
        self.path = Path(path)
        self.metrics = self.path / METRICS
        self.samples = self.path / SAMPLES
        self.ckpt = self.path / CKPT
        self._lock_fd: int | None = None

    def lock(self) -> None:
        """Exclusive ``flock`` on ``<run>/.lock`` for this process's training, or ConfigError naming the holder.
        The kernel drops the lock when its holder dies (even by SIGKILL), so a lock file left by a dead
        process never blocks: only a live writer does."""
        import fcntl

        fd = os.open(self.path / self.LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(f"{self.path} is in use by another training ({holder}); wait for it to end or pick "
                              f"another --run-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode())
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock; the file stays (harmless)
            self._lock_fd = None

    @classmethod
    def open(cls, cfg: Config, write: bool = True) -> tuple["RunDir", dict | None]:
        """Create the run dir, or reopen it for --resume. Returns (run, checkpoint state or None).
        ``write=False`` (data-parallel ranks > 0): only read what rank 0 prepared."""
        path = Path(cfg.run_dir or f"runs/{cfg.arm}-s{cfg.seed}-{cfg.hash()}")
        run = cls(path)
        if not write:
            return run, run.load_state()
        if cfg.resume and not is_run(path):  # a mistyped path must not silently start a fresh run
            raise ConfigError(f"--resume {path}: no run there (no {CONFIG}); check the path, or drop --resume "
                              f"to start a new run")
        make_folder(path, "--run-dir")
        run.lock()  # before reading anything: a second writer must not touch the files
        try:
            return run, run._prepare(cfg)
        except BaseException:
            run.release()
            raise

    def _prepare(self, cfg: Config) -> dict | None:
        path, saved, old_ckpt = self.path, self.path / CONFIG, self.path / f"{CKPT}.old"
        started = is_started(path)
        if saved.exists() and not cfg.resume and started:
            raise ConfigError(f"{path} already holds a run; pass --resume to continue it or pick another --run-dir")
        if saved.exists() and started:  # a run that never reached its first step is simply redone
            try:
                old = read_config(path)[1]
            except RunDirError as e:
                raise ConfigError(f"{e}; pick another --run-dir") from None
            if old.hash() != cfg.hash() or old.seed != cfg.seed:
                diff = [k for k, v in cfg.to_dict().items() if old.to_dict().get(k) != v
                        and k not in ("resume", "force", "run_dir", "preset", "tracker", "sandbox_workers")]
                if not cfg.force:
                    raise ConfigError(f"{path} was made with another config (differs in {diff}); "
                                      f"refusing to resume (--force to override)")
        if not self.ckpt.exists() and old_ckpt.exists():  # killed between the two renames of save_checkpoint
            old_ckpt.rename(self.ckpt)
        state = self.load_state()
        self._check_whole(state)
        if state is None and self.metrics.exists():
            self.metrics.unlink()  # killed before the first checkpoint: start over
            self.samples.unlink(missing_ok=True)
        if not saved.exists() or cfg.force or not started:
            self.write_json(CONFIG, {"config": cfg.to_dict(), "hash": cfg.hash(), "match_hash": cfg.match_hash(),
                                     "arm": cfg.arm, "versions": _versions(), "command": " ".join(sys.argv),
                                     "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        if state is not None:  # drop metric and sample rows written after the checkpoint
            self.rewrite_metrics([r for r in self.read_metrics() if r["step"] <= state["step"]])
            if self.samples.exists():
                kept = [ln for ln in self.samples.read_text().splitlines()
                        if ln.strip() and _complete_row(ln, state["step"])]
                self.samples.write_text("".join(ln + "\n" for ln in kept))
        elif cfg.resume:
            print(f"{path}: no checkpoint yet (stopped before its first step); starting from step 0", file=sys.stderr)
        return state

    def _check_whole(self, state: dict | None) -> None:
        """Refuse to resume a run dir damaged after the fact (by hand, a full disk, a copy cut short). The
        trainer writes a step's metrics row (fsync'd) before its checkpoint, and swaps a checkpoint in whole,
        so a checkpoint at step N always has rows 1..N and a run without one has rows up to step 1 at most;
        anything else would resume into a gap in metrics.jsonl, or start over and delete its rows."""
        rows = {r["step"] for r in self.read_metrics()}
        again = f"restore it, or delete {self.path} (or pick another --run-dir) to start over"
        if state is None and self.ckpt.exists():
            raise ConfigError(f"{self.ckpt} has no {STATE}; the checkpoint is corrupt: {again}")
        if state is None and rows and max(rows) > 1:
            raise ConfigError(f"{self.path} has metrics up to step {max(rows)} but no checkpoint ({CKPT}/ is missing); "
                              f"restore {CKPT}/, or delete {self.path} (or pick another --run-dir) to start over")
        if state is not None and (missing := [s for s in range(1, int(state["step"]) + 1) if s not in rows]):
            shown = missing if len(missing) <= 8 else [*missing[:8], "..."]
            raise ConfigError(f"{self.metrics} has no row for step(s) {shown} that the checkpoint (step "
                              f"{state['step']}) has done: it was truncated or deleted; {again}")

    def load_state(self) -> dict | None:
        """The checkpoint's state.pt (step, optimizer, scheduler, rng, config_hash), or None without one."""
        f = self.ckpt / STATE
        if not f.exists():
            return None
        import torch

        try:  # on CPU first: a GPU checkpoint resumes anywhere, every rank loads its own copy
            return torch.load(f, weights_only=False, map_location="cpu")
        except Exception as e:  # noqa: BLE001 - any unreadable pickle is the same user-facing problem
            raise ConfigError(f"{f} is unreadable ({type(e).__name__}); the checkpoint is corrupt: restore it, or "
                              f"delete {self.path} (or pick another --run-dir) to start over") from None

    def restore(self, adapter):
        """`restore` of this run dir: knobs into ``adapter``, returns the checkpoint's basis."""
        return restore(self.path, adapter)

    def write_json(self, name: str, obj) -> None:
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
        tmp.replace(self.path / name)

    def write_summary(self, summary: dict) -> None:
        self.write_json(SUMMARY, summary)

    def save_basis(self, basis) -> None:
        basis.save(self.path / VHACK)

    def append_metrics(self, row: dict) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(row, default=_json_default) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def append_samples(self, rows: list[dict]) -> None:
        if rows:
            with open(self.samples, "a") as f:
                f.write("".join(json.dumps(r) + "\n" for r in rows))

    def read_metrics(self) -> list[dict]:
        return read_metrics(self.path)

    def rewrite_metrics(self, rows: list[dict]) -> None:
        tmp = self.path / ".metrics.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(self.metrics)

    def save_checkpoint(self, adapter, state: dict, basis) -> None:
        """Knobs, basis and state into ``ckpt`` (read back by `load_state` and `restore`), swapped in whole."""
        import torch

        tmp = self.path / f"{CKPT}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        adapter.save(tmp / KNOBS)
        basis.save(tmp / VHACK)
        torch.save(state, tmp / STATE)
        old = self.path / f"{CKPT}.old"
        if self.ckpt.exists():
            self.ckpt.rename(old)
        tmp.rename(self.ckpt)
        shutil.rmtree(old, ignore_errors=True)


def _complete_row(line: str, max_step: int) -> bool:
    try:
        return json.loads(line)["step"] <= max_step
    except (json.JSONDecodeError, KeyError, TypeError):
        return False  # a line cut by a kill


def _json_default(o):
    import numpy as np
    import torch

    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, torch.Tensor):
        return o.item() if o.numel() == 1 else o.tolist()
    return str(o)


def _versions() -> dict:
    import torch
    import transformers

    v = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        from . import __version__

        v["projected_grpo"] = __version__
        import subprocess

        v["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                  cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except Exception:
        pass
    return v
