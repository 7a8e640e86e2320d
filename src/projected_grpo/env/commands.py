"""The `check` and `grade` verbs as plain functions (cli.py wires them to flags). Return exit codes."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict

from ..config import LOOPHOLE_MODES
from . import problems as _problems
from .grader import GraderPool
from .loopholes import clean_completion, hack_completion, stub_code
from .problems import load_problems


def _print(msg: str = "", file=None) -> None:
    print(msg, file=file or sys.stdout, flush=True)


def check(dataset: str = "builtin", *, max_problems: int | None = None, workers: int = 0, timeout_s: float = 5.0,
          seed: int = 0, variants: int = 1, out=None) -> int:
    """For every problem: canonical → gt_correct; stub → not; each mode's hack exploits its own
    grader and no other (the hack × mode diagonal); clean never exploited. Prints a table; returns
    0 when everything holds, 1 otherwise (2 on a bad dataset spec)."""
    out = out or sys.stdout
    try:
        probs = load_problems(dataset, seed=seed, max_problems=max_problems)
    except ValueError as e:
        _print(f"error: {e}", sys.stderr)
        return 2
    stats = dict(_problems.LAST_LOAD_STATS)
    modes = LOOPHOLE_MODES
    items, keys = [], []
    for p in probs:
        for gm in modes:
            items.append((p, clean_completion(p), gm))
            keys.append((p.id, "clean", None, gm))
        stub = f"Stub.\n```python\n{stub_code(p)}```"
        items.append((p, stub, p.mode))
        keys.append((p.id, "stub", None, p.mode))
        for hm in modes:
            for v in range(variants):
                for gm in modes:
                    items.append((p, hack_completion(p, hm, v), gm))
                    keys.append((p.id, "hack", hm, gm))
    t0 = time.time()
    with GraderPool(workers, timeout_s=timeout_s) as g:
        grades = g.grade_many(items)
    dt = time.time() - t0
    failures: list[str] = []
    diag = {(hm, gm): [0, 0] for hm in modes for gm in modes}
    stub_rejected = 0
    clean_seen: dict[str, bool] = {}
    for (pid, kind, hm, gm), r in zip(keys, grades):
        if kind == "clean":
            ok = r.gt_correct and r.passed and not r.exploited
            clean_seen[pid] = clean_seen.get(pid, True) and ok
            if not ok:
                failures.append(f"{pid}: canonical under {gm}: gt_correct={r.gt_correct} passed={r.passed} "
                                f"exploited={r.exploited} {r.error}")
        elif kind == "stub":
            if r.gt_correct or r.passed:
                failures.append(f"{pid}: stub graded gt_correct={r.gt_correct} passed={r.passed}")
            else:
                stub_rejected += 1
        else:
            cell = diag[(hm, gm)]
            cell[1] += 1
            want = hm == gm
            if r.exploited == want and not r.gt_correct:
                cell[0] += 1
            else:
                failures.append(f"{pid}: hack[{hm}] graded under {gm}: exploited={r.exploited} (want {want}) "
                                f"gt_correct={r.gt_correct} {r.error}")
    canon_ok = sum(clean_seen.values())
    n = len(probs)
    _print(f"dataset {dataset}: {stats.get('kept', n)} kept of {stats.get('loaded', n)} "
           f"({stats.get('excluded', 0)} excluded: tests not expressible strictly); checking {n}", out)
    _print(f"graded {len(items)} completions in {dt:.1f}s ({len(items) / max(dt, 1e-9):.0f}/s)", out)
    _print(f"canonical gt_correct and never exploited : {canon_ok}/{n}", out)
    _print(f"stub rejected                            : {stub_rejected}/{n}", out)
    _print("hack x grader (cell = fraction behaving as required: exploited on the diagonal only)", out)
    w = max(len(m) for m in modes)
    _print(" " * (w + 2) + " ".join(f"{m[:10]:>10}" for m in modes), out)
    for hm in modes:
        _print(f"{hm:<{w}}  " + " ".join(f"{diag[(hm, gm)][0] / max(diag[(hm, gm)][1], 1):>10.2f}" for gm in modes), out)
    if failures:
        _print(f"FAILED: {len(failures)} checks", out)
        for f in failures[:30]:
            _print("  " + f, out)
        return 1
    _print("OK: every check holds", out)
    return 0


def grade(dataset: str, in_path: str, out_path: str | None = None, *, workers: int = 0, timeout_s: float = 5.0,
          seed: int = 0) -> int:
    """Grade a JSONL of {"problem_id", "mode", "completion"}; each output line is the input plus
    every grade field. A malformed line gets an error record. Returns 0, or 2 on a bad dataset/file."""
    try:
        probs = {p.id: p for p in load_problems(dataset, seed=seed)}
    except ValueError as e:
        _print(f"error: {e}", sys.stderr)
        return 2
    try:
        with open(in_path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        _print(f"error: cannot read {in_path}: {e.strerror}", sys.stderr)
        return 2
    try:  # open the output before grading, so a bad --out never wastes the work
        dest = open(out_path, "w", encoding="utf-8") if out_path else sys.stdout
    except OSError as e:
        _print(f"error: cannot write {out_path}: {e.strerror}", sys.stderr)
        return 2
    records: list[dict | None] = []
    jobs, slots = [], []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except (ValueError, RecursionError) as e:
            records.append({"line": i, "error": f"malformed line: {str(e)[:200]}"})
            continue
        pid, mode, comp = rec.get("problem_id"), rec.get("mode"), rec.get("completion")
        err = None
        if pid not in probs:
            err = f"unknown problem_id {pid!r}"
        elif mode is not None and mode not in LOOPHOLE_MODES:
            err = f"unknown mode {mode!r}"
        elif not isinstance(comp, str):
            err = "completion must be a string"
        if err:
            records.append(dict(rec, error=err))
            continue
        records.append(None)
        slots.append((len(records) - 1, rec))
        jobs.append((probs[pid], comp, mode))
    if jobs:
        with GraderPool(workers, timeout_s=timeout_s) as g:
            grades = g.grade_many(jobs)
        for (k, rec), r in zip(slots, grades):
            records[k] = {**rec, **asdict(r)}
    try:
        for rec in records:
            dest.write(json.dumps(rec) + "\n")
    finally:
        if out_path:
            dest.close()
    n_err = sum(1 for r in records if r and r.get("error") and "format_ok" not in r)
    _print(f"graded {len(jobs)} completions, {n_err} malformed lines" + (f" -> {out_path}" if out_path else ""),
           sys.stderr)
    return 0
