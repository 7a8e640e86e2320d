"""The `check` and `grade` verbs as plain functions (cli.py wires them to flags). Return exit codes.

`check` protects the loophole registry: every registered mode, both template families, on every problem.
Owns: `check`, `registry_problems`, `grade`. Must never import: torch, config, cli, the trainer.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from . import loopholes
from . import problems as _problems
from .grader import GraderPool
from .loopholes import clean_completion, hack_completion, stub_code
from .problems import load_problems


def _print(msg: str = "", file=None) -> None:
    print(msg, file=file or sys.stdout, flush=True)


def check(dataset: str = "builtin", *, max_problems: int | None = None, workers: int = 0, timeout_s: float = 5.0,
          seed: int = 0, variants: int = 1, out=None) -> int:
    """Protects the loophole registry (every registered mode, both template families). For every problem:
    canonical → gt_correct; stub → not; each mode's hack (primary and alt templates) exploits its own
    grader and no other (the hack × mode diagonal) and is flagged by its own detector; clean never
    exploited. Each registry entry must also be complete (`registry_problems`). Prints a table; returns 0
    when everything holds, 1 otherwise (2 on a bad dataset spec)."""
    out = out or sys.stdout
    try:
        probs = load_problems(dataset, seed=seed, max_problems=max_problems)
    except ValueError as e:
        _print(f"error: --dataset {dataset.rstrip(':')}: {e}", sys.stderr)
        return 2
    stats = dict(_problems.LAST_LOAD_STATS)
    modes = loopholes.names()
    failures: list[str] = registry_problems()
    items, keys = [], []
    for p in probs:
        for gm in modes:
            items.append((p, clean_completion(p), gm))
            keys.append((p.id, "clean", None, gm))
        stub = f"Stub.\n```python\n{stub_code(p)}```"
        items.append((p, stub, p.mode))
        keys.append((p.id, "stub", None, p.mode))
        for hm in modes:
            for fam in loopholes.FAMILIES:
                for v in range(variants):
                    for gm in modes:
                        items.append((p, hack_completion(p, hm, v, family=fam), gm))
                        keys.append((p.id, "hack", (hm, fam), gm))
    t0 = time.time()
    with GraderPool(workers, timeout_s=timeout_s) as g:
        grades = g.grade_many(items)
    dt = time.time() - t0
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
            (hm, fam) = hm
            cell = diag[(hm, gm)]
            cell[1] += 1
            want = hm == gm
            if r.exploited == want and not r.gt_correct and (not want or r.exploit_code):
                cell[0] += 1
            else:
                failures.append(f"{pid}: hack[{hm}, {fam}] graded under {gm}: exploited={r.exploited} (want {want}) "
                                f"exploit_code={r.exploit_code} gt_correct={r.gt_correct} {r.error}")
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


def registry_problems() -> list[str]:
    """What is incomplete in the loophole registry, one line per problem found: every entry needs a hint,
    what its flawed grader reads for both answer forms, probes the harness can collect, and both template
    families. (What the templates do when graded is checked by `check` on real problems.)"""
    from .harness import CAPABILITIES
    bad = []
    for name in loopholes.names():
        m = loopholes.get(name)
        if not (isinstance(m.hint, str) and m.hint.strip()):
            bad.append(f"mode {name}: no hint")
        if set(m.flaw_signals) != set(loopholes.FORMS):
            bad.append(f"mode {name}: flaw_signals must cover the forms {list(loopholes.FORMS)}")
        for cap in m.probes:
            if len(cap) != 2 or cap[0] not in CAPABILITIES or not isinstance(cap[1], str):
                bad.append(f"mode {name}: probe {cap!r} is not (capability, name) with a capability in {list(CAPABILITIES)}")
        for fam, fn in (("templates", m.templates), ("alt_templates", m.alt_templates)):
            if not callable(fn):
                bad.append(f"mode {name}: {fam} is not callable")
    return bad


MAX_LINE_BYTES = 1 << 20  # a longer input line is refused with an error record, never read whole


def _read_lines(f, limit: int = MAX_LINE_BYTES):
    """(line number, bytes) per line of a binary file; bytes is None for a line over ``limit`` bytes (its
    rest is skipped in chunks, so a huge line never sits in memory)."""
    i = 0
    while True:
        raw = f.readline(limit + 1)
        if not raw:
            return
        i += 1
        if len(raw) > limit and not raw.endswith(b"\n"):
            while (chunk := f.readline(limit)) and not chunk.endswith(b"\n"):
                pass
            yield i, None
        else:
            yield i, raw.rstrip(b"\r\n")


def _mode_of(rec: dict, default: str | None) -> str | None:
    return rec["mode"] if rec.get("mode") is not None else default


def _parse(raw: bytes | None, probs: dict, default_mode: str | None) -> tuple[dict | None, str | None]:
    """One input line → (record, error). record is None when the line is not a JSON object at all."""
    if raw is None:
        return None, f"line longer than {MAX_LINE_BYTES} bytes"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})"
    try:
        rec = json.loads(text)
    except (ValueError, RecursionError) as e:
        return None, f"malformed line: {str(e)[:200]}"
    if not isinstance(rec, dict):
        return None, "malformed line: not a JSON object"
    pid, mode, comp = rec.get("problem_id"), _mode_of(rec, default_mode), rec.get("completion")
    if not isinstance(pid, str) or pid not in probs:
        return rec, f"unknown problem_id {pid!r}"
    if mode is None:
        return rec, "no mode: give the line a \"mode\" or pass --mode MODE for lines without one"
    if mode not in loopholes.MODES:
        return rec, f"unknown mode {mode!r}; choose from {list(loopholes.names())}"
    if not isinstance(comp, str):
        return rec, "completion must be a string"
    return rec, None


def grade(dataset: str, in_path: str, out_path: str | None = None, *, workers: int = 0, timeout_s: float = 5.0,
          seed: int = 0, mode: str | None = None) -> int:
    """Grade a JSONL of {"problem_id", "mode", "completion"}; each output line is the input plus every grade
    field (graded under the line's mode, or ``mode`` for lines without one). A bad line (malformed JSON,
    not UTF-8, longer than MAX_LINE_BYTES, unknown problem or mode, no mode) gets an error record and the
    others are still graded. Returns 0 when every line was graded, 1 when some were not, 2 on a bad
    dataset, file or --mode."""
    if mode is not None and mode not in loopholes.MODES:
        _print(f"error: --mode {mode!r} is not a loophole mode; choose from {list(loopholes.names())}", sys.stderr)
        return 2
    try:
        probs = {p.id: p for p in load_problems(dataset, seed=seed)}
    except ValueError as e:
        _print(f"error: --dataset {dataset.rstrip(':')}: {e}", sys.stderr)
        return 2
    try:
        src = open(Path(in_path).expanduser(), "rb")
    except OSError as e:
        _print(f"error: cannot read {in_path}: {e.strerror} (--in takes a JSONL of completions)", sys.stderr)
        return 2
    records: list[dict] = []
    jobs, slots = [], []
    with src:
        for i, raw in _read_lines(src):
            if raw is not None and not raw.strip():
                continue
            rec, err = _parse(raw, probs, mode)
            if err:
                records.append({"line": i, "error": err} if rec is None else dict(rec, error=err))
                continue
            slots.append((len(records), rec))
            records.append(rec)
            jobs.append((probs[rec["problem_id"]], rec["completion"], _mode_of(rec, mode)))
    n_bad = len(records) - len(jobs)
    try:  # open the output before grading, so a bad --out never wastes the work
        dest = open(Path(out_path).expanduser(), "w", encoding="utf-8") if out_path else sys.stdout
    except OSError as e:
        _print(f"error: cannot write {out_path}: {e.strerror}", sys.stderr)
        return 2
    try:
        if jobs:
            with GraderPool(workers, timeout_s=timeout_s) as g:
                grades = g.grade_many(jobs)
            for (k, rec), r in zip(slots, grades):
                records[k] = {**rec, **asdict(r)}
        for rec in records:
            dest.write(json.dumps(rec) + "\n")
    finally:
        if out_path:
            dest.close()
    _print(f"graded {len(jobs)} completions, {n_bad} line(s) not graded (error records)"
           + (f" -> {out_path}" if out_path else ""), sys.stderr)
    return 1 if n_bad else 0
