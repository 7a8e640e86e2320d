import torch

from projected_grpo.hack_subspace import (HackBasis, _captured, bases_from_grads, extract_basis, fit_capture,
                                          global_floor, matched_basis, orient, principal_cosines, real_basis,
                                          top_axes)


def _planted(n_pairs=24, r=40, seed=0, noise=0.05):
    """Per-pair gradients: hack = clean + a·u (a > 0 for most pairs) + noise."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(r, generator=gen)
    u = u / u.norm()
    clean = torch.randn(n_pairs, r, generator=gen)
    a = torch.rand(n_pairs, generator=gen) + 0.5
    a[:3] *= -1  # a minority points the other way: majority vote must still orient hack-ward
    hack = clean + a[:, None] * u + noise * torch.randn(n_pairs, r, generator=gen)
    alt = clean + noise * torch.randn(n_pairs, r, generator=gen)
    return {"m": hack}, {"m": clean}, {"m": alt}, u


def test_planted_direction_recovered_with_sign():
    gh, gc, ga, u = _planted()
    b = real_basis(gh, gc, k=1, tau=0.0, quantile=0.0)
    v = b.V["m"][0]
    assert float(v @ u) > 0.95  # right direction and right sign


def test_orientation_majority_vote():
    D = torch.tensor([[1.0, 0], [2.0, 0], [-5.0, 0]])
    V = torch.tensor([[-1.0, 0.0]])
    assert orient(V, D)[0, 0] == 1.0  # 2 of 3 pairs project positively on +e0


def test_floors():
    D = torch.diag(torch.tensor([10.0, 5.0, 0.5])) 
    V, S = top_axes(D, k=3, tau=0.1)
    assert V.shape[0] == 2  # 0.5/10 < 0.1 dropped
    V2, S2 = global_floor({"a": V, "b": V[:1] * 0 + torch.tensor([[0, 0, 1.0]])},
                          {"a": S, "b": torch.tensor([0.01])}, quantile=0.3)
    assert "b" not in V2 and V2["a"].shape[0] == 2


def test_controls_matched_k_and_orthonormal():
    gh, gc, ga = {}, {}, {}
    for i, name in enumerate(["m1", "m2"]):
        h, c, a, _ = _planted(seed=i)
        gh[name], gc[name], ga[name] = h["m"], c["m"], a["m"]
    real = bases_from_grads(gh, gc, ga, "real", 3, 0.2, 0.0, 0, {"m1": 40, "m2": 40})
    for source in ("random", "label_permuted", "matched_capture", "nonhack"):
        ctrl = bases_from_grads(gh, gc, ga, source, 3, 0.2, 0.0, 7, {"m1": 40, "m2": 40})
        assert ctrl.k == real.k, source
        for V in ctrl.V.values():
            assert torch.allclose(V @ V.T, torch.eye(V.shape[0]), atol=1e-5), source
    # the random control is far from the planted direction
    _, _, _, u = _planted(seed=0)
    rnd = bases_from_grads(gh, gc, ga, "random", 3, 0.2, 0.0, 7, {"m1": 40, "m2": 40})
    assert float((rnd.V["m1"] @ u).abs().max()) < 0.8
    # the label control is seeded: same seed, same basis; another seed, another basis
    s1 = bases_from_grads(gh, gc, ga, "label_permuted", 3, 0.2, 0.0, 1, {"m1": 40, "m2": 40})
    s2 = bases_from_grads(gh, gc, ga, "label_permuted", 3, 0.2, 0.0, 1, {"m1": 40, "m2": 40})
    s3 = bases_from_grads(gh, gc, ga, "label_permuted", 3, 0.2, 0.0, 2, {"m1": 40, "m2": 40})
    assert torch.equal(s1.V["m1"], s2.V["m1"]) and not torch.equal(s1.V["m1"], s3.V["m1"])


def test_label_permuted_carries_no_label():
    """On a planted hack direction u: real V finds u; the old sign-flip control spans the same subspace
    (cosine 1: no control); the label-permuted pairs give a basis at a large principal angle to real V."""
    for seed in range(4):
        gh, gc, ga, u = _planted(seed=seed)
        real = bases_from_grads(gh, gc, ga, "real", 1, 0.0, 0.0, seed, {"m": 40})
        perm = bases_from_grads(gh, gc, ga, "label_permuted", 1, 0.0, 0.0, seed, {"m": 40})
        sign = torch.ones(24)
        sign[::2] = -1.0
        flipped = matched_basis({"m": (gh["m"] - gc["m"]) * sign[:, None]}, real)
        assert float(real.V["m"][0] @ u) > 0.95
        assert float(principal_cosines(flipped.V["m"], real.V["m"])[0]) > 0.999  # the old `shuffled`
        cos = float(principal_cosines(perm.V["m"], real.V["m"])[0])
        assert cos < 0.7, (seed, cos)  # principal angle > 45 degrees


def test_matched_capture_matches_real_capture():
    gh, gc, ga = {}, {}, {}
    for i, name in enumerate(["m1", "m2"]):
        h, c, a, _ = _planted(seed=i)
        gh[name], gc[name], ga[name] = h["m"], c["m"], a["m"]
    ranks = {"m1": 40, "m2": 40}
    real = bases_from_grads(gh, gc, ga, "real", 3, 0.0, 0.0, 0, ranks)
    gen = torch.Generator().manual_seed(5)
    for strength in (0.3, 3.0, 30.0):  # real V captures little ... almost all of the step-1 gradient
        grads = {n: strength * (gh[n] - gc[n]).mean(0) + torch.randn(40, generator=gen) for n in gh}
        grads["other"] = torch.randn(10, generator=gen)  # a module without a basis: in the denominator only
        basis = bases_from_grads(gh, gc, ga, "matched_capture", 3, 0.0, 0.0, 0, ranks)
        assert basis.meta["capture_fitted"] is False
        fit = fit_capture(basis, grads)
        target = _captured(real.V, grads)
        assert abs(fit["capture_target"] - target) < 1e-6
        assert fit["capture_matched"] and abs(fit["capture"] - target) <= 0.1 * target, (strength, fit)
        assert abs(_captured(basis.V, grads) - fit["capture"]) < 1e-6  # the basis was changed in place
        assert basis.k == real.k and basis.meta["capture_fitted"] is True
        for V in basis.V.values():
            assert torch.allclose(V @ V.T, torch.eye(V.shape[0]), atol=1e-5)


def test_extract_on_tiny_model_cache_and_save(tiny_adapter, tmp_path):
    model, tok, adapter = tiny_adapter
    prompt = tok.apply_chat_template([{"role": "user", "content": "add a and b"}], add_generation_prompt=True,
                                     tokenize=False)
    pairs = [(prompt, f"print('All tests passed') #{i}", f"return a + b #{i}", f"return b + a #{i}") for i in range(6)]
    b1 = extract_basis(model, adapter, tok, pairs, k=2, tau=0.0, cache=tmp_path)
    assert b1.n_axes > 0 and set(b1.V) <= set(adapter.modules)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    b2 = extract_basis(model, adapter, tok, pairs, k=2, tau=0.0, cache=tmp_path)  # cache hit
    assert all(torch.equal(b1.V[n], b2.V[n]) for n in b1.V)
    extract_basis(model, adapter, tok, pairs[:-1], k=2, tau=0.0, cache=tmp_path)  # new pair set → new entry
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    b1.save(tmp_path / "v.safetensors")
    b3 = HackBasis.load(tmp_path / "v.safetensors")
    assert b3.meta["k"] == 2 and all(torch.equal(b1.V[n], b3.V[n]) for n in b1.V)
    assert abs(b1.overlap(b3) - 1.0) < 1e-5
    # knobs untouched, no grads left behind
    assert all(p.grad is None for p in adapter.parameters())


def test_extraction_normalisation_selectable(tiny_adapter):
    from projected_grpo.hack_subspace import completion_grads

    model, tok, adapter = tiny_adapter
    rows = [("<|im_start|>user\nx<|im_end|>\n", "a" * 5), ("<|im_start|>user\nx<|im_end|>\n", "a" * 30)]
    fixed = completion_grads(model, adapter, tok, rows, "fixed", 64)
    mean = completion_grads(model, adapter, tok, rows, "token_mean", 64)
    n = next(iter(fixed))
    # fixed = sum/64, token_mean = sum/len: their ratio per row is len/64
    r0 = fixed[n][0].norm() / mean[n][0].norm()
    r1 = fixed[n][1].norm() / mean[n][1].norm()
    assert abs(float(r0) - 6 / 64) < 1e-4 and abs(float(r1) - 31 / 64) < 1e-4
