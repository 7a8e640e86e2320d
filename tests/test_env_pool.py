"""Teacher pool and (hack, clean) pairs."""

from __future__ import annotations

import json

import pytest

from projected_grpo.env import GraderPool, TeacherPool, build_teacher_pool, load_problems, make_pairs
from projected_grpo.env.grader import extract_code
from projected_grpo.env.loopholes import as_function


@pytest.fixture(scope="module")
def setup():
    probs = load_problems("builtin", seed=0)
    with GraderPool(workers=2, timeout_s=2.0) as g:
        pool = build_teacher_pool(probs, g, per_problem=2, seed=0)
    return probs, pool, None


def test_pool_contents_and_frozen_grades(setup):
    probs, pool, _ = setup
    assert len(pool) == len(probs) * 6
    for p in probs:
        items = pool.for_problem(p.id)
        hacks = [t for t in items if t.kind == "hack"]
        cleans = [t for t in items if t.kind == "clean"]
        assert len(hacks) == 2 and len(cleans) == 2
        assert len({t.completion for t in hacks}) == 2 and len({t.completion for t in cleans}) == 2
        assert all(t.mode == p.mode for t in items)
        assert all(t.grade["exploited"] and not t.grade["gt_correct"] for t in hacks)
        assert all(t.grade["gt_correct"] and not t.grade["exploited"] for t in cleans)
        wrongs = [t for t in items if t.kind == "wrong"]
        assert len(wrongs) == 2 and not any(t.grade["passed"] or t.grade["gt_correct"] for t in wrongs)
    assert pool.for_problem("nope") == []


def test_lomo_pool_keeps_every_modes_demonstrations(tmp_path):
    """vhack_known_modes restricts V's pairs only: the held-out mode's hacks stay in the teacher pool."""
    from projected_grpo.config import PRESETS
    from projected_grpo.train import teacher_pool
    import dataclasses

    probs = load_problems("builtin", seed=0, modes=("sentinel", "exit_code"))
    cfg = dataclasses.replace(PRESETS["smoke"], modes=("sentinel", "exit_code"), vhack_known_modes=("sentinel",),
                              teacher_per_problem=1)
    with GraderPool(workers=2, timeout_s=2.0) as g:
        pool = teacher_pool(cfg, probs, g, lambda m: None)
    hacks = {t.mode for t in pool.items if t.kind == "hack" and t.grade["exploited"]}
    assert hacks == {"sentinel", "exit_code"}  # the held-out mode is still demonstrated
    pairs = make_pairs(probs, 8, known_modes=cfg.vhack_known_modes)
    assert {p.problem.mode for p in pairs} == {"sentinel"}  # V never sees it


def test_save_load_roundtrip_and_errors(setup, tmp_path):
    _, pool, _ = setup
    f = tmp_path / "pool.jsonl"
    pool.save(f)
    again = TeacherPool.load(f)
    assert [(t.problem_id, t.kind, t.completion, t.grade) for t in again.items] == \
           [(t.problem_id, t.kind, t.completion, t.grade) for t in pool.items]
    lines = f.read_text().splitlines()
    f.write_text(lines[0] + "\n{oops\n")
    with pytest.raises(ValueError, match=r"pool.jsonl:2: malformed JSON"):
        TeacherPool.load(f)
    bad = json.loads(lines[0])
    bad["kind"] = "weird"
    f.write_text(json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match="kind must be"):
        TeacherPool.load(f)
    del bad["kind"]
    f.write_text(json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match="missing field"):
        TeacherPool.load(f)
    with pytest.raises(ValueError, match="not found"):
        TeacherPool.load(tmp_path / "absent.jsonl")


def test_pairs_from_templates(setup):
    probs, _, _ = setup
    pairs = make_pairs(probs, 20, seed=1)
    assert len(pairs) == 20
    assert len({p.problem.id for p in pairs}) == len(probs)  # cycles over every problem
    for pr in pairs:
        assert pr.clean != pr.clean_alt and pr.hack != pr.clean
        # the canonical solution in one of the two answer forms (+ maybe a variant comment), as the hack
        forms = [pr.problem.canonical_solution.rstrip(), (as_function(pr.problem) or "class Solution").rstrip()]
        code, hack = extract_code(pr.clean), extract_code(pr.hack)
        assert any(code.startswith(f) for f in forms)
        assert ("class Solution" in code) == ("class Solution" in hack) == ("class Solution" in extract_code(pr.clean_alt))
    assert [p.hack for p in make_pairs(probs, 5, seed=1)] == [p.hack for p in pairs[:5]]
    known = make_pairs(probs, 6, known_modes=("file_marker",))
    assert {p.problem.mode for p in known} == {"file_marker"}
    with pytest.raises(ValueError):
        make_pairs([p for p in probs if p.mode != "file_marker"], 3, known_modes=("file_marker",))


def test_pairs_from_a_graded_pool(setup):
    probs, pool, _ = setup
    pairs = make_pairs(probs, 12, pool=pool)
    comps = {t.completion: t for t in pool.items}
    for pr in pairs:
        assert comps[pr.hack].grade["exploited"] and comps[pr.clean].grade["gt_correct"]
        assert pr.clean_alt != pr.clean and comps[pr.clean_alt].grade["gt_correct"]
    # a pool with no exploited completion yields no pairs
    from projected_grpo.env.pool import TeacherPool as TP
    clean_only = TP([t for t in pool.items if t.kind == "clean"])
    with pytest.raises(ValueError, match="teacher pool"):
        make_pairs(probs, 3, pool=clean_only)
