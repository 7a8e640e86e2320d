"""Deployed-model diagnostics on the tiny model: KL to base, knob shares in span(V), format and answer form."""

from __future__ import annotations

import pytest
import torch

from projected_grpo.diagnostics import behaviour, kl_to_base, knob_shares, metrics, per_problem_rates


def _prompts(tok, n=3):
    return [tok.apply_chat_template([{"role": "user", "content": f"add {i} and b"}], add_generation_prompt=True,
                                    tokenize=False) for i in range(n)]


def _basis(adapter, k=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    V = {}
    for n, m in list(adapter.modules.items())[:3]:
        q, _ = torch.linalg.qr(torch.randn(m.rank, k, generator=gen))
        V[n] = q.T.contiguous()
    return V


def test_kl_zero_at_base_positive_when_moved_and_ablation_sees_only_delta_s(tiny_adapter):
    model, tok, adapter = tiny_adapter
    prompts = _prompts(tok)
    texts = ["```python\nclass Solution:\n    def f(self): return 1\n```", "def f(): pass", "```python\ndef f(): return 2\n```"]
    assert kl_to_base(adapter, tok, prompts, texts, ablate=False) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        for m in adapter.modules.values():
            m.delta_s_hack.normal_(0, 0.5)  # only the quarantine knob moved
    kept = kl_to_base(adapter, tok, prompts, texts, ablate=False)
    abl = kl_to_base(adapter, tok, prompts, texts, ablate=True)
    assert kept > 1e-4 and abl == pytest.approx(0.0, abs=1e-6)  # ablating δS_hack gives back the base
    d = metrics(adapter, tok, prompts, {"kept": texts, "abl": texts}, None)
    assert d["kl_base_kept"] == pytest.approx(kept) and d["kl_base_abl"] == pytest.approx(abl, abs=1e-6)
    assert d["fmt_kept"] == pytest.approx(2 / 3) and d["form_class_kept"] == pytest.approx(1 / 2)
    assert d["dS"] == 0 and d["dSh"] > 0 and d["dS_in_V"] is None and d["dSh_in_V"] == 0.0
    # no ablated completions (an arm whose δS_hack is 0): abl = kept
    d2 = metrics(adapter, tok, prompts, {"kept": texts}, None)
    assert d2["kl_base_abl"] == d2["kl_base_kept"] and d2["fmt_abl"] == d2["fmt_kept"]


def test_kl_rows_caps_the_rows_the_kl_is_computed_on(tiny_adapter):
    """eval_kl_rows (the CPU demo's budget): KL on the first N rows only; formats still on every row."""
    model, tok, adapter = tiny_adapter
    with torch.no_grad():
        for m in adapter.modules.values():
            m.delta_s.normal_(0, 0.3)
    prompts = _prompts(tok, 4)
    texts = ["```python\ndef f(): return 1\n```", "return a + b", "def g(x):\n    return x", "no code here"]
    capped = metrics(adapter, tok, prompts, {"kept": texts}, None, kl_rows=2)
    assert capped["kl_base_kept"] == pytest.approx(kl_to_base(adapter, tok, prompts[:2], texts[:2], ablate=False))
    assert capped["kl_base_kept"] != pytest.approx(metrics(adapter, tok, prompts, {"kept": texts}, None)["kl_base_kept"])
    assert capped["fmt_kept"] == pytest.approx(1 / 4)  # behaviour still over all four


def test_kl_matches_a_direct_computation(tiny_adapter):
    model, tok, adapter = tiny_adapter
    with torch.no_grad():
        for m in adapter.modules.values():
            m.delta_s.normal_(0, 0.3)
    prompt, text = _prompts(tok, 1)[0], "return a + b"
    got = kl_to_base(adapter, tok, [prompt], [text], ablate=False)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([p_ids + c_ids])
    with torch.no_grad():
        lp = model(input_ids=ids).logits[0, len(p_ids) - 1:-1].float().log_softmax(-1)
        with adapter.zeroed():
            lq = model(input_ids=ids).logits[0, len(p_ids) - 1:-1].float().log_softmax(-1)
    want = float((lp.exp() * (lp - lq)).sum(-1).mean())
    assert got == pytest.approx(want, rel=1e-4) and got > 0


def test_knob_shares_in_span_of_v(tiny_adapter):
    _, _, adapter = tiny_adapter
    V = _basis(adapter)
    with torch.no_grad():
        for n, m in adapter.modules.items():
            if n in V:  # δS_hack inside span(V), δS orthogonal to it
                m.delta_s_hack.copy_(torch.tensor([1.0, -2.0]) @ V[n])
                x = torch.randn(m.rank)
                m.delta_s.copy_(x - (V[n] @ x) @ V[n])
    d = knob_shares(adapter, V)
    assert d["dSh_in_V"] == pytest.approx(1.0, abs=1e-5) and d["dS_in_V"] == pytest.approx(0.0, abs=1e-6)
    assert d["dSh"] == pytest.approx(5 ** 0.5 * len(V) ** 0.5, rel=1e-5)


def test_behaviour_and_per_problem_rates():
    b = behaviour(["no code", "```python\nclass Solution:\n  pass\n```", "```python\ndef g():\n  pass\n```",
                   "```python\n\n```"])
    assert b == {"fmt": 0.5, "form_class": 0.5}  # an empty block is no block
    assert behaviour([]) == {"fmt": None, "form_class": None}

    class R:
        def __init__(self, problem, exploited, solved):
            self.problem, self.exploited, self.solved = problem, exploited, solved

    recs = [R(0, True, False), R(0, False, False), R(1, False, True), R(1, False, True)]
    out = per_problem_rates(recs, 2, "kept")
    assert out == {"eval_problem_hack_kept": [0.5, 0.0], "eval_problem_solve_kept": [0.0, 1.0]}
    assert per_problem_rates(recs[:2], 2, "abl") == {}  # a problem without completions: no vector


def test_trainer_logs_the_diagnostics_per_evaluation(tmp_path):
    """A real route run: step 0 (knobs zero) has KL 0; the final evaluation has every key, per view."""
    import json

    from projected_grpo.cli import main

    run = tmp_path / "r"
    assert main(["train", "--preset", "smoke", "--steps", "2", "--intervention", "route", "--eval-at-start",
                 "--eval-problems", "2", "--sandbox-workers", "2", "--run-dir", str(run)]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0], rows[-1]
    assert first["step"] == 0 and first["kl_base_kept"] == 0.0 and first["kl_base_abl"] == 0.0
    for k in ("kl_base_kept", "kl_base_abl", "dS", "dSh", "dSh_in_V", "dS_in_V", "fmt_kept", "fmt_abl"):
        assert k in last, k
    assert last["kl_base_kept"] > 0 and last["kl_base_kept"] >= 0 and 0 <= last["dSh_in_V"] <= 1 + 1e-6
    assert len(last["eval_problem_hack_abl"]) == 2 and set(last["eval_problem_hack_kept"]) <= {0.0, 1.0}
