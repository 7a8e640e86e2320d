import contextlib

import pytest
import torch

from projected_grpo.adapter import AdapterError, KnobLinear, SVDAdapter
from projected_grpo.config import DEFAULT_TARGETS
from projected_grpo.models import load_model


def _ids(tok, text="<|im_start|>user\ndef f(x): return x<|im_end|>\n"):
    return torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])


def _randomize(adapter, scale=0.3, hack=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in adapter.modules.values():
            m.delta_s.copy_(torch.randn(m.rank, generator=g) * scale)
            m.delta_s_hack.copy_(torch.randn(m.rank, generator=g) * hack)


def test_zero_knobs_bit_identical(tiny):
    model, tok = tiny
    ids = _ids(tok)
    bare = model(ids).logits.clone()
    adapter = SVDAdapter.attach(model, DEFAULT_TARGETS)
    assert len(adapter.modules) == 2 * 7  # 2 layers × q,k,v,o,gate,up,down
    assert torch.equal(model(ids).logits, bare)


def test_contexts_switch_and_restore(tiny_adapter):
    model, tok, adapter = tiny_adapter
    ids = _ids(tok)
    base = model(ids).logits.clone()
    _randomize(adapter)
    live = model(ids).logits.clone()
    assert not torch.allclose(live, base)
    with adapter.zeroed():
        assert torch.equal(model(ids).logits, base)
    with adapter.ablated():
        abl = model(ids).logits.clone()
    assert not torch.allclose(abl, live)
    # ablated == δS_hack set to zero by hand
    saved = [p.detach().clone() for p in adapter.hack_knobs()]
    with torch.no_grad():
        for p in adapter.hack_knobs():
            p.zero_()
    assert torch.allclose(model(ids).logits, abl, atol=1e-6)
    with torch.no_grad():
        for p, s in zip(adapter.hack_knobs(), saved):
            p.copy_(s)
    # restored on exception too
    with pytest.raises(RuntimeError):
        with adapter.zeroed():
            raise RuntimeError("boom")
    assert torch.equal(model(ids).logits, live)
    with pytest.raises(RuntimeError):
        with adapter.merged():
            raise RuntimeError("boom")
    assert torch.equal(model(ids).logits, live)


def test_merged_matches_hooked_and_restores(tiny_adapter):
    model, tok, adapter = tiny_adapter
    ids = _ids(tok)
    _randomize(adapter)
    weights = {n: m.base.weight.detach().clone() for n, m in adapter.modules.items()}
    live = model(ids).logits.clone()
    with adapter.ablated():
        abl = model(ids).logits.clone()
    with adapter.merged():
        assert torch.allclose(model(ids).logits, live, atol=1e-4)
    with adapter.merged(ablate_hack=True):
        assert torch.allclose(model(ids).logits, abl, atol=1e-4)
    for n, m in adapter.modules.items():
        assert torch.equal(m.base.weight, weights[n])


def test_rank_truncation_and_layer_filter(tiny):
    model, _ = tiny
    adapter = SVDAdapter.attach(model, ("q_proj", "down_proj"), layers="1", rank=5)
    assert sorted(adapter.modules) == ["model.layers.1.mlp.down_proj", "model.layers.1.self_attn.q_proj"]
    assert all(m.rank == 5 for m in adapter.modules.values())
    with pytest.raises(AdapterError):
        SVDAdapter.attach(load_model("tiny")[0], ("no_such_proj",))


def test_svd_cache_keyed_by_content(tiny):
    from projected_grpo.adapter import svd_factors

    model, _ = tiny
    w = model.model.layers[0].self_attn.q_proj.weight
    U, S, Vh, key = svd_factors(w, None)
    U2, S2, Vh2, key2 = svd_factors(w, None)  # from cache
    assert key == key2 and torch.equal(U, U2) and torch.equal(S, S2)
    assert torch.allclose((U * S) @ Vh, w.float(), atol=1e-5)
    w2 = w.detach().clone()
    w2[0, 0] += 1e-3
    assert svd_factors(w2, None)[3] != key  # a changed weight can never hit the old entry
    wb = w.detach().to(torch.bfloat16)  # a bf16 weight: U, Vh kept (and cached) in bf16, S in fp32
    Ub, Sb, Vhb, keyb = svd_factors(wb, None)
    assert (Ub.dtype, Sb.dtype, Vhb.dtype) == (torch.bfloat16, torch.float32, torch.bfloat16) and keyb != key
    assert torch.allclose((Ub.float() * Sb) @ Vhb.float(), wb.float(), atol=2e-2)
    assert svd_factors(wb, None)[0].dtype == torch.bfloat16  # from the cache file
    from projected_grpo.adapter import shared_factors

    with shared_factors():  # the demo's in-process memo: copies of the very file's bits
        U3 = svd_factors(w, None)[0]
        U4 = svd_factors(w, None)[0]  # from the memo
        assert torch.equal(U3, U) and torch.equal(U4, U)
        U4[0, 0] = float("nan")  # a caller writing into its factors never reaches the next one
        assert torch.isfinite(svd_factors(w, None)[0]).all()


def test_save_load_round_trip_and_refuse_other_base(tiny_adapter, tmp_path):
    model, tok, adapter = tiny_adapter
    _randomize(adapter)
    path = tmp_path / "knobs.safetensors"
    adapter.save(path)
    model2, _ = load_model("tiny")
    other = SVDAdapter.attach(model2, DEFAULT_TARGETS)
    other.load(path)
    for a, b in zip(adapter.parameters(), other.parameters()):
        assert torch.equal(a, b)
    ids = _ids(tok)
    assert torch.equal(model(ids).logits, model2(ids).logits)
    # a different base model (other weights) is refused with a clear error
    model3, _ = load_model("tiny")
    with torch.no_grad():
        model3.model.layers[0].self_attn.q_proj.weight.mul_(1.01)
    third = SVDAdapter.attach(model3, DEFAULT_TARGETS)
    with pytest.raises(AdapterError, match="refusing to load"):
        third.load(path)
    # a different module set is refused too
    fourth = SVDAdapter.attach(load_model("tiny")[0], ("q_proj",))
    with pytest.raises(AdapterError):
        fourth.load(path)


def test_export_plain_model_matches_deployed(tiny_adapter, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok, adapter = tiny_adapter
    _randomize(adapter)
    ids = _ids(tok)
    with adapter.ablated():
        deployed = model(ids).logits
    out = adapter.export(tmp_path / "export", tok)
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert not any("delta_s" in n for n, _ in plain.named_parameters())
    # tolerance: merged fp32 weights vs the low-rank branch differ by float rounding only
    assert torch.allclose(plain(ids).logits, deployed, atol=1e-4, rtol=1e-4)
    # the live model keeps its knobs
    assert adapter.norms()[1] > 0


def test_plain_copy_is_the_merged_model_in_another_dtype(tiny_adapter):
    model, tok, adapter = tiny_adapter
    _randomize(adapter)
    ids = _ids(tok)
    live = model(ids).logits.clone()
    with adapter.ablated():
        abl = model(ids).logits.clone()
    weights = {n: m.base.weight.detach().clone() for n, m in adapter.modules.items()}
    same = adapter.plain_copy(torch.float32)
    assert not any(isinstance(m, KnobLinear) for m in same.modules())
    assert torch.allclose(same(ids).logits, live, atol=1e-4)
    assert torch.allclose(adapter.plain_copy(torch.float32, ablate_hack=True)(ids).logits, abl, atol=1e-4)
    half = adapter.plain_copy(torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert all(b.dtype == torch.float32 for n, b in half.named_buffers() if "inv_freq" in n)  # buffers keep theirs
    assert torch.allclose(half(ids).logits.float(), live, atol=0.1)  # bf16 rounding only
    assert not torch.allclose(half(ids).logits.float(), abl, atol=1e-3)
    # the live model keeps its knob layers, fp32 weights and values
    assert torch.equal(model(ids).logits, live)
    for n, m in adapter.modules.items():
        assert model.get_submodule(n) is m and torch.equal(m.base.weight, weights[n])


def test_plain_copy_failure_leaves_the_live_model_intact(tiny_adapter, monkeypatch):
    import copy

    model, tok, adapter = tiny_adapter
    _randomize(adapter)
    ids = _ids(tok)
    live = model(ids).logits.clone()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(copy, "deepcopy", boom)
    with pytest.raises(KeyboardInterrupt):
        adapter.plain_copy(torch.bfloat16)
    monkeypatch.undo()
    assert all(model.get_submodule(n) is m for n, m in adapter.modules.items())
    assert torch.equal(model(ids).logits, live)


def test_row_grads_sum_to_param_grad(tiny_adapter):
    from projected_grpo.grpo import completion_logprobs, make_batch

    model, tok, adapter = tiny_adapter
    _randomize(adapter, 0.1, 0.1)
    rows = [([259, 117, 10], [97, 98, 99, 257]), ([259, 10], [100, 101, 257]), ([259, 120, 121, 10], [102, 257])]
    batch = make_batch(rows, tok.pad_token_id)
    with adapter.capture_row_grads() as rg:
        loss = -completion_logprobs(model, batch).sum()
        loss.backward()
    for n, m in adapter.modules.items():
        assert rg[n].shape == (3, m.rank)
        assert torch.allclose(rg[n].sum(0), m.delta_s.grad, atol=1e-5)
        assert torch.allclose(m.delta_s_hack.grad, m.delta_s.grad)
    # row 1 alone gives the same per-row gradient (rows are independent)
    for p in adapter.parameters():
        p.grad = None
    single = make_batch(rows[1:2], tok.pad_token_id)
    with adapter.capture_row_grads() as rg1:
        (-completion_logprobs(model, single).sum()).backward()
    for n in adapter.modules:
        assert torch.allclose(rg1[n][0], rg[n][1], atol=1e-5)


def test_row_grads_exact_under_gradient_checkpointing(tiny_adapter):
    from projected_grpo.grpo import completion_logprobs, make_batch

    model, tok, adapter = tiny_adapter
    _randomize(adapter, 0.1, 0.1)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    rows = [([259, 117, 10], [97, 98, 99, 257]), ([259, 10], [100, 101, 257])]
    with adapter.capture_row_grads() as rg:
        (-completion_logprobs(model, make_batch(rows, tok.pad_token_id)).sum()).backward()
    for n, m in adapter.modules.items():  # the recomputed forward must not count a row twice
        assert torch.allclose(rg[n].sum(0), m.delta_s.grad, atol=1e-5), n


def _logits_and_grads(model, adapter, ids):
    for p in adapter.parameters():
        p.grad = None
    logits = model(ids).logits
    (logits.float().square().mean() + logits[0, -1, :7].sum()).backward()
    return logits.detach().clone(), [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in adapter.parameters()]


@pytest.mark.parametrize("state", ["live", "ablated", "warm base"])
def test_fused_forward_equals_the_branch_in_fp32(tiny_adapter, state):
    """adapter.fused(): the same logits and the same δS / δS_hack gradients as the knob branch (fp32), in the
    live and ablated states and over a warm-start base δS₀; the merged weights go when the block ends."""
    model, tok, adapter = tiny_adapter
    ids = _ids(tok)
    _randomize(adapter, hack=0.0 if state == "warm base" else 0.2)
    if state == "warm base":
        adapter.rebase()  # the current knobs become δS₀; δS, δS_hack start again at zero
        _randomize(adapter, scale=0.1, hack=0.05, seed=1)
    ctx = adapter.ablated if state == "ablated" else contextlib.nullcontext
    with ctx():
        ref, ref_g = _logits_and_grads(model, adapter, ids)
        with adapter.fused():
            out, g = _logits_and_grads(model, adapter, ids)
            assert all(m.fused for m in adapter.modules.values())  # the fused path ran in every layer
    assert all(m.fused is None for m in adapter.modules.values())
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(g, ref_g):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (a - b).abs().max()
    if state == "ablated":  # δS_hack is off: no gradient reaches it on either path
        assert all(float(x.abs().max()) == 0 for x in g[len(g) // 2:])


def test_fused_forward_under_bf16_autocast_is_close_and_zero_knobs_exact(tiny_adapter):
    """bf16 autocast: at zero knobs the fused forward is the base model's bf16 forward exactly; with knobs set
    its gradients stay close to the branch's (the merged weight rounds to bf16, the knob gradient does not)."""
    model, tok, adapter = tiny_adapter
    ids = _ids(tok)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with adapter.zeroed():
            base = model(ids).logits.detach().clone()
        with torch.no_grad():
            for m in adapter.modules.values():
                m.delta_s.fill_(0.0)
        with adapter.fused():
            assert torch.equal(model(ids).logits.detach(), base)
        _randomize(adapter)
        ref, ref_g = _logits_and_grads(model, adapter, ids)
        with adapter.fused():
            out, g = _logits_and_grads(model, adapter, ids)
    assert (out.float() - ref.float()).abs().max() < 0.05 * ref.float().abs().max()
    cos = torch.nn.functional.cosine_similarity(torch.cat(g), torch.cat(ref_g), dim=0)
    assert cos > 0.99, cos


def test_fused_forward_leaves_row_capture_to_the_branch(tiny_adapter):
    """capture_row_grads inside fused(): the branch runs (per-row gradients need its hook) and the rows sum to
    the parameter gradient."""
    model, tok, adapter = tiny_adapter
    _randomize(adapter)
    ids = torch.cat([_ids(tok), _ids(tok, "<|im_start|>user\ndef g(y): return y + 1<|im_end|>\n")[:, :_ids(tok).shape[1]]])
    with adapter.fused(), adapter.capture_row_grads() as rows:
        model(ids).logits.float().square().mean().backward()
    name, m = next(iter(adapter.modules.items()))
    assert rows[name].shape == (2, m.rank)
    assert torch.allclose(rows[name].sum(0), m.delta_s.grad, atol=1e-6)
