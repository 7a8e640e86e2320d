import torch

from projected_grpo.rollout import generate
from projected_grpo.sampling import sample, top_p_mask, uniform


def test_uniform_is_a_pure_function_of_row_seed():
    a = uniform(torch.tensor([1, 2, 3]), 5, 100)
    b = uniform(torch.tensor([3, 1]), 5, 100)
    assert torch.equal(a[0], b[1]) and torch.equal(a[2], b[0])
    assert not torch.equal(a[0], uniform(torch.tensor([1]), 6, 100)[0])
    assert (a > 0).all() and (a < 1).all()


def test_sampling_matches_softmax_distribution():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    n = 20000
    seeds = torch.arange(n)
    draws = sample(logits.expand(n, -1), seeds, 0, temperature=0.7)
    freq = torch.bincount(draws, minlength=6).double() / n
    expect = (logits / 0.7).softmax(-1).double()
    assert (freq - expect).abs().sum() / 2 < 0.02  # total variation
    chi2 = float((((freq - expect) * n) ** 2 / (expect * n)).sum())
    assert chi2 < 25.0  # 5 dof: p ≈ 1e-4 threshold


def test_top_p_keeps_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(top_p_mask(logits, 0.7))[0].tolist()
    assert kept == [True, True, False, False]
    draws = sample(logits.expand(5000, -1), torch.arange(5000), 3, 1.0, 0.7)
    assert set(draws.tolist()) == {0, 1}


def test_generation_is_batch_invariant(tiny):
    model, tok = tiny
    prompts = [tok.apply_chat_template([{"role": "user", "content": c}], add_generation_prompt=True, tokenize=False)
               for c in ("a", "longer prompt here")]
    both = generate(model, tok, prompts, 2, 12, seeds=[10, 11, 12, 13])
    second = generate(model, tok, prompts[1:], 2, 12, seeds=[12, 13])
    assert both.completion_ids[2:] == second.completion_ids
    other = generate(model, tok, prompts[1:], 2, 12, seeds=[99, 98])
    assert other.completion_ids != second.completion_ids
