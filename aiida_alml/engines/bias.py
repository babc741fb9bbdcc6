"""Uncertainty-biased MD: the committee's potential plus a bias that lowers the energy where the members disagree.

Runs on the compute node (no AiiDA import). The bias is ``E_bias = -τ σ_E``, with ``σ_E`` the population standard
deviation of the members' total energies (eV) and ``τ`` the dimensionless ``uncertainty_bias`` strength. MD on
``E + E_bias`` drifts towards configurations the committee is unsure of instead of waiting for the thermostat to
find them (the idea of uncertainty-biased MD, Kulichenko et al., Nat. Comput. Sci. 3, 230 (2023); Zaverkin et al.,
npj Comput. Mater. 10, 83 (2024)).

The gradient costs nothing beyond what the committee already computes: with ``E_m`` the members' energies, their
mean ``Ē`` and ``M`` members, ``∂σ_E/∂x = (1/(M σ_E)) Σ_m (E_m − Ē) ∂E_m/∂x``, so

* bias forces ``F_bias = -(τ/(M σ_E)) Σ_m (E_m − Ē) F_m`` (each member's forces ``F_m = -∂E_m/∂x``),
* bias stress ``S_bias = -(τ/(M σ_E)) Σ_m (E_m − Ē) S_m`` (NPT: the cell is pushed the same way).

With a ``cap`` C (eV, ``uncertainty_bias_cap``) the bias saturates: ``E_bias = -C tanh(τ σ_E / C)``, the same for
``τ σ_E`` ≪ C, never below -C, and its pull ``τ sech²(τ σ_E / C) ∂σ_E/∂x`` fades once ``τ σ_E`` passes C. The linear
bias runs away (a larger σ_E pulls harder, until the atoms leave the physical region: measured in
docs/benchmarks.md); the cap bounds the work the bias can do on the atoms.

Where the members agree exactly (``σ_E`` = 0) the bias and its gradient are taken as zero. Only the dynamics feel the
bias: the frames record the committee's own (unbiased) energy and forces, and reference labels are computed on the
frames' positions as for any frame.
"""

from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

__all__ = ('UncertaintyBias', 'bias_terms')

#: σ_E below this (eV) counts as full agreement: the direction of ∇σ_E is then numerical noise.
_AGREEMENT = 1e-12


def bias_terms(energies: np.ndarray, forces: np.ndarray, stresses: np.ndarray | None, strength: float,
               cap: float | None = None) -> dict:
    """``energy``, ``forces`` (n, 3) and, when ``stresses`` are given, ``stress`` (Voigt) of ``E_bias = -τ σ_E``
    (with ``cap`` C: ``-C tanh(τ σ_E / C)``).

    ``energies``: (M,) member total energies (eV); ``forces``: (M, n, 3) member forces; ``stresses``: (M, 6) member
    stresses (Voigt) or None; ``strength``: τ ≥ 0; ``cap``: C > 0 (eV) or None.
    """
    energies = np.asarray(energies, dtype=np.float64)
    forces = np.asarray(forces, dtype=np.float64)
    deviations = energies - energies.mean()
    sigma = float(np.sqrt(np.mean(deviations**2)))
    terms = {'energy_sigma': sigma}
    if sigma < _AGREEMENT or strength == 0:
        terms.update(energy=0.0, forces=np.zeros(forces.shape[1:]))
        if stresses is not None:
            terms['stress'] = np.zeros(6)
        return terms
    weights = deviations / (len(energies) * sigma)  # ∂σ_E/∂E_m
    if cap is None:
        terms['energy'], pull = -strength * sigma, strength  # pull: -∂E_bias/∂σ_E
    else:
        saturation = np.tanh(strength * sigma / cap)
        terms['energy'], pull = -cap * saturation, strength * (1.0 - saturation**2)
    terms['forces'] = -pull * np.einsum('m,mij->ij', weights, forces)
    if stresses is not None:
        terms['stress'] = -pull * np.einsum('m,mk->k', weights, np.asarray(stresses, dtype=np.float64))
    return terms


class UncertaintyBias(Calculator):
    """A committee calculator's mean energy, forces and stress with ``E_bias`` added (see the module).

    ``committee`` must give ``energy_comm`` (M,) and ``forces_comm`` (M, n, 3) in its results, and ``stress_comm``
    (M, 6) for a cell periodic in all directions (as :class:`aiida_alml.engines.committee.CommitteeCalculator`).
    Besides the biased ``energy``/``forces``/``stress``, the results keep the committee's own (the per-member arrays
    that the uncertainty is computed from) and add ``unbiased_energy``, ``unbiased_forces``, ``bias_energy`` and
    ``bias_forces`` for the record.
    """

    implemented_properties = ['energy', 'free_energy', 'forces', 'stress']

    def __init__(self, committee: Calculator, strength: float, cap: float | None = None):
        super().__init__()
        if not np.isfinite(strength) or strength < 0:
            raise ValueError(f'uncertainty_bias must be a finite number >= 0, got {strength!r}')
        if cap is not None and (not np.isfinite(cap) or cap <= 0):
            raise ValueError(f'uncertainty_bias_cap must be a positive number (eV), got {cap!r}')
        self.committee, self.strength, self.cap = committee, float(strength), cap

    def calculate(self, atoms=None, properties=('energy',), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.committee.calculate(self.atoms, list(properties) + ['energy', 'forces'], system_changes)
        member = self.committee.results
        stresses = member.get('stress_comm') if self.atoms.pbc.all() else None
        terms = bias_terms(member['energy_comm'], member['forces_comm'], stresses, self.strength, self.cap)
        results = dict(member)
        results.update(
            unbiased_energy=member['energy'], unbiased_forces=member['forces'],
            bias_energy=terms['energy'], bias_forces=terms['forces'],
            energy=member['energy'] + terms['energy'], free_energy=member['energy'] + terms['energy'],
            forces=member['forces'] + terms['forces'],
        )  # fmt: skip
        if stresses is not None:
            results.update(unbiased_stress=member['stress'], stress=member['stress'] + terms['stress'])
        self.results = results

    def describe(self) -> dict:
        """The committee's own description, with the bias strength."""
        described = self.committee.describe() if hasattr(self.committee, 'describe') else {}
        return {**described, 'uncertainty_bias': self.strength, 'uncertainty_bias_cap': self.cap}
