"""Gradient projection against the hack subspace: the intervention itself.  # ALGO LOGIC

Per module, on the knob gradient ``g = δS.grad`` (r,) and the basis ``V`` (k, r), rows orthonormal
and oriented hack-ward::

    c        = V g                      (k,)   coefficients along the hack axes
    c_gate   = relu(c)                  one_sided (default): only hack-ward parts are touched
             = c                        no_gate:  the whole V-component
             = -relu(-c)                reverse:  only the anti-hack parts (a control)
    removed  = overshoot · c_gate V     (r,)
    g_proj   = g − removed              (optionally rescaled to ‖g‖: preserve_magnitude)

Arms: ``none`` measures only; ``erase`` sets δS.grad ← g_proj; ``route`` sets δS.grad ← g_proj (exactly
erase's gradient, since AdamW is not linear in it) and δS_hack.grad ← removed.

Diagnostics (relu applied per axis before any aggregation): ``cin = ‖relu(V g)‖ / ‖g‖``,
``cout = ‖relu(V g_proj)‖ / ‖g_proj‖``; module aggregates are ratios of root-sum-squares.

Known trap: AdamW steps on its moments, so a projected gradient does not make the *applied update*
orthogonal to V. ``UpdateProjector`` measures the hack-ward part of the applied update
(``cout_update``) for every arm and, with ``project_update``, projects the update itself.

Owns erase / route on the knob gradients and the AdamW update; must never import train, grpo or the env package.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .adapter import SVDAdapter


@dataclass
class Projected:
    g_proj: torch.Tensor  # (r,)
    removed: torch.Tensor  # (r,)
    coeffs: torch.Tensor  # (k,)  V g before projection


def gate_coeffs(c: torch.Tensor, gate: str) -> torch.Tensor:
    if gate == "one_sided":
        return torch.relu(c)
    if gate == "no_gate":
        return c
    if gate == "reverse":
        return -torch.relu(-c)
    raise ValueError(f"unknown gate {gate!r}")


def project(g: torch.Tensor, V: torch.Tensor, gate: str = "one_sided", overshoot: float = 1.0,
            preserve_magnitude: bool = False) -> Projected:
    """Project one module's gradient ``g`` (r,) against ``V`` (k, r)."""
    c = V @ g  # (k,)
    removed = overshoot * (gate_coeffs(c, gate) @ V)  # (r,)
    g_proj = g - removed
    if preserve_magnitude:
        n_proj = g_proj.norm()
        if n_proj > 0:
            g_proj = g_proj * (g.norm() / n_proj)
    return Projected(g_proj, removed, c)


def hackward_sq(V: torch.Tensor, g: torch.Tensor) -> float:
    """‖relu(V g)‖² — the squared hack-ward component (relu before aggregating)."""
    return float((torch.relu(V @ g) ** 2).sum())


def ratio(num_sq: float, den_sq: float) -> float | None:
    return (num_sq ** 0.5) / (den_sq ** 0.5) if den_sq > 0 else None


class Projector:
    """Applies one arm's projection to the adapter's gradients, module by module.

    ``basis`` maps module name → V (k, r) on the knob's device; modules without a basis are left alone.
    """

    def __init__(self, adapter: SVDAdapter, basis: dict[str, torch.Tensor], intervention: str,
                 gate: str = "one_sided", overshoot: float = 1.0, preserve_magnitude: bool = False):
        if intervention not in ("none", "erase", "route"):
            raise ValueError(f"unknown intervention {intervention!r}")
        self.adapter, self.intervention = adapter, intervention
        self.gate, self.overshoot, self.preserve_magnitude = gate, overshoot, preserve_magnitude
        self.set_basis(basis)

    def set_basis(self, basis: dict[str, torch.Tensor]) -> None:
        unknown = set(basis) - set(self.adapter.modules)
        if unknown:
            raise ValueError(f"basis names modules the adapter lacks: {sorted(unknown)[:3]}...")
        self.basis = {n: V.to(self.adapter.modules[n].delta_s.device, torch.float32) for n, V in basis.items()}

    def cin(self, grads: dict[str, torch.Tensor]) -> float | None:
        """Aggregate ‖relu(V g)‖/‖g‖ over modules for per-module gradients ``grads`` (r,)."""
        num = den = 0.0
        for n, g in grads.items():
            den += float((g.float() ** 2).sum())
            if n in self.basis:
                num += hackward_sq(self.basis[n], g.float())
        return ratio(num, den)

    def apply(self, modify: bool = True) -> dict[str, float | None]:
        """Project ``δS.grad`` in place for this arm (``modify=False``: measure only, as when the
        update rather than the gradient is projected). Returns cin, cout, fired (fraction of axes
        whose gate fired, i.e. with a nonzero removed coefficient)."""
        num_in = num_out = den_in = den_out = 0.0
        fired = axes = 0
        for n, m in self.adapter.modules.items():
            g = m.delta_s.grad
            if g is None:
                continue
            den_in += float((g ** 2).sum())
            V = self.basis.get(n)
            if V is None or V.shape[0] == 0:
                den_out += float((g ** 2).sum())
                continue
            p = project(g, V, self.gate, self.overshoot, self.preserve_magnitude)
            num_in += hackward_sq(V, g)
            fired += int((gate_coeffs(p.coeffs, self.gate) != 0).sum())
            axes += V.shape[0]
            if self.intervention == "none" or not modify:
                num_out += hackward_sq(V, g)
                den_out += float((g ** 2).sum())
                continue
            m.delta_s.grad = p.g_proj
            if self.intervention == "route":
                m.delta_s_hack.grad = p.removed.clone()
            num_out += hackward_sq(V, p.g_proj)
            den_out += float((p.g_proj ** 2).sum())
        return {"cin": ratio(num_in, den_in), "cout": ratio(num_out, den_out),
                "fired": fired / axes if axes else 0.0}


class UpdateProjector:
    """Measures (and optionally projects) the update AdamW actually applied to δS.

    Use: ``before = up.snapshot()``; ``optimizer.step()``; ``stats = up.after(before)``.
    With ``project=True`` the hack-ward part of each module's applied update Δ is taken out of δS
    (route: moved into δS_hack), so ``V Δ_applied ≤ 0`` holds exactly for the one-sided gate.
    """

    def __init__(self, projector: Projector, project: bool):
        self.projector, self.project = projector, project

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {n: m.delta_s.detach().clone() for n, m in self.projector.adapter.modules.items()}

    @torch.no_grad()
    def after(self, before: dict[str, torch.Tensor]) -> dict[str, float | None]:
        p = self.projector
        num = den = 0.0
        for n, m in p.adapter.modules.items():
            delta = m.delta_s.detach() - before[n]  # (r,) the applied update
            V = p.basis.get(n)
            if V is not None and V.shape[0] and self.project and p.intervention != "none":
                pr = project(delta, V, p.gate, p.overshoot, preserve_magnitude=False)
                m.delta_s.copy_(before[n] + pr.g_proj)
                if p.intervention == "route":
                    m.delta_s_hack.add_(pr.removed)
                delta = pr.g_proj
            den += float((delta ** 2).sum())
            if V is not None and V.shape[0]:
                num += hackward_sq(V, delta)
        return {"cout_update": ratio(num, den)}
