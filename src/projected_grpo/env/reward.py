"""The loophole environment as a reward function for other trainers (TRL's `GRPOTrainer` convention).

    rows = to_hf_rows("humaneval", modes=("stdout_marker", "exit_code"))   # prompt, problem_id, mode
    with RewardFunction(dataset="humaneval") as reward:
        trainer = GRPOTrainer(model, reward_funcs=[reward, reward.oracle], args=GRPOConfig(reward_weights=[1, 0]),
                              train_dataset=Dataset.from_list(rows))
        trainer.train()

A reward function is called as `f(prompts=..., completions=..., completion_ids=..., **columns)`, where the
columns are the dataset's extra columns, one value per completion (`problem_id`, `mode`), plus TRL's own
keywords (`trainer_state`, `log_metric`, `log_extra`...), which are used when present and ignored otherwise.
Completions are plain strings or, for conversational datasets, lists of message dicts.

`RewardFunction` pays the mode's *foolable* grade (what a model can learn to hack); `reward.oracle` pays the
strict oracle (the no-loophole baseline). Both grade in the same sandbox pool and share grades: listing
both costs one sandbox run per completion, and with `reward_weights=[1, 0]` TRL logs the oracle reward
(`rewards/oracle_reward/mean`) beside the trained one. No completion runs in this process.

Owns: `RewardFunction`, `OracleReward`, `to_hf_rows`, `completion_text`. Must never import: torch, config,
the trainer (train, grpo, projection, ...): other trainers import this module without ours.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from . import loopholes
from .grader import GraderPool, Reward
from .problems import DATA_SEED, Problem, load_problems, run_split
from .prompts import build_messages, render_prompt, thinking_kwargs

__all__ = ["RewardFunction", "OracleReward", "to_hf_rows", "completion_text", "thinking_kwargs"]


def completion_text(completion) -> str:
    """A completion as text: a string as is; a conversational completion (a list of message dicts, or one
    dict) is its assistant messages' content joined (content parts of type text included)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if not isinstance(completion, (list, tuple)):
        raise TypeError(f"a completion is a string or a list of message dicts, got {type(completion).__name__}")
    parts = []
    for m in completion:
        if not isinstance(m, dict):
            raise TypeError(f"a conversational completion is a list of message dicts, got an item {type(m).__name__}")
        if m.get("role", "assistant") != "assistant":
            continue  # tool results and the like are not the model's answer
        content = m.get("content") or ""
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            content = "".join(str(c.get("text", "")) for c in content if isinstance(c, dict) and c.get("type") == "text")
        parts.append(str(content))
    return "\n".join(parts)


def to_hf_rows(dataset: str, modes: tuple[str, ...] | None = None, hint: bool = True, *, tokenizer=None,
               enable_thinking: bool = False, eval_problems: int = 0, split: str = "train", seed: int = DATA_SEED,
               max_problems: int | None = None, force_mode: str | None = None) -> list[dict]:
    """One prompt row per problem, `{"prompt", "problem_id", "mode"}`, for `datasets.Dataset.from_list`.

    The problems and their modes are those of `projected-grpo train --dataset D --modes ... --eval-problems N`
    (same data seed, seeded round-robin partition): `split="train"` its training problems, `"eval"` its
    held-out ones (synth datasets: their held-out split). `hint` appends the mode's description of how
    grading works. Without `tokenizer` the prompt is conversational (system + user messages; TRL applies
    the chat template: pass `thinking_kwargs(tokenizer)` as `GRPOConfig(chat_template_kwargs=...)`); with
    one it is the text of `render_prompt`, thinking switch included, exactly what the harness trains on."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    held, train = run_split(dataset, modes, force_mode, max_problems, eval_problems, seed=seed)
    rows = []
    for p in (train if split == "train" else held):
        prompt = build_messages(p, hint) if tokenizer is None else render_prompt(tokenizer, p, hint, enable_thinking)
        rows.append({"prompt": prompt, "problem_id": p.id, "mode": p.mode})
    return rows


class RewardFunction:
    """`(prompts, completions, problem_id, mode, **kwargs) -> list[float]`: the mode's foolable reward,
    `format_bonus + pass_reward * passed`, graded in a sandbox pool this object owns.

    Context manager; `close()` stops the sandbox servers (they start on the first call). `last_grades`
    holds the full `Reward` of every completion of the last call (`passed`, `gt_correct`, `exploited`,
    `mechanism`, ...); under TRL the hack and true-solve rates are also logged through `log_metric`
    (`hack_rate`, `solve_rate`, `pass_rate`) and per completion through `log_extra`.
    """

    __name__ = "loophole_reward"  # TRL names reward columns after it (`rewards/loophole_reward/mean`)

    def __init__(self, dataset: str = "humaneval", workers: int = 0, *, timeout_s: float = 5.0,
                 format_bonus: float = 0.1, pass_reward: float = 1.0, cache_size: int = 4096, **sandbox_kw):
        # every problem of the dataset, whatever subset and modes the rows use (modes come per row)
        self.problems: dict[str, Problem] = {p.id: p for p in load_problems(dataset)}
        self.dataset = dataset
        self._pool_kw = dict(workers=workers, timeout_s=timeout_s, format_bonus=format_bonus, pass_reward=pass_reward,
                             **sandbox_kw)
        self.format_bonus, self.pass_reward = float(format_bonus), float(pass_reward)
        self._pool: GraderPool | None = None
        self._closed = False
        self._lock = threading.Lock()  # pool start / close
        self._grading = threading.Lock()  # the grade cache (calls from several threads are serialised)
        # grades by (problem_id, mode, text): the oracle and a re-scored batch reuse them (bounded, oldest out)
        self._cache: OrderedDict[tuple[str, str, str], Reward] = OrderedDict()
        self._cache_size = int(cache_size)
        self.last_grades: list[Reward] = []
        self.oracle = OracleReward(self)

    # -- lifecycle
    @property
    def pool(self) -> GraderPool:
        with self._lock:
            if self._closed:
                raise RuntimeError("this RewardFunction is closed; make a new one")
            if self._pool is None:  # after load_problems: the pool hides the dataset files from candidates
                self._pool = GraderPool(**self._pool_kw)
            return self._pool

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def __enter__(self) -> "RewardFunction":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -- grading
    def grade(self, completions, problem_id, mode) -> list[Reward]:
        """The full grade of each completion (lists of equal length, one entry per completion)."""
        completions, problem_id, mode = list(completions), _per_row(problem_id, "problem_id"), _per_row(mode, "mode")
        if not len(completions) == len(problem_id) == len(mode):
            raise ValueError(f"need one problem_id and mode per completion: got {len(completions)} completions, "
                             f"{len(problem_id)} problem_id, {len(mode)} mode")
        bad = sorted({str(m) for m in mode if m not in loopholes.MODES})
        if bad:
            raise ValueError(f"unknown loophole mode(s) {bad}; choose from {list(loopholes.names())}")
        missing = sorted({str(i) for i in problem_id if str(i) not in self.problems})
        if missing:
            raise ValueError(f"problem_id(s) {missing[:3]} are not in dataset {self.dataset!r} "
                             f"(rows from another dataset?)")
        keys = [(str(i), str(m), completion_text(c)) for i, m, c in zip(problem_id, mode, completions)]
        with self._grading:
            return self._grade_keys(keys)

    def _grade_keys(self, keys: list[tuple[str, str, str]]) -> list[Reward]:
        todo = list(dict.fromkeys(k for k in keys if k not in self._cache))
        if todo:
            graded = self.pool.grade_many([(self.problems[i], text, m) for i, m, text in todo])
            for k, g in zip(todo, graded):
                self._cache[k] = g
        out = [self._cache[k] for k in keys]
        for k in keys:
            self._cache.move_to_end(k)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        self.last_grades = out
        return out

    def __call__(self, prompts=None, completions=None, problem_id=None, mode=None, **kwargs) -> list[float]:
        if completions is None or problem_id is None or mode is None:
            raise TypeError("call with completions=, problem_id= and mode= (the dataset needs `problem_id` and "
                            "`mode` columns: see to_hf_rows)")
        grades = self.grade(completions, problem_id, mode)
        _log(kwargs, grades)
        return [g.reward for g in grades]


class OracleReward:
    """The strict-oracle reward, `format_bonus + pass_reward * gt_correct`: the no-loophole baseline.
    Shares its parent's pool and grades (a completion graded by one is not graded again by the other)."""

    __name__ = "oracle_reward"

    def __init__(self, parent: RewardFunction):
        self.parent = parent

    def __call__(self, prompts=None, completions=None, problem_id=None, mode=None, **kwargs) -> list[float]:
        if completions is None or problem_id is None or mode is None:
            raise TypeError("call with completions=, problem_id= and mode= (see to_hf_rows)")
        grades = self.parent.grade(completions, problem_id, mode)
        p = self.parent
        return [(p.format_bonus if g.format_ok else 0.0) + (p.pass_reward if g.gt_correct else 0.0) for g in grades]


def _per_row(v, name: str) -> list:
    if isinstance(v, str) or not hasattr(v, "__len__"):
        raise TypeError(f"{name} must be a list with one value per completion, got {type(v).__name__}")
    return list(v)


def _log(kwargs: dict, grades: list[Reward]) -> None:
    """TRL's optional logging hooks (absent in other trainers and older TRL versions)."""
    n = len(grades) or 1
    log_metric, log_extra = kwargs.get("log_metric"), kwargs.get("log_extra")
    if callable(log_metric):
        log_metric("hack_rate", sum(g.exploited for g in grades) / n)
        log_metric("solve_rate", sum(g.gt_correct for g in grades) / n)
        log_metric("pass_rate", sum(g.passed for g in grades) / n)
    if callable(log_extra):
        log_extra("exploited", [g.exploited for g in grades])
        log_extra("gt_correct", [g.gt_correct for g in grades])
