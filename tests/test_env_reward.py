"""The environment as a TRL-style reward function: call signature, grades, the oracle, the pool's lifecycle."""

from __future__ import annotations

import pytest

from projected_grpo.env import RewardFunction, clean_completion, hack_completion, load_problems, to_hf_rows
from projected_grpo.env.reward import completion_text
from projected_grpo.models import tiny_tokenizer

MODES = ("stdout_marker", "exit_code")


@pytest.fixture(scope="module")
def reward():
    with RewardFunction(dataset="builtin", workers=2, timeout_s=2.0) as rf:
        yield rf


def _batch(row, problem):
    """TRL's call: every dataset column repeated per completion, plus its own keywords."""
    comps = [clean_completion(problem), hack_completion(problem, row["mode"]), "I cannot solve this."]
    logged = {}
    kw = dict(prompts=[row["prompt"]] * 3, completions=comps, completion_ids=[[1, 2]] * 3,
              problem_id=[row["problem_id"]] * 3, mode=[row["mode"]] * 3, trainer_state=None,
              log_metric=lambda k, v: logged.__setitem__(k, v),
              log_extra=lambda k, v: logged.__setitem__("extra/" + k, v))
    return kw, logged


def test_trl_call_pays_the_loophole_and_the_oracle_does_not(reward):
    rows = to_hf_rows("builtin", modes=MODES)
    probs = {p.id: p for p in load_problems("builtin")}
    for row in rows[:2]:  # one problem of each mode (the partition alternates)
        kw, logged = _batch(row, probs[row["problem_id"]])
        assert reward(**kw) == pytest.approx([1.1, 1.1, 0.0])  # clean, hack (fools the grader), no code
        clean, hack, none = reward.last_grades
        assert clean.gt_correct and clean.passed and not clean.exploited
        assert hack.passed and hack.exploited and not hack.gt_correct and hack.mechanism == row["mode"]
        assert not none.format_ok and not none.passed
        assert logged["hack_rate"] == pytest.approx(1 / 3) and logged["solve_rate"] == pytest.approx(1 / 3)
        assert logged["pass_rate"] == pytest.approx(2 / 3)
        assert logged["extra/exploited"] == [False, True, False]
        assert reward.oracle(**kw) == pytest.approx([1.1, 0.1, 0.0])  # the hack gets only the format bonus
    assert {r["mode"] for r in rows[:2]} == set(MODES)


def test_chat_format_completions_grade_like_strings(reward):
    row = to_hf_rows("builtin", modes=MODES)[0]
    kw, _ = _batch(row, next(p for p in load_problems("builtin") if p.id == row["problem_id"]))
    as_text = reward(**kw)
    kw["completions"] = [[{"role": "assistant", "content": c}] for c in kw["completions"]]
    assert reward(**kw) == as_text
    parts = [{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}]},
             {"role": "tool", "content": "ignored"}, {"role": "assistant", "content": "c"}]
    assert completion_text(parts) == "ab\nc"


def test_trl_names_and_the_oracle_reuses_grades(reward, monkeypatch):
    assert reward.__name__ == "loophole_reward" and reward.oracle.__name__ == "oracle_reward"
    row = to_hf_rows("builtin", modes=MODES)[3]
    p = next(q for q in load_problems("builtin") if q.id == row["problem_id"])
    kw, _ = _batch(row, p)
    kw["completions"] = [clean_completion(p, variant=1), hack_completion(p, row["mode"], variant=1), "x"]
    calls = []
    real = reward.pool.grade_many
    monkeypatch.setattr(reward.pool, "grade_many", lambda items: calls.append(len(items)) or real(items))
    reward(**kw)
    reward.oracle(**kw)
    assert calls == [3]  # one sandbox run per completion for both reward functions


def test_user_mistakes_are_clear(reward):
    with pytest.raises(ValueError, match="not in dataset"):
        reward(prompts=["p"], completions=["c"], problem_id=["HumanEval_0"], mode=["exit_code"])
    with pytest.raises(ValueError, match="unknown loophole mode"):
        reward(prompts=["p"], completions=["c"], problem_id=["add_two"], mode=["nope"])
    with pytest.raises(ValueError, match="one problem_id and mode per completion"):
        reward(prompts=["p"], completions=["c", "d"], problem_id=["add_two"], mode=["exit_code"])
    with pytest.raises(TypeError, match="problem_id"):
        reward(prompts=["p"], completions=["c"])


def test_pool_lifecycle():
    rf = RewardFunction(dataset="builtin", workers=1, timeout_s=2.0)
    assert rf._pool is None  # nothing started until the first call
    p = load_problems("builtin")[0]
    assert rf(prompts=["p"], completions=[clean_completion(p)], problem_id=[p.id], mode=["sentinel"]) == [1.1]
    procs = list(rf._pool.sandbox._procs.values())
    assert len(procs) == 1 and procs[0].poll() is None
    with rf:
        pass  # the context manager closes
    assert all(proc.poll() is not None for proc in procs)  # the sandbox servers have exited
    with pytest.raises(RuntimeError, match="closed"):
        rf(prompts=["p"], completions=["c"], problem_id=[p.id], mode=["sentinel"])
    rf.close()  # idempotent


def test_to_hf_rows_columns_hint_and_rendering():
    rows = to_hf_rows("builtin", modes=MODES)
    assert len(rows) == len(load_problems("builtin")) and set(rows[0]) == {"prompt", "problem_id", "mode"}
    assert [r["mode"] for r in rows].count("exit_code") in (len(rows) // 2, len(rows) - len(rows) // 2)
    msgs = rows[0]["prompt"]
    assert [m["role"] for m in msgs] == ["system", "user"] and "Grading:" in msgs[1]["content"]
    assert "Grading:" not in to_hf_rows("builtin", modes=MODES, hint=False)[0]["prompt"][1]["content"]
    tok = tiny_tokenizer()
    text = to_hf_rows("builtin", modes=MODES, tokenizer=tok, max_problems=2)
    assert len(text) == 2 and text[0]["prompt"] == tok.apply_chat_template(rows[0]["prompt"], add_generation_prompt=True,
                                                                           tokenize=False)
    import datasets
    ds = datasets.Dataset.from_list(rows)
    assert ds.column_names == ["prompt", "problem_id", "mode"] and ds[0]["problem_id"] == rows[0]["problem_id"]


def test_humaneval_reward_function():
    probs = {p.id: p for p in load_problems("humaneval")}
    row = to_hf_rows("humaneval", modes=("eq_override",), max_problems=1)[0]
    p = probs[row["problem_id"]]
    with RewardFunction(dataset="humaneval", workers=1) as rf:
        out = rf(prompts=[row["prompt"]] * 2, completions=[clean_completion(p), hack_completion(p, "eq_override")],
                 problem_id=[p.id] * 2, mode=["eq_override"] * 2)
        assert out == pytest.approx([1.1, 1.1]) and rf.oracle(completions=[hack_completion(p, "eq_override")],
                                                               problem_id=[p.id], mode=["eq_override"]) == [pytest.approx(0.1)]
        assert [g.exploited for g in rf.last_grades] == [True]


def test_to_hf_rows_split_is_the_harness_split():
    from projected_grpo import train
    from projected_grpo.env import reward as reward_mod

    assert reward_mod.DATA_SEED == train.DATA_SEED
    all_ids = [p.id for p in load_problems("builtin", seed=train.DATA_SEED)]
    tr = to_hf_rows("builtin", eval_problems=3)
    ev = to_hf_rows("builtin", eval_problems=3, split="eval")
    assert [r["problem_id"] for r in ev] == all_ids[:3] and [r["problem_id"] for r in tr] == all_ids[3:]
    held = {p.id for p in load_problems("synth") if p.split == "heldout"}
    assert {r["problem_id"] for r in to_hf_rows("synth", eval_problems=2, split="eval")} <= held
    assert not held & {r["problem_id"] for r in to_hf_rows("synth", eval_problems=2)}  # held-out never trains
    with pytest.raises(ValueError, match="split"):
        to_hf_rows("builtin", split="test")
