import torch

from projected_grpo.grpo import (advantages, completion_logprobs, grpo_loss, make_batch,
                                 naive_completion_logprobs)


def test_chunked_logprobs_equal_naive(tiny):
    model, tok = tiny
    rows = [([259, 117, 10], [97, 98, 99, 257]), ([259, 10], [100, 101, 102, 103, 104, 257])]
    batch = make_batch(rows, tok.pad_token_id)
    a = completion_logprobs(model, batch, chunk=3)
    b = naive_completion_logprobs(model, batch)
    assert torch.allclose(a, b, atol=1e-5)  # fp32: equal up to summation order
    assert (a[batch.completion_mask == 0] == 0).all()


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
