"""Ctrl-C and SIGTERM during training: stop cleanly, never half-way through writing a checkpoint.

`stop_on_sigterm()` makes SIGTERM (a scheduler's or `kill`'s stop) raise `Interrupted` like Ctrl-C raises
KeyboardInterrupt, so the trainer's `finally` runs (sandbox servers closed, run-dir lock released) instead of
the process vanishing. `deferred()` holds both signals while a step's metrics row and checkpoint are written
and raises once they are complete: the run directory always holds the last finished step, and `--resume`
continues it exactly. (SIGKILL cannot be caught; the checkpoint's two renames cover it, train.RunDir.)

Owns the stop-cleanly signal handling; must never import another module of the package.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM; ``signum`` gives the CLI its exit status (128 + signum)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum, frame):
    raise Interrupted(signum)


def stop_on_sigterm():
    """Install SIGTERM → Interrupted; return the function that puts the previous handler back. A no-op off
    the main thread (Python delivers signals there only)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = signal.signal(signal.SIGTERM, _raise)
    return lambda: signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def deferred():
    """Ctrl-C / SIGTERM arriving inside the block are held until it ends, then raised as Interrupted."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if pending:
        raise Interrupted(pending[0])


def stopped_line(e: BaseException, verb: str) -> str:
    """The CLI's one line after Ctrl-C / SIGTERM, true to what is on disk. `train.train` sets ``e.run_dir`` and
    ``e.checkpoint_step`` (the last checkpoint's step, 0: none written yet); without them training had not
    opened its run directory."""
    if verb not in ("train", "demo"):
        return "interrupted"
    again = "run the same demo command again (it resumes the arm)" if verb == "demo" else \
        "rerun the same command with --resume"
    run, step = getattr(e, "run_dir", None), getattr(e, "checkpoint_step", None)
    if run is None and verb == "demo":  # between two arms, or before the first
        return "interrupted; run the same demo command again (it skips finished arms and resumes the others)"
    if run is None:
        return "interrupted before training opened its run directory: no checkpoint exists; run the command again"
    if step:
        return f"interrupted; the checkpoint of step {step} in {run} is intact: {again} to continue from step {step}"
    return (f"interrupted before the first checkpoint: no checkpoint was written yet in {run}; {again} to start "
            f"it over from step 0")
