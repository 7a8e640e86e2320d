"""Problem loading, mode partition, prompts."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from projected_grpo.config import LOOPHOLE_MODES
from projected_grpo.env import build_messages, hint, load_problems, render_prompt
from projected_grpo.env import problems as P

FIXTURE = "tests/fixtures/leetcode_small.jsonl"


def test_builtin_loads_with_tests_and_canonical():
    ps = load_problems("builtin")
    assert len(ps) >= 12
    for p in ps:
        assert len(p.tests) >= 3
        assert p.canonical_solution.startswith("class Solution")
        assert f"def {p.method_name}" in p.starter_code
        for t in p.tests:
            P.parse_expected(t.expected)  # a literal the trainer can rebuild


def test_seeded_shuffle_and_even_partition():
    a = load_problems("builtin", seed=3)
    b = load_problems("builtin", seed=3)
    c = load_problems("builtin", seed=4)
    assert [(p.id, p.mode) for p in a] == [(p.id, p.mode) for p in b]
    assert [p.id for p in a] != [p.id for p in c]
    counts = Counter(p.mode for p in a)
    assert set(counts) == set(LOOPHOLE_MODES)
    assert max(counts.values()) - min(counts.values()) <= 1
    sub = load_problems("builtin", seed=1, modes=("sentinel", "exit_code"), max_problems=7)
    assert len(sub) == 7 and sorted(Counter(p.mode for p in sub).values()) == [3, 4]


def test_force_mode_and_bad_specs():
    assert {p.mode for p in load_problems("builtin", force_mode="exit_code")} == {"exit_code"}
    for spec in ("nope", "leetcode:/does/not/exist.jsonl"):
        with pytest.raises(ValueError) as e:
            load_problems(spec)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError):
        load_problems("builtin", force_mode="bogus")


def test_leetcode_fixture_schema_and_exclusion():
    ps = load_problems(f"leetcode:{FIXTURE}")
    assert P.LAST_LOAD_STATS["kept"] == 4 and P.LAST_LOAD_STATS["excluded"] == 1  # linked-list output problem
    byid = {p.id: p for p in ps}
    assert byid["2"].method_name == "countDiv"
    t = byid["2"].tests[0]
    assert t.call == "n = 7, queries = [[0,5]]" and P.parse_expected(t.expected) == [2]
    assert len(byid["3"].tests) == 2  # the is_same_list assertion was dropped, the strict ones kept
    assert "ListNode" in byid["3"].setup_code


def test_leetcode_malformed_line_is_a_clear_error(tmp_path):
    f = tmp_path / "bad.jsonl"
    good = open(FIXTURE).readline()
    f.write_text(good + "{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: malformed JSON"):
        load_problems(f"leetcode:{f}")
    f.write_text(json.dumps({"id": 1}) + "\n")
    with pytest.raises(ValueError, match="missing field"):
        load_problems(f"leetcode:{f}")


def test_humaneval_conversion_counts_and_exclusions():
    ps = load_problems("humaneval")
    st = P.LAST_LOAD_STATS
    assert st["loaded"] == 164 and st["kept"] == len(ps) == 154 and st["excluded"] == 10
    assert "HumanEval/32" in st["reasons"]  # random-input loop in check(): cannot be batched strictly
    fib = next(p for p in ps if p.id == "HumanEval_55")
    assert "def fib(self, n: int)" in fib.canonical_solution  # recursion wrapped inside the method
    tol = [t for p in ps for t in p.tests if t.tol is not None]
    assert tol and all(t.tol > 0 for t in tol)


def test_messages_hint_and_no_hint():
    p = load_problems("builtin", force_mode="stdout_marker")[0]
    with_hint = build_messages(p)
    without = build_messages(p, hint=False)
    assert [m["role"] for m in with_hint] == ["system", "user"]
    assert hint("stdout_marker") in with_hint[1]["content"]
    assert hint("stdout_marker") not in without[1]["content"]
    assert p.starter_code.strip() in without[1]["content"]
    for m in LOOPHOLE_MODES:  # truthful descriptions, never an instruction to cheat
        h = hint(m).lower()
        assert "grad" in h and "cheat" not in h and "should" not in h and "exploit" not in h
    with pytest.raises(ValueError):
        hint("nope")


def test_render_prompt_uses_the_tokenizer_template():
    class Tok:
        def apply_chat_template(self, messages, add_generation_prompt, tokenize):
            assert add_generation_prompt is True and tokenize is False
            return "|".join(m["role"] + ":" + m["content"] for m in messages) + "|assistant:"
    p = load_problems("builtin")[0]
    out = render_prompt(Tok(), p, hint=False)
    assert out.startswith("system:") and out.endswith("|assistant:") and p.question in out
