"""Stability validation: the verdict on synthetic runs (pure numpy) and ``alml.stability`` on a real tiny committee."""

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from ase.build import bulk

from aiida_alml.selection import assess_run, nve_drift_per_ps
from aiida_alml.workflows.stability import StabilityWorkChain

KB = 8.617330337217213e-05


def _run(ensemble='nve', stop_kind='completed', stop_reason='completed', drift=0.0, sigma=0.05, frames=21):
    time = np.arange(frames) * 10.0  # fs
    temperature = 600 + 30 * np.sin(time / 50)
    # potential energy chosen so that the total energy per atom drifts by `drift` eV/atom/ps (8 atoms)
    potential = 8 * (drift * time / 1000.0) - 1.5 * 8 * KB * temperature
    summary = {'parameters': {'ensemble': ensemble}, 'steps_done': int(time[-1]), 'steps_requested': 200,
               'stop_kind': stop_kind, 'stop_reason': stop_reason, 'n_atoms': 8}
    arrays = {'time': time, 'energy': potential, 'temperature': temperature, 'max_force_sigma': np.full(frames, sigma)}
    return summary, arrays


def test_nve_drift_is_the_slope_of_the_total_energy():
    summary, arrays = _run(drift=0.02)
    assert nve_drift_per_ps(arrays['time'], arrays['energy'], arrays['temperature'], 8) == pytest.approx(0.02)
    with pytest.raises(ValueError, match='at least three frames'):
        nve_drift_per_ps(arrays['time'][:2], arrays['energy'][:2], arrays['temperature'][:2], 8)


def test_assess_run_names_every_problem():
    assert assess_run(*_run(drift=0.001), trust_hi=0.15)['stable']
    drifting = assess_run(*_run(drift=0.02), trust_hi=0.15)
    assert not drifting['stable'] and 'drifts by 0.02 eV/atom/ps' in drifting['problems'][0]
    # σ excursions: calibrated σ (factor 2 × 0.1) above trust_hi on every frame
    excursions = assess_run(*_run(ensemble='nvt_langevin', sigma=0.1), trust_hi=0.15, calibration=2.0)
    assert excursions['excursion_fraction'] == 1.0 and 'above trust_hi' in excursions['problems'][0]
    assert excursions['nve_drift_per_ps'] is None  # a thermostat run has no drift to judge
    blown = assess_run(*_run(stop_kind='close_contact', stop_reason='atoms closer than 0.5 Å'), trust_hi=0.15)
    assert blown['blew_up'] and not blown['stable']


def test_stability_workflow_on_a_real_committee(md_code, trained_committee):
    _, models = trained_committee
    cell = bulk('Cu', 'fcc', a=3.6, cubic=True).repeat((2, 1, 1))
    inputs = {
        'md': {'code': md_code, 'models': {f'member_{i}': m for i, m in enumerate(models)}},
        'structures': {'s0': orm.StructureData(ase=cell)},
        'parameters': orm.Dict({'temperature': 600.0, 'steps': 60, 'timestep': 2.0, 'sample_interval': 5, 'seed': 4}),
        'criteria': orm.Dict({'trust_hi': 1e3, 'max_nve_drift': 1e3}),
    }
    results, node = run_get_node(StabilityWorkChain, **inputs)
    assert node.is_finished_ok, node.exit_message
    report = results['report'].get_dict()
    assert set(report['runs']) == {'s0_nvt_langevin', 's0_nve'} and report['stable']
    # the drift in the report is the slope of the NVE run's own total energy, recomputed here
    from aiida.common.links import LinkType

    calls = {link.link_label: link.node for link in node.base.links.get_outgoing(link_type=LinkType.CALL_WORK).all()}
    assert calls['s0_nve'].process_label == 'MdBaseWorkChain'  # each run under alml.md.base, called as before
    (nve,) = calls['s0_nve'].called
    trajectory = nve.outputs.trajectory
    total = (trajectory.get_array('energy') + 1.5 * len(cell) * KB * trajectory.get_array('temperature')) / len(cell)
    slope = np.polyfit(trajectory.get_times() / 1000.0, total, 1)[0]
    assert report['runs']['s0_nve']['nve_drift_per_ps'] == pytest.approx(slope)
    assert nve.outputs.summary['parameters']['stop_max_force_sigma'] is None  # no early stop while validating
    # the same runs judged with a drift limit below what they show: the work chain says unstable, and why
    strict = abs(slope) / 2
    _, strict_node = run_get_node(StabilityWorkChain, **{**inputs, 'criteria': orm.Dict({'trust_hi': 1e3,
                                                                                        'max_nve_drift': strict})})
    assert strict_node.exit_status == StabilityWorkChain.exit_codes.ERROR_UNSTABLE.status
    assert 'nve: total energy drifts' in strict_node.exit_message


@pytest.mark.parametrize('criteria, message', [
    ({}, 'criteria: trust_hi'),
    ({'trust_hi': 0.1, 'max_drift': 1}, "criteria: unknown keys \\['max_drift'\\]"),
    ({'trust_hi': -1}, 'criteria: trust_hi must be a non-negative number'),
])
def test_bad_criteria_refused(md_code, trained_committee, criteria, message):
    _, models = trained_committee
    with pytest.raises(ValueError, match=message):
        run_get_node(StabilityWorkChain, md={'code': md_code, 'models': {'a': models[0], 'b': models[1]}},
                     structures={'s0': orm.StructureData(ase=bulk('Cu', 'fcc', a=3.6, cubic=True))},
                     parameters=orm.Dict({'temperature': 600.0, 'steps': 10}), criteria=orm.Dict(criteria))
