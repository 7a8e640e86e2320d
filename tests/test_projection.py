import pytest
import torch

from projected_grpo.adapter import SVDAdapter
from projected_grpo.projection import Projector, UpdateProjector, project


def _orthonormal(k, r, seed=0):
    q, _ = torch.linalg.qr(torch.randn(r, k, generator=torch.Generator().manual_seed(seed)))
    return q.T.contiguous()


@pytest.mark.parametrize("seed", range(5))
def test_decomposition_span_and_one_sided(seed):
    g = torch.randn(32, generator=torch.Generator().manual_seed(100 + seed))
    V = _orthonormal(4, 32, seed)
    p = project(g, V, "one_sided", overshoot=1.0)
    assert torch.allclose(p.g_proj + p.removed, g, atol=0, rtol=0) or torch.equal(p.g_proj + p.removed, g) or \
        torch.allclose(p.g_proj + p.removed, g, atol=1e-6)
    # removed ∈ span(V): projecting onto span(V) changes nothing
    assert torch.allclose(V.T @ (V @ p.removed), p.removed, atol=1e-6)
    assert (V @ p.g_proj <= 1e-6).all()
    # components that were not hack-ward are untouched
    c = V @ g
    assert torch.allclose((V @ p.g_proj)[c <= 0], c[c <= 0], atol=1e-6)


def test_gates_overshoot_and_magnitude():
    V = torch.eye(4)[:2]  # axes e0, e1
    g = torch.tensor([2.0, -3.0, 1.0, 0.5])
    assert torch.allclose(project(g, V, "one_sided").g_proj, torch.tensor([0.0, -3.0, 1.0, 0.5]))
    assert torch.allclose(project(g, V, "no_gate").g_proj, torch.tensor([0.0, 0.0, 1.0, 0.5]))
    assert torch.allclose(project(g, V, "reverse").g_proj, torch.tensor([2.0, 0.0, 1.0, 0.5]))
    assert torch.allclose(project(g, V, "one_sided", overshoot=1.5).g_proj, torch.tensor([-1.0, -3.0, 1.0, 0.5]))
    pm = project(g, V, "one_sided", preserve_magnitude=True).g_proj
    assert torch.isclose(pm.norm(), g.norm()) and pm[0] == 0


def _fake_adapter(tiny):
    model, _ = tiny
    return SVDAdapter.attach(model, ("q_proj", "down_proj"))


def _set_grads(adapter, seed):
    gen = torch.Generator().manual_seed(seed)
    for m in adapter.modules.values():
        m.delta_s.grad = torch.randn(m.rank, generator=gen)
        m.delta_s_hack.grad = None


def _basis(adapter, k=3):
    return {n: _orthonormal(k, m.rank, i) for i, (n, m) in enumerate(adapter.modules.items())}


def _run(adapter, basis, arm, steps=6, project_update=False, grad_clip=0.0):
    """N AdamW steps on a fixed gradient sequence (same for every arm)."""
    for p in adapter.parameters():
        with torch.no_grad():
            p.zero_()
    opt = torch.optim.AdamW(adapter.parameters(), lr=0.05, weight_decay=0.0)
    proj = Projector(adapter, basis, arm)
    up = UpdateProjector(proj, project_update)
    leaks = []
    for s in range(steps):
        _set_grads(adapter, s)
        proj.apply(modify=not project_update)
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(adapter.parameters(), grad_clip)
        before = up.snapshot()
        opt.step()
        leaks.append(up.after(before)["cout_update"])
        opt.zero_grad(set_to_none=True)
    return [p.detach().clone() for p in adapter.knobs()], [p.detach().clone() for p in adapter.hack_knobs()], leaks


def test_route_main_knob_equals_erase_exactly(tiny):
    adapter = _fake_adapter(tiny)
    basis = _basis(adapter)
    erase_ds, erase_dh, _ = _run(adapter, basis, "erase")
    route_ds, route_dh, _ = _run(adapter, basis, "route")
    none_ds, none_dh, _ = _run(adapter, basis, "none")
    for a, b in zip(erase_ds, route_ds):
        assert torch.equal(a, b)
    assert all(torch.count_nonzero(t) == 0 for t in erase_dh + none_dh)  # δS_hack stays exactly 0
    assert sum(float(t.norm()) for t in route_dh) > 0
    assert any(not torch.equal(a, b) for a, b in zip(erase_ds, none_ds))


def test_update_space_projection_removes_adam_leak(tiny):
    adapter = _fake_adapter(tiny)
    basis = _basis(adapter)
    _, _, leak_grad = _run(adapter, basis, "erase", steps=8)
    ds, _, leak_upd = _run(adapter, basis, "erase", steps=8, project_update=True)
    # gradient-space projection: AdamW's preconditioning/momentum puts hack-ward mass back in the update
    assert max(leak_grad) > 0.05
    # update-space projection: none left, exactly
    assert max(leak_upd) < 1e-6
    for n, m in adapter.modules.items():
        pass
    # route in update space moves the removed update into δS_hack
    _, dh, leak_route = _run(adapter, basis, "route", steps=4, project_update=True)
    assert max(leak_route) < 1e-6 and sum(float(t.norm()) for t in dh) > 0


def test_projector_diagnostics(tiny):
    adapter = _fake_adapter(tiny)
    basis = _basis(adapter)
    _set_grads(adapter, 0)
    d_none = Projector(adapter, basis, "none").apply()
    assert d_none["cin"] == pytest.approx(d_none["cout"]) and d_none["cin"] > 0
    _set_grads(adapter, 0)
    d = Projector(adapter, basis, "erase").apply()
    assert d["cin"] == pytest.approx(d_none["cin"]) and d["cout"] < 1e-6 and 0 < d["fired"] <= 1
