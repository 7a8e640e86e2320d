"""The fast rollout backend (fastgen.py) against the HF reference backend, on CPU.

Same tokens as HF ``generate`` (greedy and seeded sampling, left padding, per-row EOS), sampling
distribution against softmax, refusal of live knobs. On CPU the decode step runs eagerly; on CUDA
the identical step is replayed from CUDA graphs (checked by benchmarks/bench_gpu.py, section check).
"""

import copy

import pytest
import torch

from projected_grpo import fastgen
from projected_grpo.rollout import generate
from projected_grpo.sampling import uniform


def chat(tok, texts):
    return [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False)
            for t in texts]


TEXTS = ["a", "a longer prompt, so the batch is left-padded", "def f(x):"]


def test_greedy_matches_hf_tiny(tiny):
    model, tok = tiny
    prompts = chat(tok, TEXTS)
    ref = generate(model, tok, prompts, 2, 24, greedy=True)
    got = generate(model, tok, prompts, 2, 24, greedy=True, backend="fast")
    assert got.completion_ids == ref.completion_ids
    assert got.prompt_ids == ref.prompt_ids and got.texts == ref.texts and got.truncated == ref.truncated


def test_sampling_matches_hf_token_for_token(tiny):
    """Both backends draw with sampling.py's (seed, position, token) hash: equal logits, equal tokens."""
    model, tok = tiny
    prompts = chat(tok, TEXTS)
    seeds = [11, 12, 13, 14, 15, 16]
    for top_p in (1.0, 0.8):
        ref = generate(model, tok, prompts, 2, 20, temperature=0.7, top_p=top_p, seeds=seeds)
        got = generate(model, tok, prompts, 2, 20, temperature=0.7, top_p=top_p, seeds=seeds, batch_size=4, backend="fast")
        assert got.completion_ids == ref.completion_ids


def test_batch_invariant(tiny):
    model, tok = tiny
    prompts = chat(tok, TEXTS)
    both = generate(model, tok, prompts, 2, 12, seeds=list(range(6)), backend="fast")
    last = generate(model, tok, prompts[2:], 2, 12, seeds=[4, 5], backend="fast")
    assert both.completion_ids[4:] == last.completion_ids


def test_default_batches_bound_the_kv_cache_by_free_memory(tiny, monkeypatch):
    """Without batch_size, rows decode in equal batches whose static KV cache fits in half the free device memory
    (the full preset's sampled evaluation at 4B would need ~216 GB in one batch); the tokens do not change."""
    assert fastgen.rows_per_batch(1200, 1224, 147456, 120 * 2 ** 30) == 300  # 4B: 4 batches on an H200
    assert fastgen.rows_per_batch(7, 100, 10, None) == 7 and fastgen.rows_per_batch(7, 100, 10, 1) == 1
    assert fastgen.rows_per_batch(10, 1, 1, 9) == 4  # fit 4 → 3 batches of 4, 4, 2 → equal: ceil(10/3)
    model, tok = tiny
    prompts = chat(tok, TEXTS)
    one = generate(model, tok, prompts, 2, 16, seeds=list(range(6)), backend="fast")
    sizes = []
    real = fastgen.Decoder.__init__

    def spy(self, sp, B, *a, **kw):
        sizes.append(B)
        real(self, sp, B, *a, **kw)

    per_row = (max(len(p) for p in tok(prompts, add_special_tokens=False)["input_ids"]) + 16) * 2 * 2 * 2 * 16 * 4
    monkeypatch.setattr(fastgen, "free_device_bytes", lambda dev: 2 * per_row * 2 + 1)  # room for 2 rows
    monkeypatch.setattr(fastgen.Decoder, "__init__", spy)
    split = generate(model, tok, prompts, 2, 16, seeds=list(range(6)), backend="fast")
    assert sizes == [2, 2, 2] and split.completion_ids == one.completion_ids


def test_greedy_matches_hf_smollm2():
    from projected_grpo.models import ModelLoadError, load_model

    try:
        model, tok = load_model("smollm2")
    except ModelLoadError as e:
        pytest.skip(str(e))
    prompts = chat(tok, ["Write a python function that adds two numbers.", "hi",
                         "What is the capital of France? Answer in one word."])
    ref = generate(model, tok, prompts, 1, 32, greedy=True)
    got = generate(model, tok, prompts, 1, 32, greedy=True, backend="fast")
    assert got.completion_ids == ref.completion_ids
    assert got.truncated == ref.truncated and got.texts == ref.texts


def test_first_token_distribution(tiny):
    """Empirical first-token frequencies over 4000 seeds vs softmax(logits / T) on the top-p set.
    The LM head is scaled up so the distribution is peaked (a few dozen tokens carry the mass)."""
    model, tok = tiny
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.lm_head.weight.mul_(40)
    prompt = chat(tok, ["x"])
    n, T, top_p = 4000, 1.3, 0.95
    r = generate(model, tok, prompt, n, 1, temperature=T, top_p=top_p, seeds=list(range(n)),
                 eos_token_id=-1, backend="fast")
    draws = torch.tensor([c[0] for c in r.completion_ids])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([r.prompt_ids[0]])).logits[0, -1].float() / T
    from projected_grpo.sampling import top_p_mask

    p = top_p_mask(logits, top_p).double().softmax(-1)
    assert 3 <= int((p > 0).sum()) < 100
    assert set(draws.tolist()) <= set(torch.nonzero(p > 0).flatten().tolist())  # never outside the nucleus
    freq = torch.bincount(draws, minlength=p.numel()).double() / n
    tv = float((freq - p).abs().sum() / 2)
    noise = float((2 * p * (1 - p) / (torch.pi * n)).sqrt().sum() / 2)  # E[TV] of an exact sampler
    assert tv < 2 * noise + 0.01, (tv, noise)
    big = p * n >= 5  # chi-square over cells with enough mass, the rest pooled
    obs = torch.cat([freq[big] * n, (freq[~big] * n).sum()[None]])
    exp = torch.cat([p[big] * n, (p[~big] * n).sum()[None]])
    keep = exp > 0
    chi2 = float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
    dof = int(keep.sum()) - 1
    assert chi2 < dof + 5 * (2 * dof) ** 0.5, (chi2, dof)  # ~5 sigma


def test_eos_stops_rows_and_flags_truncation(tiny):
    model, tok = tiny
    prompts = chat(tok, TEXTS)
    free = generate(model, tok, prompts, 1, 16, greedy=True, eos_token_id=-1, backend="fast")
    eos = free.completion_ids[0][3]  # make a token row 0 emits at step 3 the EOS
    tok2 = copy.deepcopy(tok)
    tok2.eos_token = tok2.convert_ids_to_tokens(eos)
    ref = generate(model, tok2, prompts, 1, 16, greedy=True)
    got = generate(model, tok2, prompts, 1, 16, greedy=True, backend="fast")
    assert got.completion_ids == ref.completion_ids and got.truncated == ref.truncated
    for full, c, tr in zip(free.completion_ids, got.completion_ids, got.truncated):
        if eos in full:
            k = full.index(eos)
            assert c == full[: k + 1] and not tr
        else:
            assert c == full and tr and len(c) == 16
    assert not got.truncated[0] and len(got.completion_ids[0]) <= 4


def test_stops_when_all_rows_finished(tiny):
    model, tok = tiny
    prompt = chat(tok, ["a"])
    free = generate(model, tok, prompt, 1, 40, greedy=True, eos_token_id=-1, backend="fast")
    eos = free.completion_ids[0][2]
    st = fastgen.GenStats()
    r = generate(model, tok, prompt, 1, 40, greedy=True, eos_token_id=eos, check_every=4, stats=st, backend="fast")
    assert r.completion_ids[0][-1] == eos and not r.truncated[0]
    assert st.steps < 8  # stopped at the first check after every row finished, not after 39 steps


def test_uniform_matches_sampling():
    seeds = torch.tensor([0, 5, 2**31 - 2, 123456789])
    for pos in (0, 1, 37):
        assert torch.equal(fastgen.uniform_t(seeds, torch.tensor([pos]), 300), uniform(seeds, pos, 300))


def test_live_knobs_refused_merged_knobs_used(tiny_adapter):
    model, tok, adapter = tiny_adapter
    prompts = chat(tok, TEXTS[:2])
    with torch.no_grad():
        for m in adapter.modules.values():
            m.delta_s.normal_(0, 0.5)
    with pytest.raises(fastgen.FastGenError):
        generate(model, tok, prompts, 1, 4, greedy=True, backend="fast")
    with adapter.merged():
        ref = generate(model, tok, prompts, 1, 16, greedy=True)
        got = generate(model, tok, prompts, 1, 16, greedy=True, backend="fast")
    assert got.completion_ids == ref.completion_ids
    with adapter.zeroed():
        base = generate(model, tok, prompts, 1, 16, greedy=True, backend="fast")
    assert base.completion_ids != got.completion_ids  # the knobs changed the model, and fast saw it


def test_unsupported_architecture_is_refused(tiny):
    model, tok = tiny
    m = copy.deepcopy(model)
    m.config.model_type = "gpt2"
    with pytest.raises(fastgen.FastGenError):
        generate(m, tok, chat(tok, ["a"]), 1, 2, backend="fast")
