"""``alml.md`` and its engine: uncertainty arrays, stop criteria, input checks, a daemon run."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT

from aiida_alml.calculations.md import MdCalculation
from aiida_alml.data import MlipModel
from aiida_alml.engines.md import MdParameterError, run_md, validate_parameters


def _cu_structure(rattle=0.05, repeat=(2, 2, 2)):
    from helpers.mace import cu_cell

    atoms = cu_cell(repeat)
    atoms.rattle(stdev=rattle, seed=3)
    return atoms


def _md_inputs(md_code, models, **parameters):
    return {
        'code': md_code,
        'structure': orm.StructureData(ase=_cu_structure()),
        'models': {f'member_{i}': model for i, model in enumerate(models)},
        'parameters': orm.Dict({'temperature': 300.0, 'steps': 20, 'sample_interval': 10, **parameters}),
        'metadata': {'options': {'resources': {'num_machines': 1}, 'environment_variables': {'OMP_NUM_THREADS': '1'}}},
    }


def _refused(inputs, match):
    with pytest.raises(ValueError, match=match):
        run_get_node(MdCalculation, **inputs)


def _fake_model(tmp_path, name, **attributes):
    """An untrained model file (the checks below read its header, not its quality)."""
    from helpers.mace import model_file

    attributes = {'elements': ['Cu'], 'r_max': 4.0, 'dtype': 'float64', **attributes}
    path = model_file(tmp_path / name, seed=len(name), r_max=attributes['r_max'],
                      elements=tuple(attributes['elements']), dtype=attributes['dtype'])
    return MlipModel(file=path)


# ---------------------------------------------------------------------- engine with a fake committee (fast)
class FakeCommittee(Calculator):
    """EMT plus a per-member force offset of size ``spread``; NaN forces from evaluation ``nan_after`` on."""

    implemented_properties = ['energy', 'forces']

    def __init__(self, spread=0.0, nan_after=None, members=3):
        super().__init__()
        self.spread, self.nan_after, self.members, self.calls = spread, nan_after, members, 0
        self.rng = np.random.default_rng(0)

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        emt = EMT()
        emt.calculate(atoms, ['energy', 'forces'], all_changes)
        self.calls += 1
        offsets = self.spread * self.rng.standard_normal((self.members, len(atoms), 3))
        forces_comm = emt.results['forces'][None] + offsets
        if self.nan_after is not None and self.calls > self.nan_after:
            forces_comm[:] = np.nan
        energies = emt.results['energy'] + self.spread * np.arange(self.members)
        self.results = {
            'energy': energies.mean(), 'forces': forces_comm.mean(axis=0), 'forces_comm': forces_comm,
            'energy_comm': energies,
        }  # fmt: skip


def test_engine_stops_on_sustained_force_sigma():
    arrays, summary = run_md(
        _cu_structure(),
        FakeCommittee(spread=0.5),
        {'temperature': 300.0, 'steps': 100, 'sample_interval': 5, 'stop_max_force_sigma': 0.1, 'stop_patience': 3},
    )
    assert summary['stopped_early'] and 'max_force_sigma above 0.1' in summary['stop_reason']
    assert summary['stop_kind'] == 'force_sigma'
    # Three consecutive samples above the threshold: steps 0, 5, 10; the frames up to the stop are kept.
    assert summary['steps_done'] == 10 and summary['frames'] == 3
    assert arrays['step'].tolist() == [0, 5, 10]


def test_engine_stops_on_non_finite_forces_and_keeps_earlier_frames():
    arrays, summary = run_md(_cu_structure(), FakeCommittee(nan_after=2), {'temperature': 300.0, 'steps': 50,
                                                                           'sample_interval': 1})  # fmt: skip
    assert summary['stopped_early'] and 'non-finite' in summary['stop_reason']
    assert len(arrays['step']) >= 1 and np.isfinite(arrays['forces']).all()


def test_engine_stops_on_close_contact():
    atoms = _cu_structure()
    atoms.positions[1] = atoms.positions[0] + [0.3, 0.0, 0.0]
    arrays, summary = run_md(atoms, FakeCommittee(), {'temperature': 300.0, 'steps': 50, 'min_distance': 0.5})
    assert summary['steps_done'] == 0 and 'closer than min_distance 0.5' in summary['stop_reason']
    # the offending frame is not kept: it must never become a candidate for labelling
    assert summary['stop_kind'] == 'close_contact' and summary['frames'] == 0 and 'positions' not in arrays


def test_engine_ramp_targets():
    arrays, summary = run_md(
        _cu_structure(), FakeCommittee(), {'ensemble': 'nvt_berendsen', 'temperature_start': 100.0,
                                           'temperature_end': 500.0, 'steps': 40, 'sample_interval': 10},
    )  # fmt: skip
    assert summary['stop_reason'] == 'completed'
    assert arrays['target_temperature'].tolist() == [100.0, 200.0, 300.0, 400.0, 500.0]


@pytest.mark.parametrize(
    ('parameters', 'match'),
    [
        ({'temperature': 0.0, 'steps': 10}, 'temperature must be positive'),
        ({'temperature': -5.0, 'steps': 10}, 'temperature must be positive'),
        ({'temperature_start': 300.0, 'temperature_end': 0.0, 'steps': 10}, 'temperature_end must be positive'),
        ({'temperature': 300.0, 'steps': 10, 'timestep': 0.0}, 'timestep must be positive'),
        ({'temperature': 300.0, 'steps': 0}, 'steps must be positive'),
        ({'temperature': 300.0, 'steps': -3}, 'steps must be positive'),
        ({'temperature': 300.0, 'steps': 2.5}, 'steps must be a whole number'),
        ({'temperature': 300.0, 'steps': 10, 'ensemble': 'npt_berendsen'}, 'pressure must be given'),
        ({'temperature': 300.0, 'steps': 10, 'tempreature': 3}, 'did you mean temperature'),
        ({'steps': 10}, 'give either temperature or both'),
    ],
)
def test_bad_md_parameters(parameters, match):
    with pytest.raises(MdParameterError, match=match):
        validate_parameters(parameters)


def test_validated_parameters_validate_again_unchanged():
    for given in ({'temperature': 300, 'steps': 5}, {'temperature_start': 10, 'temperature_end': 20, 'steps': 5}):
        once = validate_parameters(given)
        assert validate_parameters(once) == once


# ---------------------------------------------------------------------- calculation input checks (nothing runs)
def test_one_member_is_refused(md_code, tmp_path):
    _refused(_md_inputs(md_code, [_fake_model(tmp_path, 'a')]), 'at least two members')


@pytest.mark.parametrize(
    ('attributes', 'match'),
    [
        ({'r_max': 5.0}, 'members disagree on r_max'),
        ({'dtype': 'float32'}, 'members disagree on dtype'),
        ({'elements': ['Ag', 'Cu']}, 'members disagree on elements'),
    ],
)
def test_disagreeing_members_are_refused(md_code, tmp_path, attributes, match):
    models = [_fake_model(tmp_path, 'a'), _fake_model(tmp_path, 'b', **attributes)]
    _refused(_md_inputs(md_code, models), match)


def test_structure_with_untrained_element_is_refused(md_code, tmp_path):
    inputs = _md_inputs(md_code, [_fake_model(tmp_path, 'a'), _fake_model(tmp_path, 'b')])
    atoms = _cu_structure()
    atoms[0].symbol = 'Ag'
    inputs['structure'] = orm.StructureData(ase=atoms)
    _refused(inputs, r"structure: has elements \['Ag'\] the committee was not trained on")


def test_bad_temperature_is_refused_by_the_calculation(md_code, tmp_path):
    inputs = _md_inputs(md_code, [_fake_model(tmp_path, 'a'), _fake_model(tmp_path, 'b')], temperature=-1.0)
    _refused(inputs, 'parameters: temperature must be positive')


def test_tampered_model_is_refused(md_code, tmp_path):
    tampered = _fake_model(tmp_path, 'b')
    (tmp_path / 'other').write_bytes(b'other bytes')
    tampered.base.repository.put_object_from_file(str(tmp_path / 'other'), tampered.filename)
    _refused(_md_inputs(md_code, [_fake_model(tmp_path, 'a'), tampered]), 'member 1: .*SHA-256')


# ---------------------------------------------------------------------- real committee runs
def _independent_sigma(models, trajectory, frame):
    """Committee evaluated again outside the engine, from the hash-checked model files."""
    from mace.calculators import MACECalculator

    from aiida_alml.engines.model_format import load_model

    with models[0].verified_path() as first, models[1].verified_path() as second:
        calculator = MACECalculator(models=[load_model(first), load_model(second)], device='cpu', default_dtype='float64')
        atoms = trajectory.get_step_structure(frame).get_ase()
        atoms.calc = calculator
        atoms.get_potential_energy()
        return dict(calculator.results)


@pytest.mark.slow
def test_md_records_uncertainty(md_code, trained_committee):
    _, models = trained_committee
    inputs = _md_inputs(
        md_code, models, ensemble='nvt_berendsen', temperature=None, temperature_start=300.0, temperature_end=600.0,
        steps=20, sample_interval=10, store_committee_forces=True,
    )  # fmt: skip
    results, node = run_get_node(MdCalculation, **inputs)
    assert node.is_finished_ok, node.exit_message
    trajectory, summary = results['trajectory'], results['summary'].get_dict()
    assert summary['stop_reason'] == 'completed' and summary['steps_done'] == 20 and summary['frames'] == 3
    assert summary['steps_per_second'] > 0
    evaluation = summary['committee_evaluation']
    assert (evaluation['members'], evaluation['radial'], evaluation['convolution']) == (2, 'table', 'fused')
    assert evaluation['radial_table_max_error'] <= 1e-9 and evaluation['last_strategy'] in ('sequential', 'vmap')
    assert trajectory.get_stepids().tolist() == [0, 10, 20]
    assert list(trajectory.pbc) == [True, True, True]
    assert trajectory.get_array('target_temperature').tolist() == [300.0, 450.0, 600.0]

    # The uncertainty arrays from the members' forces, computed independently with numpy.
    forces_comm = trajectory.get_array('forces_comm')  # (frames, members, atoms, 3)
    assert forces_comm.shape == (3, 2, 32, 3)
    deviation = forces_comm - forces_comm.mean(axis=1, keepdims=True)
    sigma = np.sqrt((deviation**2).mean(axis=1).sum(axis=-1))
    np.testing.assert_allclose(trajectory.get_array('force_sigma'), sigma, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(trajectory.get_array('max_force_sigma'), sigma.max(axis=1), rtol=1e-10)
    np.testing.assert_allclose(trajectory.get_array('mean_force_sigma'), sigma.mean(axis=1), rtol=1e-10)
    assert trajectory.get_array('stress_sigma').shape == (3, 6)

    # And against a fresh evaluation of the committee at the last frame.
    again = _independent_sigma(models, trajectory, 2)
    np.testing.assert_allclose(forces_comm[2], again['forces_comm'], rtol=1e-8, atol=1e-10)
    energies = np.asarray(again['energy_comm'])
    assert trajectory.get_array('energy_sigma_per_atom')[2] == pytest.approx(energies.std() / 32, rel=1e-6)


def test_uncertainty_biased_md_with_a_mace_committee(md_code, trained_committee):
    """NPT with the bias (forces and stress) through AiiDA: each frame records the committee's own energy and the bias
    -τ σ_E, checked against a fresh evaluation of the members."""
    _, models = trained_committee
    inputs = _md_inputs(md_code, models, ensemble='npt_berendsen', pressure=0.0, steps=20, sample_interval=10,
                        uncertainty_bias=5.0)
    results, node = run_get_node(MdCalculation, **inputs)
    assert node.is_finished_ok, node.exit_message
    trajectory, summary = results['trajectory'], results['summary'].get_dict()
    assert summary['parameters']['uncertainty_bias'] == 5.0
    assert summary['committee_evaluation']['uncertainty_bias'] == 5.0
    again = _independent_sigma(models, trajectory, 2)
    energies = np.asarray(again['energy_comm'])
    assert trajectory.get_array('bias_energy')[2] == pytest.approx(-5.0 * energies.std(), rel=1e-6)
    assert trajectory.get_array('energy')[2] == pytest.approx(energies.mean(), rel=1e-9)
    assert (trajectory.get_array('max_bias_force') > 0).all()


@pytest.mark.slow
def test_bad_committee_stops_early(md_code, trained_committee):
    """Two 3-epoch members disagree a lot: a low threshold stops the run after `stop_patience` samples."""
    _, models = trained_committee
    inputs = _md_inputs(md_code, models, steps=200, sample_interval=2, stop_max_force_sigma=1e-3, stop_patience=2)
    results, node = run_get_node(MdCalculation, **inputs)
    assert node.is_finished_ok, node.exit_message
    summary = results['summary'].get_dict()
    assert summary['stopped_early'] and 'max_force_sigma above 0.001' in summary['stop_reason']
    assert summary['steps_done'] == 2 and summary['frames'] == 2
    assert (results['trajectory'].get_array('max_force_sigma') > 1e-3).all()


@pytest.mark.slow
@pytest.mark.daemon
def test_md_through_the_daemon(md_code, trained_committee, submit_and_await):
    _, models = trained_committee
    node = submit_and_await(MdCalculation, timeout=300, **_md_inputs(md_code, models, ensemble='nvt_langevin'))
    assert node.is_finished_ok, node.exit_message
    assert node.outputs.summary['frames'] == 3
    assert node.outputs.trajectory.get_array('force_sigma').shape == (3, 32)


def test_engine_refuses_a_model_file_whose_hash_changed(tmp_path):
    """Checked before the file is read; the parser maps the error's name to exit code 310."""
    from aiida_alml.engines.committee import ModelHashError
    from aiida_alml.engines.md import load_calculator

    path = tmp_path / 'member.model'
    path.write_bytes(b'not what was sent')
    with pytest.raises(ModelHashError, match=f'sha256 mismatch for model file {path}'):
        load_calculator([{'path': str(path), 'sha256': '0' * 64}], 'cpu', 'float64')


@pytest.mark.parametrize(('changes', 'message'), [
    ({'steps': 10**12}, r'steps must be at most 100000000'),
    ({'temperature': 1e12}, r'temperature must be at most 10000 K'),
    ({'timestep': 100.0}, r'timestep must be at most 10 fs'),
    ({'ensemble': 'npt_berendsen', 'pressure': 1e9}, r'pressure must be at most'),
    ({'steps': 10**7, 'sample_interval': 1}, r'10000000 frames per run, more than 100000'),
])
def test_md_upper_bounds_hold_for_every_caller(changes, message):
    """In validate_parameters, so that alml.md and alml.stability used directly, and the engine itself, refuse them."""
    with pytest.raises(MdParameterError, match=message):
        validate_parameters({'temperature': 300.0, 'steps': 100, **changes})
    assert validate_parameters({'temperature': 300.0, 'steps': 100})['steps'] == 100
