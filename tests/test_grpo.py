import torch

from projected_grpo.grpo import (advantages, completion_logprobs, grpo_loss, make_batch,
                                 naive_completion_logprobs, shared_prefix_logprobs)


def test_chunked_logprobs_equal_naive(tiny):
    model, tok = tiny
    rows = [([259, 117, 10], [97, 98, 99, 257]), ([259, 10], [100, 101, 102, 103, 104, 257])]
    batch = make_batch(rows, tok.pad_token_id)
    a = completion_logprobs(model, batch, chunk=3)
    b = naive_completion_logprobs(model, batch)
    assert torch.allclose(a, b, atol=1e-5)  # fp32: equal up to summation order
    assert (a[batch.completion_mask == 0] == 0).all()


def test_shared_prompt_logprobs_equal_one_pass(tiny_adapter):
    """Prompt sharing (KV cache repeated per row) gives the one-pass log-probs and knob gradients, rows
    in the caller's order, whatever the prompt lengths and the interleaving of groups."""
    model, tok, adapter = tiny_adapter
    g = torch.Generator().manual_seed(0)
    for p in adapter.knobs():
        p.data.normal_(0, 0.05, generator=g)
    prompts = [list(range(10, 40)), list(range(60, 77)), list(range(90, 115))]
    rows = [(1, list(range(120, 140))), (0, list(range(150, 162))), (2, [5, 6, 7]), (0, [70, 71, 72, 73, 74]), (1, [9])]

    def grads(loss):
        loss.backward()
        out = [p.grad.clone() for p in adapter.knobs()]
        for p in adapter.knobs():
            p.grad = None
        return out

    batch = make_batch([(prompts[i], c) for i, c in rows], tok.pad_token_id)
    full = completion_logprobs(model, batch)
    g_full = grads(full.sum())
    shared, mask = shared_prefix_logprobs(model, prompts, rows, tok.pad_token_id)
    g_shared = grads(shared.sum())
    for i, (pi, c) in enumerate(rows):
        assert mask[i].sum() == len(c) and (shared[i, len(c):] == 0).all()
        assert torch.allclose(shared[i, :len(c)], full[i, len(prompts[pi]):len(prompts[pi]) + len(c)], atol=1e-5)
    for a, b in zip(g_full, g_shared):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    again, _ = shared_prefix_logprobs(model, prompts, rows, tok.pad_token_id)
    assert all(torch.equal(a, b) for a, b in zip(g_shared, grads(again.sum())))  # deterministic


def test_advantages_center_std_zero_var():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    adv, zv = advantages(r, "center")
    assert torch.equal(adv[0], torch.tensor([0.5, -0.5, -0.5, 0.5])) and (adv[1] == 0).all()
    assert zv.tolist() == [False, True]
    adv_s, _ = advantages(r, "std")
    assert torch.allclose(adv_s[0], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-3)


def test_loss_normalisations_and_kl():
    logp = torch.tensor([[-1.0, -2.0, 0.0], [-1.0, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    adv = torch.tensor([1.0, -1.0])
    loss, kl = grpo_loss(logp, logp.detach(), None, adv, mask, 0.2, 0.0, "fixed", 4)
    loss.backward()
    # d/dlogp of -(ratio*adv) at ratio=1 is -adv, divided by B*max_new_tokens = 8
    assert torch.allclose(logp.grad, torch.tensor([[-1 / 8, -1 / 8, 0], [1 / 8, 0, 0]]))
    assert kl == 0
    logp.grad = None
    loss, _ = grpo_loss(logp, logp.detach(), None, adv, mask, 0.2, 0.0, "token_mean", 4)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-1 / 4, -1 / 4, 0], [1 / 2, 0, 0]]))
    ref = logp.detach() - 0.5
    _, kl = grpo_loss(logp, logp.detach(), ref, adv, mask, 0.2, 0.1, "fixed", 4)
    assert abs(float(kl) - (torch.exp(torch.tensor(-0.5)) + 0.5 - 1)) < 1e-6
