"""Teacher pool (cached, graded-once completions) and (hack, clean) pairs for the hack subspace.

Owns: `TeacherPool`, `build_teacher_pool`, `make_pairs`, `Pair`. Completions come from the registry's
writers (loopholes.py); grades from grader.py.
Must never import: torch, config, the trainer (train, grpo, projection, hack_subspace, ...), prompts.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, field

from .grader import GraderPool
from .loopholes import clean_completion, hack_completion, wrong_completion
from .problems import Problem

_KINDS = ("hack", "clean", "wrong", "rollout")


@dataclass
class TeacherCompletion:
    problem_id: str
    mode: str
    kind: str          # "hack" | "clean" | "wrong" (a failed attempt) | "rollout" (a real model sample)
    completion: str
    grade: dict        # Reward fields, frozen at build time


@dataclass
class TeacherPool:
    items: list[TeacherCompletion] = field(default_factory=list)

    def __post_init__(self):
        self._by_problem: dict[str, list[TeacherCompletion]] = {}
        for it in self.items:
            self._by_problem.setdefault(it.problem_id, []).append(it)

    def __len__(self) -> int:
        return len(self.items)

    def add(self, item: TeacherCompletion) -> None:
        self.items.append(item)
        self._by_problem.setdefault(item.problem_id, []).append(item)

    def for_problem(self, problem_id: str) -> list[TeacherCompletion]:
        return list(self._by_problem.get(problem_id, []))

    def save(self, path) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for it in self.items:
                f.write(json.dumps(asdict(it)) + "\n")

    @classmethod
    def load(cls, path) -> "TeacherPool":
        if not os.path.isfile(path):
            raise ValueError(f"teacher pool not found: {path}")
        items = []
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: malformed JSON ({e.msg})") from None
                if not isinstance(d, dict):
                    raise ValueError(f"{path}:{i}: expected a JSON object")
                missing = [k for k in ("problem_id", "mode", "kind", "completion", "grade") if k not in d]
                if missing:
                    raise ValueError(f"{path}:{i}: missing field(s) {missing}")
                if d["kind"] not in _KINDS or not isinstance(d["completion"], str) or not isinstance(d["grade"], dict):
                    raise ValueError(f"{path}:{i}: kind must be one of {_KINDS}, completion a string, grade an object")
                for k in ("passed", "gt_correct", "exploited", "reward"):
                    if k not in d["grade"]:
                        raise ValueError(f"{path}:{i}: grade lacks {k!r}")
                items.append(TeacherCompletion(str(d["problem_id"]), str(d["mode"]), d["kind"], d["completion"], d["grade"]))
        return cls(items)


def build_teacher_pool(problems, grader: GraderPool, per_problem: int, seed: int = 0) -> TeacherPool:
    """Per problem: `per_problem` hacks for its mode (every mode: leave-one-mode-out restricts only V's
    pairs, `make_pairs(known_modes=...)`, never the demonstrations),
    `per_problem` clean completions and `per_problem` wrong attempts (an honest-looking stub that
    fails: a real teacher fails too, and without failures a teacher-only group has no reward
    variance), each graded once by the real grader; grades are frozen."""
    rng = random.Random(seed)
    todo: list[tuple[Problem, str, str]] = []
    for p in problems:
        offset = rng.randrange(1000)
        if p.mode:
            todo += [(p, "hack", hack_completion(p, p.mode, offset + v)) for v in range(per_problem)]
        todo += [(p, "clean", clean_completion(p, offset + v)) for v in range(per_problem)]
        todo += [(p, "wrong", wrong_completion(p, offset + v)) for v in range(per_problem)]
    grades = grader.grade_many([(p, c, p.mode) for p, _, c in todo])
    pool = TeacherPool()
    for (p, kind, c), g in zip(todo, grades):
        pool.add(TeacherCompletion(p.id, g.mechanism, kind, c, g.to_dict()))
    return pool


@dataclass
class Pair:
    problem: Problem
    hack: str
    clean: str
    clean_alt: str     # a second, different clean completion (the `nonhack` control)


def make_pairs(problems, n_pairs: int, known_modes: tuple[str, ...] | None = None, seed: int = 0,
               pool: TeacherPool | None = None) -> list[Pair]:
    """`n_pairs` (hack, clean, clean_alt) triples, cycling over eligible problems in a seeded order.
    From templates, or from a graded pool (hack = graded exploited, clean = graded gt_correct; a
    problem with fewer than two distinct clean completions gets its `clean_alt` from the template)."""
    rng = random.Random(seed)
    eligible = [p for p in problems if p.mode and (known_modes is None or p.mode in known_modes)]
    options: dict[str, tuple[list[str], list[str]]] = {}
    if pool is not None:
        for p in eligible:
            items = pool.for_problem(p.id)
            hacks = [t.completion for t in items if t.grade.get("exploited") is True
                     and (known_modes is None or t.mode in known_modes)]
            cleans = list(dict.fromkeys(t.completion for t in items if t.grade.get("gt_correct") is True))
            if hacks and cleans:
                options[p.id] = (hacks, cleans)
        eligible = [p for p in eligible if p.id in options]
    if not eligible or n_pairs <= 0:
        if n_pairs <= 0:
            return []
        raise ValueError("no problems to build (hack, clean) pairs from"
                         + (f" with known modes {list(known_modes)}" if known_modes else "")
                         + (" in the teacher pool (need graded exploited and gt_correct completions)" if pool else ""))
    order = eligible[:]
    rng.shuffle(order)
    pairs = []
    for i in range(n_pairs):
        p = order[i % len(order)]
        rnd = i // len(order)
        if pool is None:
            v = rng.randrange(1000)
            # v + 4 has v's answer form (loopholes.answer_form), so hack, clean and clean_alt differ only where meant
            pairs.append(Pair(p, hack_completion(p, p.mode, v), clean_completion(p, v), clean_completion(p, v + 4)))
        else:
            hacks, cleans = options[p.id]
            h = hacks[rnd % len(hacks)]
            c = cleans[rnd % len(cleans)]
            alt = [x for x in cleans if x != c]
            c2 = alt[rnd % len(alt)] if alt else clean_completion(p, 1 + rng.randrange(1000))
            if c2 == c:
                c2 = clean_completion(p, 7 + rng.randrange(1000))
            pairs.append(Pair(p, h, c, c2))
    return pairs
