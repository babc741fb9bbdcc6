"""Uncertainty-biased MD (engines/bias.py): the bias is the exact gradient of -τ σ_E, the frames stay unbiased."""

from __future__ import annotations

import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.calculators.lj import LennardJones
from ase.calculators.morse import MorsePotential

from aiida_alml.engines.bias import UncertaintyBias, bias_terms
from aiida_alml.engines.md import MAX_UNCERTAINTY_BIAS, MdParameterError, run_md, validate_parameters


class AnalyticCommittee(Calculator):
    """Three analytic potentials of copper as the members: their energies differ and depend on the positions, so
    σ_E has a gradient that can be checked by finite differences."""

    implemented_properties = ['energy', 'free_energy', 'forces', 'stress']

    def __init__(self):
        super().__init__()
        self.members = [lambda: EMT(), lambda: MorsePotential(epsilon=0.34, r0=2.6, rho0=6.0, rcut1=4.0, rcut2=4.5),
                        lambda: LennardJones(sigma=2.33, epsilon=0.41, rc=5.0, smooth=True)]

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        energies, forces, stresses = [], [], []
        for make in self.members:
            calc = make()
            calc.calculate(self.atoms, ['energy', 'forces', 'stress'], all_changes)
            energies.append(calc.results['energy'])
            forces.append(calc.results['forces'])
            stresses.append(calc.results['stress'])
        energies, forces, stresses = np.array(energies), np.array(forces), np.array(stresses)
        self.results = {
            'energy': energies.mean(), 'free_energy': energies.mean(), 'forces': forces.mean(axis=0),
            'stress': stresses.mean(axis=0), 'energy_comm': energies, 'forces_comm': forces, 'stress_comm': stresses,
            'stress_var': stresses.var(axis=0),
        }  # fmt: skip


def _copper(repeat=(2, 2, 2), rattle=0.08, seed=4):
    from helpers.mace import cu_cell

    atoms = cu_cell(repeat)
    atoms.rattle(stdev=rattle, seed=seed)
    return atoms


@pytest.mark.parametrize('capped', [False, True])
def test_bias_forces_and_stress_are_the_gradient_of_the_biased_energy(capped):
    atoms = _copper()
    committee = AnalyticCommittee()
    committee.calculate(atoms.copy(), ['energy'], all_changes)
    sigma = committee.results['energy_comm'].std()  # population σ of the members' total energies
    assert sigma > 0.1
    # a cap where the saturation is half-way (tanh(1)): both the energy and the pull differ from the linear bias
    cap = 3.0 * sigma if capped else None
    atoms.calc = UncertaintyBias(AnalyticCommittee(), strength=3.0, cap=cap)
    bias = -cap * np.tanh(1.0) if capped else -3.0 * sigma
    assert atoms.get_potential_energy() == pytest.approx(committee.results['energy'] + bias, abs=1e-10)
    assert atoms.calc.results['unbiased_energy'] == pytest.approx(committee.results['energy'], abs=1e-12)
    np.testing.assert_allclose(atoms.calc.results['unbiased_forces'], committee.results['forces'], atol=1e-12)
    # forces and stress: minus the derivatives of that energy (finite differences of the biased energy)
    numerical_forces = calculate_numerical_forces(atoms, eps=1e-5)
    np.testing.assert_allclose(atoms.get_forces(), numerical_forces, atol=2e-6)
    bias_forces = atoms.calc.results['bias_forces']
    assert np.abs(bias_forces).max() > 1e-2  # a bias that matters, not a zero checked against a zero
    numerical_stress = calculate_numerical_stress(atoms, eps=1e-6)
    np.testing.assert_allclose(atoms.get_stress(), numerical_stress, atol=2e-7)


def test_capped_bias_saturates():
    forces = np.random.default_rng(1).standard_normal((2, 4, 3))
    for spread in (0.01, 1.0, 100.0):
        linear = bias_terms(np.array([0.0, 2 * spread]), forces, None, strength=2.0)
        capped = bias_terms(np.array([0.0, 2 * spread]), forces, None, strength=2.0, cap=0.5)
        assert -0.5 <= capped['energy'] < 0 and capped['energy'] >= linear['energy']
        ratio = np.abs(capped['forces']).max() / np.abs(linear['forces']).max()
        if spread == 0.01:  # τ σ_E = 0.02 ≪ cap: the linear bias
            assert capped['energy'] == pytest.approx(linear['energy'], rel=5e-3) and ratio == pytest.approx(1, rel=5e-3)
        if spread == 100.0:  # τ σ_E = 200 ≫ cap: no pull left, the bias cannot run away
            assert capped['energy'] == pytest.approx(-0.5) and ratio < 1e-12


def test_bias_vanishes_where_the_members_agree_and_for_zero_strength():
    forces = np.random.default_rng(0).standard_normal((3, 4, 3))
    agreed = bias_terms(np.full(3, -12.5), forces, np.zeros((3, 6)), strength=5.0)
    assert agreed['energy'] == 0.0 and not agreed['forces'].any() and not agreed['stress'].any()
    off = bias_terms(np.array([-1.0, -1.2, -0.7]), forces, None, strength=0.0)
    assert off['energy'] == 0.0 and not off['forces'].any() and 'stress' not in off
    # the bias energy is linear in τ
    one, two = (bias_terms(np.array([-1.0, -1.2, -0.7]), forces, None, strength=s) for s in (1.0, 2.0))
    assert two['energy'] == pytest.approx(2 * one['energy']) and np.allclose(two['forces'], 2 * one['forces'])


def test_uncertainty_bias_parameter_is_checked():
    base = {'temperature': 300.0, 'steps': 10}
    assert validate_parameters(base)['uncertainty_bias'] is None
    assert validate_parameters({**base, 'uncertainty_bias': 0})['uncertainty_bias'] is None
    assert validate_parameters({**base, 'uncertainty_bias': 2})['uncertainty_bias'] == 2.0
    for bad, match in ((-1.0, 'uncertainty_bias must be a number >= 0'), (True, 'uncertainty_bias must be a number'),
                       ('2', 'uncertainty_bias must be a number'), (float('nan'), 'uncertainty_bias must be a number'),
                       (MAX_UNCERTAINTY_BIAS * 2, f'at most {MAX_UNCERTAINTY_BIAS:g}')):
        with pytest.raises(MdParameterError, match=match):
            validate_parameters({**base, 'uncertainty_bias': bad})
    assert validate_parameters({**base, 'uncertainty_bias': 2, 'uncertainty_bias_cap': 1})['uncertainty_bias_cap'] == 1.0
    # τ = 0 switches the bias off, its cap with it; a cap without any τ is a mistake
    assert validate_parameters({**base, 'uncertainty_bias': 0, 'uncertainty_bias_cap': 1})['uncertainty_bias_cap'] is None
    with pytest.raises(MdParameterError, match='uncertainty_bias_cap is given but uncertainty_bias is not'):
        validate_parameters({**base, 'uncertainty_bias_cap': 1.0})
    for bad in (0, -1.0, 'x', float('inf')):
        with pytest.raises(MdParameterError, match='uncertainty_bias_cap must be a positive number'):
            validate_parameters({**base, 'uncertainty_bias': 2, 'uncertainty_bias_cap': bad})


def test_biased_md_records_the_committees_own_prediction_and_the_bias():
    parameters = {'temperature': 300.0, 'steps': 40, 'sample_interval': 10, 'seed': 1}
    arrays, summary = run_md(_copper(), AnalyticCommittee(), {**parameters, 'uncertainty_bias': 2.0})
    assert summary['parameters']['uncertainty_bias'] == 2.0 and summary['frames'] == 5
    assert (arrays['bias_energy'] < 0).all() and (arrays['max_bias_force'] > 0).all()
    # the recorded energy and forces are the committee's mean at the recorded positions, without the bias
    check = AnalyticCommittee()
    for index in (0, 4):
        atoms = _copper()
        atoms.positions, atoms.cell = arrays['positions'][index], arrays['cell'][index]
        check.calculate(atoms, ['energy'], all_changes)
        assert arrays['energy'][index] == pytest.approx(check.results['energy'], abs=1e-9)
        np.testing.assert_allclose(arrays['forces'][index], check.results['forces'], atol=1e-9)
        assert arrays['bias_energy'][index] == pytest.approx(-2.0 * check.results['energy_comm'].std(), abs=1e-9)
    unbiased, _ = run_md(_copper(), AnalyticCommittee(), parameters)
    assert 'bias_energy' not in unbiased
    # the same start and seed: the first frame is the same, later ones differ (the bias moved the atoms)
    np.testing.assert_allclose(unbiased['positions'][0], arrays['positions'][0])
    assert not np.allclose(unbiased['positions'][-1], arrays['positions'][-1])
