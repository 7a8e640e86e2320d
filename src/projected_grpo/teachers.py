"""The run's teacher pool: loaded from --teacher-pool, or built once and cached by its content key.

Owns: `teacher_pool`. Used by train.setup and the warm start (warmstart.py), so neither imports the
other for it. Must never import: train, warmstart (they import this module).
"""

from __future__ import annotations

import os
from pathlib import Path

from .cachekey import teacher_pool_key
from .config import Config, ConfigError
from .env.grader import GraderPool
from .env.pool import TeacherPool, build_teacher_pool
from .env.problems import DATA_SEED, Problem
from .models import cache_dir


def teacher_pool(cfg: Config, problems: list[Problem], grader: GraderPool, note) -> TeacherPool:
    if cfg.teacher_pool is not None:
        if not Path(cfg.teacher_pool).exists():
            raise ConfigError(f"--teacher-pool {cfg.teacher_pool}: no such file")
        try:
            return TeacherPool.load(cfg.teacher_pool)
        except ValueError as e:
            raise ConfigError(f"--teacher-pool {cfg.teacher_pool}: {e}") from e
    # every mode's demonstrations: vhack_known_modes restricts V's pairs only (leave-one-mode-out)
    path = cache_dir() / "pools" / f"{teacher_pool_key(cfg, problems)}.jsonl"  # content, grader, sandbox, code
    if path.exists():
        return TeacherPool.load(path)
    note(f"building the teacher pool ({len(problems)} problems, graded once)")
    pool = build_teacher_pool(problems, grader, cfg.teacher_per_problem, seed=DATA_SEED)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    pool.save(tmp)
    tmp.replace(path)
    return pool
