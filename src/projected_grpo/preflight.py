"""Checks of a training config that need no model weights and write nothing, run before the run directory is
opened and before any model loads: a mistake costs seconds, not a model load, an SVD and a teacher pool.

Owns: the order of the early checks. Never imports train (train calls `preflight`).
"""

from __future__ import annotations

from pathlib import Path

from .config import Config, ConfigError, layers_beyond
from .env.pool import TeacherPool
from .env.problems import DATA_SEED, load_problems, split_problems
from .models import check_model
from .tracking import check_tracker



def preflight(cfg: Config) -> None:
    """Raise a UserError (one line, what and how to fix) for anything that would fail later in set-up."""
    cfg.validate()
    check_tracker(cfg.tracker)
    try:  # only the count matters here, and it does not depend on the split seed
        problems = load_problems(cfg.dataset, seed=DATA_SEED, modes=cfg.modes, force_mode=cfg.force_mode,
                                 max_problems=cfg.max_problems)
    except (ValueError, OSError) as e:
        raise ConfigError(f"--dataset {cfg.dataset.rstrip(':')}: {e}") from None
    if len(problems) <= cfg.eval_problems and not any(p.split for p in problems):  # synth: split_problems says
        raise ConfigError(f"--dataset {cfg.dataset} has {len(problems)} problems; need more than "
                          f"--eval-problems {cfg.eval_problems} (lower --eval-problems or raise --max-problems)")
    try:
        n_train = len(split_problems(problems, cfg.eval_problems)[1])
    except ValueError as e:
        raise ConfigError(f"--dataset {cfg.dataset} {e}") from None
    if cfg.prompts_per_step > n_train:  # a step samples distinct problems: more would be fewer rows, normalised by P
        raise ConfigError(f"--prompts-per-step {cfg.prompts_per_step} exceeds the {n_train} training problems of "
                          f"--dataset {cfg.dataset} (a step samples distinct problems); lower --prompts-per-step or "
                          f"raise --max-problems")
    if cfg.teacher_pool is not None and cfg.teacher_per_group > 0:
        if not Path(cfg.teacher_pool).is_file():
            raise ConfigError(f"--teacher-pool {cfg.teacher_pool}: no such file")
        try:
            TeacherPool.load(cfg.teacher_pool)
        except (ValueError, OSError) as e:
            raise ConfigError(f"--teacher-pool {cfg.teacher_pool}: {e}") from None
    hf_cfg = check_model(cfg.model, cfg.rollout_backend)
    if cfg.layers is not None:
        check_layers(cfg.layers, hf_cfg)
    check_context(cfg.max_new_tokens, hf_cfg)


def check_context(max_new_tokens: int, hf_cfg) -> None:
    """The completion budget fits the model's context (a budget past it generated for hours, or sized a fast-backend
    KV cache for it); the prompt shares the context, so the budget must be below it."""
    n_ctx = getattr(_text_config(hf_cfg), "max_position_embeddings", None)
    if isinstance(n_ctx, int) and max_new_tokens >= n_ctx:
        raise ConfigError(f"--max-new-tokens {max_new_tokens} does not fit the model's context of {n_ctx} positions "
                          f"(max_position_embeddings), prompt included; lower --max-new-tokens")


def _text_config(hf_cfg):
    return hf_cfg.get_text_config() if hasattr(hf_cfg, "get_text_config") else hf_cfg


def check_layers(spec: str, hf_cfg) -> None:
    """--layers within the model's decoder layers, from its config (no weights); the adapter checks again on the
    loaded model's module names (SVDAdapter.attach), for a config that does not say its layer count."""
    n = getattr(_text_config(hf_cfg), "num_hidden_layers", None)
    if not isinstance(n, int) or n <= 0:
        return
    if error := layers_beyond(spec, n):
        raise ConfigError(error)


def check_checkpoint(ckpt: Path) -> None:
    """A resumed run's knob and basis files open as safetensors (a truncated or foreign file fails here, in
    one line, instead of after the model load). Data bytes carry no checksum: only the layout is checked."""
    from safetensors import safe_open

    from .rundir import KNOBS, VHACK

    for name in (KNOBS, VHACK):
        f = ckpt / name
        try:
            with safe_open(str(f), "pt") as h:
                h.keys()
        except Exception as e:  # noqa: BLE001 - SafetensorError, OSError...: the same problem for the user
            raise ConfigError(f"{f} is unreadable ({type(e).__name__}); the checkpoint is corrupt: restore it, "
                              f"or delete {ckpt.parent} (or pick another --run-dir) to start over") from None
