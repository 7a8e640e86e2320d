"""`projected-grpo export RUN_DIR --out DIR`: the deployable model of a run, with a model card.

The model is a plain transformers folder: δS merged into the base weights, δS_hack ablated (zeroed),
no adapter code needed to load it. Next to it, ``README.md`` says what it is (base model, arm, steps
done of planned, config hash, the final greedy evaluation), so a folder found later explains itself.
An unfinished run (no ``summary.json``, or a checkpoint short of the planned steps) is refused unless
``allow_partial``; its card then says so. Files are written readable by others (``0o666 & ~umask``):
safetensors' temp-file writes would otherwise leave them 0600.

Owns turning a run into a plain transformers model; must never import train, report, study or sweep.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import rundir
from .config import Config, ConfigError


def read_run_config(run: Path) -> tuple[dict, Config]:
    """(config.json's object, its Config), or a ConfigError naming the file."""
    try:
        return rundir.read_config(run)
    except rundir.RunDirError as e:
        raise ConfigError(f"{e}; export a run directory written by `train`") from None


def export_run(run_dir: str | Path, out: str | Path, allow_partial: bool = False) -> Path:
    """Merge the run's δS (δS_hack ablated) into its base model, save it to ``out`` with a model card."""
    import torch

    from .adapter import SVDAdapter
    from .models import check_model, load_model
    from .models import resolve_device

    run = Path(run_dir)
    rundir.knob_file(run)  # a run dir with a checkpoint, before anything else is read
    _check_out(Path(out).expanduser())
    meta, cfg = read_run_config(run)
    device, dtype = resolve_device(cfg)
    dtype = getattr(torch, rundir.knob_dtype(run, str(dtype).removeprefix("torch.")))  # the knobs' own dtype
    done, planned, finished = rundir.progress(run)
    if not finished and not allow_partial:
        raise ConfigError(f"{run} is unfinished ({done} of {planned} steps{'' if done < planned else ', no summary.json'}); "
                          f"resume it with `projected-grpo train --run-dir {run} --resume ...`, or export it "
                          f"anyway with --allow-partial")
    check_model(cfg.model)
    model, tok = load_model(cfg.model, dtype, device)
    adapter = SVDAdapter.attach(model, cfg.target_modules, cfg.layers, cfg.adapter_rank)
    rundir.restore(run, adapter)
    path = adapter.export(out, tok)
    (path / "README.md").write_text(model_card(run, cfg, meta, done, planned, finished))
    _readable(path)
    return path


def _check_out(out: Path) -> None:
    """Refuse an --out the export would damage: a file, or a run directory (save_pretrained writes its own
    config.json over the run's). A previous export's folder is fine: it is overwritten, as asked."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the exported model")
    holds_run = rundir.is_started(out)
    if not holds_run and rundir.is_run(out):
        try:  # a run's config.json (a sweep writes one at plan time), not a transformers one
            rundir.read_config(out)
            holds_run = True
        except rundir.RunDirError:
            pass
    if holds_run:
        raise ConfigError(f"--out {out} holds a run directory: the model's config.json would overwrite the run's; "
                          f"pick a new or empty folder")


def model_card(run: Path, cfg: Config, meta: dict, done: int, planned: int, finished: bool) -> str:
    """A markdown model card with a YAML header (the hub's `base_model` key)."""
    ev = rundir.final_eval(run)
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
