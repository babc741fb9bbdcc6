"""``aiida_alml.engines.committee``: batched MACE committee vs the stock calculator (no AiiDA needed)."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms, units
from ase.md.langevin import Langevin
from ase.stress import full_3x3_to_voigt_6_stress

pytest.importorskip('mace')
pytestmark = [
    pytest.mark.slow,  # the session fixture trains two tiny MACE members
    # e3nn (de)serialises its TorchScript parts on deepcopy; mace loads with weights_only=False.
    pytest.mark.filterwarnings('ignore:`torch.jit.:DeprecationWarning'),
    pytest.mark.filterwarnings('ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD:UserWarning'),
]

from helpers.mace import cu_cell, train_committee  # noqa: E402

from aiida_alml.engines.committee import (  # noqa: E402
    CommitteeCalculator,
    load_committee,
    validate_committee,
)

RTOL = 1e-6
STRATEGIES = ['vmap', 'sequential']


@pytest.fixture(scope='session')
def member_paths(tmp_path_factory) -> list[Path]:
    """Two tiny EMT-Cu MACE members (seeds 1, 2), trained once per session."""
    return train_committee(tmp_path_factory.mktemp('mace_committee'), seeds=[1, 2], epochs=2)


@pytest.fixture(scope='module')
def stock(member_paths):
    from mace.calculators import MACECalculator

    from aiida_alml.engines.model_format import load_model

    return MACECalculator(models=[load_model(p) for p in member_paths], device='cpu', default_dtype='float64')


@pytest.fixture(scope='module')
def members(member_paths):
    return load_committee(member_paths)


def _rattled(repeat=(2, 2, 2), pbc=True) -> Atoms:
    atoms = cu_cell(repeat)
    atoms.rattle(stdev=0.08, seed=7)
    atoms.pbc = pbc
    return atoms


def _close(actual, expected):
    """Equal within RTOL relative to the array's scale (components near zero need an absolute floor)."""
    expected = np.asarray(expected)
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * 1e-3 * max(np.abs(expected).max(), 1e-12))


def _stock_results(stock, atoms):
    stock.calculate(atoms)
    return dict(stock.results)


@pytest.mark.parametrize('strategy', STRATEGIES)
@pytest.mark.parametrize('pbc', [True, False], ids=['bulk', 'cluster'])
def test_matches_stock_committee(members, stock, strategy, pbc):
    atoms = _rattled(pbc=pbc)
    ref = _stock_results(stock, atoms)
    calc = CommitteeCalculator(models=members, strategy=strategy)
    calc.calculate(atoms)
    res = calc.results

    _close(res['energy_comm'], ref['energy_comm'])
    _close(res['forces_comm'], ref['forces_comm'])
    _close(res['forces_var'], ref['forces_var'])
    _close(res['energy_var'], ref['energy_var'])
    _close(res['energy'], ref['energy'])
    _close(res['free_energy'], ref['free_energy'])
    _close(res['forces'], ref['forces'])
    _close(res['energies'], ref['energies'])  # mean per-atom energies, as stock (and ASE)
    if pbc:
        # The stock calculator keeps member stresses as 3x3; ours are Voigt like ASE's ``stress``.
        _close(res['stress_comm'], [full_3x3_to_voigt_6_stress(s) for s in ref['stress_comm']])
        _close(res['stress'], ref['stress'])
        _close(res['stress_var'], np.var(res['stress_comm'], axis=0))
    else:
        assert 'stress' not in res
    assert res['energy_comm'].shape == (2,)
    assert res['forces_comm'].shape == (2, len(atoms), 3)


def test_auto_times_both_strategies_then_settles(members):
    atoms = _rattled(repeat=(1, 1, 1))  # small: the calibration makes 8 calls
    calc = CommitteeCalculator(models=members, strategy='auto')
    used, energies = [], []
    calibration = 2 * (calc._timer.WARMUP + calc._timer.TIMED)
    for _ in range(calibration + 2):
        calc.calculate(atoms)
        used.append(calc.last_strategy)
        energies.append(calc.results['energy_comm'])
    assert set(used[:calibration]) == {'sequential', 'vmap'}
    assert used[calibration] == used[-1] and used[-1] in calc._timer.choice.values()
    np.testing.assert_allclose(energies, [energies[0]] * len(energies), rtol=1e-12)


def test_force_sigma_is_rms_member_spread(members):
    atoms = _rattled()
    calc = CommitteeCalculator(models=members)
    atoms.calc = calc
    atoms.get_forces()
    forces_comm = calc.results['forces_comm']
    mean = forces_comm.mean(axis=0)
    expected = np.sqrt(((forces_comm - mean) ** 2).mean(axis=0).sum(axis=1))  # ddof=0, summed over xyz
    np.testing.assert_allclose(calc.results['force_sigma'], expected, rtol=1e-12, atol=1e-15)
    assert calc.results['force_sigma'].shape == (len(atoms),)
    assert calc.results['force_sigma'].max() > 0  # the two seeds do disagree


def test_single_member_committee(members, member_paths):
    from mace.calculators import MACECalculator

    from aiida_alml.engines.model_format import load_model

    atoms = _rattled()
    calc = CommitteeCalculator(models=members[:1])
    calc.calculate(atoms)
    ref = MACECalculator(models=[load_model(member_paths[0])], device='cpu', default_dtype='float64')
    ref.calculate(atoms)
    _close(calc.results['energy'], ref.results['energy'])
    _close(calc.results['forces'], ref.results['forces'])
    assert np.all(calc.results['force_sigma'] == 0)


def test_unknown_element_is_refused(members):
    atoms = _rattled()
    atoms.symbols[[0, 3]] = ['Ag', 'Au']
    with pytest.raises(ValueError, match=r'Ag \(Z=47\), Au \(Z=79\).*models know Cu'):
        CommitteeCalculator(models=members).calculate(atoms)


@pytest.mark.parametrize(
    ('what', 'spoil'),
    [
        ('r_max', lambda m: setattr(m, 'r_max', m.r_max + 1.0)),
        ('atomic numbers', lambda m: setattr(m, 'atomic_numbers', m.atomic_numbers + 1)),
        ('dtype', lambda m: m.float()),
    ],
)
def test_inconsistent_members_are_refused(members, what, spoil):
    spoiled = copy.deepcopy(members[1])
    spoil(spoiled)
    with pytest.raises(ValueError, match=f'disagree on {what}.*member 1'):
        validate_committee([members[0], spoiled])
    with pytest.raises(ValueError, match=f'disagree on {what}'):
        CommitteeCalculator(models=[members[0], spoiled])


def test_no_models_is_refused():
    with pytest.raises(ValueError, match='at least one'):
        load_committee([])
    with pytest.raises(ValueError, match='at least one'):
        CommitteeCalculator(models=[])


def test_sha256_is_checked_before_loading(member_paths):
    digests = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in member_paths]
    assert len(load_committee(member_paths, expected_sha256=digests)) == 2
    bad = [digests[0], '0' * 64]
    with pytest.raises(ValueError, match=f'sha256 mismatch for model file {member_paths[1]}'):
        load_committee(member_paths, expected_sha256=bad)
    with pytest.raises(ValueError, match='sha256 mismatch'):
        CommitteeCalculator(model_paths=member_paths, expected_sha256=bad)


def _stock_of(models, atoms):
    from mace.calculators import MACECalculator

    from aiida_alml.engines.model_format import load_model

    stock = MACECalculator(models=[copy.deepcopy(m) for m in models], device='cpu', default_dtype='float64')
    return _stock_results(stock, atoms)


@pytest.mark.parametrize('strategy', STRATEGIES)
def test_members_with_different_avg_num_neighbors(members, strategy):
    """Split-dependent ``avg_num_neighbors`` (a plain float) is carried per member, also under vmap."""
    other = copy.deepcopy(members[1])
    for interaction in other.interactions:
        interaction.avg_num_neighbors *= 1.5
    calc = CommitteeCalculator(models=[members[0], other], strategy=strategy)
    atoms = _rattled()
    calc.calculate(atoms)
    ref = _stock_of([members[0], other], atoms)
    _close(calc.results['energy_comm'], ref['energy_comm'])
    _close(calc.results['forces_comm'], ref['forces_comm'])


def test_members_with_different_hyperparameters_are_not_stacked(members):
    """Other plain attributes are not swapped by functional_call: such members must not be vmapped."""
    other = copy.deepcopy(members[1])
    other.products[0].use_sc = not other.products[0].use_sc
    with pytest.raises(ValueError, match='identical architecture'):
        CommitteeCalculator(models=[members[0], other], strategy='vmap')
    calc = CommitteeCalculator(models=[members[0], other], strategy='auto')
    assert not calc.can_vmap
    atoms = _rattled()
    calc.calculate(atoms)
    _close(calc.results['forces_comm'], _stock_of([members[0], other], atoms)['forces_comm'])


@pytest.mark.parametrize('strategy', STRATEGIES)
def test_langevin_md(members, strategy):
    atoms = _rattled()
    atoms.calc = CommitteeCalculator(models=members, strategy=strategy)
    dyn = Langevin(atoms, 2 * units.fs, temperature_K=300, friction=0.02, fixcm=False, rng=np.random.default_rng(0))
    start = atoms.positions.copy()
    energies = []
    dyn.attach(lambda: energies.append(atoms.get_potential_energy()))
    dyn.run(4)
    assert len(energies) == 5 and np.all(np.isfinite(energies))
    assert not np.allclose(atoms.positions, start)
    assert np.isfinite(atoms.get_stress()).all()
    assert np.isfinite(atoms.calc.results['force_sigma']).all()
