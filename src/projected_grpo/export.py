"""`projected-grpo export RUN_DIR --out DIR`: the deployable model of a run, with a model card.

The model is a plain transformers folder: δS merged into the base weights, δS_hack ablated (zeroed),
no adapter code needed to load it. Next to it, ``README.md`` says what it is (base model, arm, steps
done of planned, config hash, the final greedy evaluation), so a folder found later explains itself.
An unfinished run (no ``summary.json``, or a checkpoint short of the planned steps) is refused unless
``allow_partial``; its card then says so. Files are written readable by others (``0o666 & ~umask``):
safetensors' temp-file writes would otherwise leave them 0600.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .config import Config, ConfigError, config_from_dict


def read_run_config(run: Path) -> tuple[dict, Config]:
    """(config.json's object, its Config), or a ConfigError naming the file."""
    try:
        meta = json.loads((run / "config.json").read_text())
        return meta, config_from_dict(meta["config"])
    except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError, a missing "config", wrong field types
        raise ConfigError(f"{run / 'config.json'} is not a readable run config ({type(e).__name__}: "
                          f"{str(e)[:120]}); export a run directory written by `train`") from None


def run_progress(run: Path) -> tuple[int, int, bool]:
    """(steps done, steps planned, finished) of a run dir, read from its checkpoint and summary."""
    cfg = read_run_config(run)[1]
    done = 0
    state = run / "ckpt" / "state.pt"
    if state.exists():
        import torch

        try:
            done = int(torch.load(state, weights_only=False, map_location="cpu")["step"])
        except Exception as e:  # noqa: BLE001 - any unreadable pickle is the same user-facing problem
            raise ConfigError(f"{state} is unreadable ({type(e).__name__}); the checkpoint is corrupt") from None
    return done, cfg.steps, done >= cfg.steps and (run / "summary.json").exists()


def export_run(run_dir: str | Path, out: str | Path, allow_partial: bool = False) -> Path:
    """Merge the run's δS (δS_hack ablated) into its base model, save it to ``out`` with a model card."""
    import torch
    from safetensors import safe_open

    from .adapter import SVDAdapter
    from .models import check_model, load_model
    from .models import resolve_device

    run = Path(run_dir)
    knobs = run / "ckpt" / "knobs.safetensors"
    if not (run / "config.json").exists() or not knobs.exists():
        raise ConfigError(f"{run} is not a run directory with a checkpoint (need config.json and ckpt/knobs.safetensors)")
    meta, cfg = read_run_config(run)
    device, dtype = resolve_device(cfg)
    try:  # rebuild the base in the dtype the knobs were trained on
        with safe_open(str(knobs), "pt") as f:
            dtype = getattr(torch, (f.metadata() or {}).get("dtype", str(dtype).removeprefix("torch.")))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own types for a truncated or foreign file
        raise ConfigError(f"{knobs} is not a readable knob file ({type(e).__name__}); the checkpoint is corrupt: "
                          f"restore it, or train the run again") from None
    done, planned, finished = run_progress(run)
    if not finished and not allow_partial:
        raise ConfigError(f"{run} is unfinished ({done} of {planned} steps{'' if done < planned else ', no summary.json'}); "
                          f"resume it with `projected-grpo train --run-dir {run} --resume ...`, or export it "
                          f"anyway with --allow-partial")
    check_model(cfg.model)
    model, tok = load_model(cfg.model, dtype, device)
    adapter = SVDAdapter.attach(model, cfg.target_modules, cfg.layers, cfg.adapter_rank)
    adapter.load(knobs)
    path = adapter.export(out, tok)
    (path / "README.md").write_text(model_card(run, cfg, meta, done, planned, finished))
    _readable(path)
    return path


def _final_eval(run: Path) -> dict:
    """The last evaluation of the run: summary.json's, else the last metrics row that has one."""
    if (run / "summary.json").exists():
        ev = json.loads((run / "summary.json").read_text()).get("final_eval")
        if ev:
            return ev
    last: dict = {}
    if (run / "metrics.jsonl").exists():
        for line in (run / "metrics.jsonl").read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "hack_kept" in row:
                last = row
    return last


def model_card(run: Path, cfg: Config, meta: dict, done: int, planned: int, finished: bool) -> str:
    """A markdown model card with a YAML header (the hub's `base_model` key)."""
    ev = _final_eval(run)
    f = lambda k: "n/a" if ev.get(k) is None else f"{ev[k]:.2f}"  # noqa: E731
    status = "finished" if finished else "**unfinished** (exported with --allow-partial)"
    lines = [
        "---", f"base_model: {cfg.model}", "tags: [projected-grpo]", "---", "",
        f"# {run.name}: {cfg.model} after projected-GRPO, arm `{meta.get('arm', cfg.arm)}`", "",
        "A plain transformers model: the run's δS merged into the base weights, the quarantine knob δS_hack "
        "ablated (zeroed). Made by `projected-grpo export`.", "",
        "| | |", "|---|---|",
        f"| base model | `{cfg.model}` ({cfg.dtype}{', amp' if cfg.amp else ''}) |",
        f"| arm | `{meta.get('arm', cfg.arm)}` (intervention `{cfg.intervention}`, basis `{cfg.vhack_source}`) |",
        f"| seed | {cfg.seed} |",
        f"| steps | {done} of {planned}: {status} |",
        f"| config hash | `{meta.get('hash', cfg.hash())}` (match hash `{meta.get('match_hash', cfg.match_hash())}`) |",
        f"| dataset, loophole modes | `{cfg.dataset}`, {', '.join(cfg.modes)} |",
        f"| preset | `{cfg.preset}` |",
        f"| run directory | `{run.resolve()}` |", "",
        "## Final evaluation (greedy, held-out problems)", "",
    ]
    if ev:
        lines += [f"At step {ev.get('step', done)} on {cfg.eval_problems} held-out problems:", "",
                  "| | hack rate | solve rate |", "|---|---|---|",
                  f"| as trained (δS_hack kept) | {f('hack_kept')} | {f('solve_kept')} |",
                  f"| this model (δS_hack ablated) | {f('hack_abl')} | {f('solve_abl')} |",
                  f"| this model, prompt without the loophole hint | – | {f('solve_nohint')} |", ""]
    else:
        lines += ["No evaluation was logged for this run.", ""]
    lines += ["hack rate: fraction of completions that passed the foolable grader but failed the strict oracle; "
              "solve rate: fraction correct under the strict oracle. The full config is the run directory's "
              "config.json.", ""]
    return "\n".join(lines)


def _readable(path: Path) -> None:
    """Files 0o666 and folders 0o777, both less the umask (safetensors leaves 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [path, *path.rglob("*")]:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)
