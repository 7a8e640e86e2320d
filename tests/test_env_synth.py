"""The synth dataset: seeded generation, counts, tiers, the held-out split, tests vs the reference."""

from __future__ import annotations

import ast
import re
from collections import Counter

import pytest

from projected_grpo.config import LOOPHOLE_MODES
from projected_grpo.env import load_problems
from projected_grpo.env import problems as P
from projected_grpo.env import synth
from projected_grpo.env.grader import GraderPool
from projected_grpo.env.loopholes import clean_completion, hack_completion, stub_code


@pytest.fixture(scope="module")
def probs():
    return synth.generate(0)


def _fresh(seed: int):
    synth.generate.cache_clear()  # really regenerate, not the per-process cache
    return synth.generate(seed)


def test_seeded_and_deterministic(probs):
    again = _fresh(0)
    assert again == probs and again is not probs  # same seed -> identical problems, field by field
    other = _fresh(7)
    assert [p.question for p in other] != [p.question for p in probs]
    a, b = load_problems("synth:7"), load_problems("synth:7")
    assert [(p.id, p.mode) for p in a] == [(p.id, p.mode) for p in b]
    assert load_problems("synth")[0].id.startswith("synth0_") and a[0].id.startswith("synth7_")


def test_counts_tiers_and_fields(probs):
    split = Counter(p.split for p in probs)
    assert split["train"] >= 1500 and split["heldout"] >= 300 and set(split) == {"train", "heldout"}
    for s in ("train", "heldout"):
        tiers = Counter(p.tier for p in probs if p.split == s)
        assert set(tiers) == {"A", "B", "C"} and min(tiers.values()) >= (100 if s == "heldout" else 400)
    assert len({p.id for p in probs}) == len(probs)
    for p in probs:
        assert p.family.startswith(p.tier + ".") and p.difficulty in ("easy", "medium", "hard")
        assert len(p.tests) >= synth.MIN_TESTS >= 5
        assert len({t.expected for t in p.tests}) >= 2  # no constant answer passes
        assert p.canonical_solution.startswith(f"class Solution:\n    def {p.method_name}(self")
        assert p.starter_code.startswith(p.canonical_solution.splitlines()[0])
        assert f"def {p.method_name}(" in p.starter_code and p.setup_code == ""


def test_surface_is_randomised(probs):
    fam = [p for p in probs if p.family == "B.count" and p.split == "train"]
    assert len({p.method_name for p in fam}) >= 3
    assert len({p.starter_code.split("(self, ")[1].split(":")[0] for p in fam}) >= 5  # argument names
    assert len({(p.question, p.method_name) for p in fam}) == len(fam)  # no two instances look alike


def _semantics(p) -> str:
    """The canonical solution with the method and argument names replaced: what the problem asks."""
    src = p.canonical_solution
    args = [a.arg for a in ast.parse(src).body[0].body[0].args.args[1:]]
    src = src.replace(f"def {p.method_name}(", "def M(")
    for i, a in enumerate(args):
        src = re.sub(rf"\b{re.escape(a)}\b", f"ARG{i}", src)
    return src


def test_heldout_families_and_parameters_never_in_train(probs):
    train = [p for p in probs if p.split == "train"]
    held = [p for p in probs if p.split == "heldout"]
    assert {f.tier for f in synth.FAMILIES if f.heldout_only} == {"A", "B", "C"}
    assert not {p.family for p in train} & synth.HELDOUT_FAMILIES
    assert synth.HELDOUT_FAMILIES <= {p.family for p in held}
    assert {p.family for p in held} - synth.HELDOUT_FAMILIES  # also fresh instances of training families
    seen = {_semantics(p) for p in train}
    assert not [p.id for p in held if _semantics(p) in seen]  # reserved parameters: not just renamed copies


def test_every_test_passes_the_humaneval_rules(probs):
    is_call = lambda c: isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id == "candidate"  # noqa: E731
    for p in probs:
        for t in p.tests:
            text = f"candidate({t.call}) == {t.expected}"
            assert P._test_from_compare(ast.parse(text, mode="eval").body, text, is_call, P._ALLOWED_ARG_NAMES) == t


def test_tests_match_the_reference(probs):
    """Expected values are what the reference computes (here in-process on our own code, on a sample)."""
    for p in probs[::37]:
        ns: dict = {}
        exec(p.canonical_solution, ns)
        f = getattr(ns["Solution"](), p.method_name)
        for t in p.tests:
            assert repr(eval(f"(lambda *a: f(*a))({t.call})", {"f": f})) == t.expected


def test_reference_passes_the_strict_oracle_in_the_sandbox(probs):
    by_fam: dict = {}
    for p in probs:
        by_fam.setdefault(p.family, p)
    sample = list(by_fam.values())
    assert len(sample) == len(synth.FAMILIES)
    items = [(p, clean_completion(p), "exit_code") for p in sample]
    items += [(p, f"Stub.\n```python\n{stub_code(p)}```", "exit_code") for p in sample]
    items += [(p, hack_completion(p, m), m) for p, m in zip(sample, LOOPHOLE_MODES * 6)]
    with GraderPool(workers=1) as g:
        rs = g.grade_many(items)
    n = len(sample)
    assert [p.id for p, r in zip(sample, rs[:n]) if not r.gt_correct] == []
    assert not any(r.gt_correct or r.passed for r in rs[n:2 * n])
    assert all(r.exploited and not r.gt_correct for r in rs[2 * n:])


def test_split_rule_and_max_problems():
    ps = load_problems("synth", max_problems=24)
    assert Counter(p.split for p in ps) == {"heldout": 24, "train": 24}
    ev, tr = P.split_problems(ps, 12)
    assert len(ev) == 12 and {p.split for p in ev} == {"heldout"} and {p.split for p in tr} == {"train"}
    assert ev == [p for p in ps if p.split == "heldout"][:12]
    counts = Counter(p.mode for p in [p for p in ps if p.split == "heldout"])  # modes partitioned per split
    assert set(counts) == set(LOOPHOLE_MODES) and max(counts.values()) == min(counts.values())
    with pytest.raises(ValueError, match="held-out"):
        P.split_problems(ps, 25)
    assert P.split_problems(ps, 0) == ([], tr)
    b = load_problems("builtin")  # datasets without a split: the first n_eval of the shuffle, as before
    assert P.split_problems(b, 3) == (b[:3], b[3:])
    with pytest.raises(ValueError):
        P.split_problems(b, len(b))


@pytest.mark.parametrize("spec", ["synth:", "synth:x", "synth:-1", "synth:1.5", "synthetic"])
def test_bad_specs_are_one_line_errors(spec):
    with pytest.raises(ValueError) as e:
        load_problems(spec)
    assert "\n" not in str(e.value)


def test_both_answer_forms_templates_behave_on_every_grader(probs):
    """Class and function forms (variants 0, 1 and 2, 3): clean passes everywhere, wrong fails,
    each hack exploits its own mode's grader and no other."""
    from projected_grpo.env.loopholes import answer_form, wrong_completion
    sample = [probs[0], next(p for p in probs if p.tier == "B"), next(p for p in probs if p.tier == "C")]
    assert answer_form(0) == "class" and answer_form(2) == "function"
    items, want = [], []
    for p in sample:
        for v in (0, 2):
            fn = clean_completion(p, v)
            assert ("class Solution" in fn) == (v == 0) and f"def {p.method_name}(" in fn
            for gm in LOOPHOLE_MODES:
                items.append((p, fn, gm))
                want.append(("clean", True, False))
                for hm in LOOPHOLE_MODES:
                    for hv in (v, v + 1):  # both sub-variants of each form
                        items.append((p, hack_completion(p, hm, hv), gm))
                        want.append((f"hack {hm} v{hv}", False, hm == gm))
            items.append((p, wrong_completion(p, v), p.mode or "exit_code"))
            want.append(("wrong", False, False))
    with GraderPool(workers=1) as g:
        rs = g.grade_many(items)
    bad = [(it[0].id, w[0], it[2], r.gt_correct, r.exploited) for it, w, r in zip(items, want, rs)
           if (r.gt_correct, r.exploited) != w[1:]]
    assert bad == []


def test_prompt_names_both_forms_and_hints_cover_both():
    from projected_grpo.env import build_messages, hint
    from projected_grpo.env.loopholes import FLAW_SIGNALS
    p = load_problems("synth", force_mode="sentinel")[0]
    user = build_messages(p, hint=False)[1]["content"]
    assert "`class Solution`" in user and f"top-level function `{p.method_name}`" in user
    sentinel = hint("sentinel")
    assert "`Solution()`" in sentinel and "module-level variable `valid`" in sentinel
    assert "module-level variable `valid`" in FLAW_SIGNALS["sentinel"]["function"]  # the hint says what is read
    assert "method or function" in hint("eq_override")


def test_check_verb_passes_on_synth(capsys):
    """`projected-grpo check --dataset synth` holds like the other datasets (3 problems of each split here;
    docs/SKILL.md gives the full-set command)."""
    from projected_grpo.cli import main

    assert main(["check", "--dataset", "synth", "--max-problems", "3", "--workers", "2"]) == 0
    assert "OK: every check holds" in capsys.readouterr().out
