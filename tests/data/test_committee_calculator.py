"""``aiida_alml.committee_calculator``: an ASE calculator for a campaign's final committee (issue 23).

It takes the models of an alml.active_learning or alml.committee run (or a mapping of MlipModel nodes), loads them
through the hash-checked path, and gives what the engine's own committee evaluation gives, with σ.
"""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from aiida.common.links import LinkType

from aiida_alml.data import MlipModel
from aiida_alml.workflows.links import ACTIVE_LEARNING

pytestmark = pytest.mark.storage

COMMITTEE = 'aiida.workflows:alml.committee'


def _models(folder, count=3):
    from helpers.mace import model_file

    return {f'member_{i}': MlipModel(model_file(folder / f'member_{i}.alml', seed=i)).store() for i in range(count)}


def _run_with_models(process_type, models):
    node = orm.WorkChainNode(process_type=process_type)
    node.set_process_state('finished')
    node.set_exit_status(0)
    node.store()
    for key, model in models.items():
        model.base.links.add_incoming(node, LinkType.RETURN, f'models__{key}')
    node.seal()
    return node


def test_agrees_with_the_engines_committee_for_every_kind_of_source(tmp_path, emt_labelled):
    import aiida_alml
    from aiida_alml.engines.committee import CommitteeCalculator

    models = _models(tmp_path)
    campaign = _run_with_models(ACTIVE_LEARNING, models)
    committee = _run_with_models(COMMITTEE, models)
    # The engine's committee evaluation on the same files, in the members' order.
    engine = CommitteeCalculator(model_paths=[tmp_path / f'member_{i}.alml' for i in range(3)])
    calculators = [
        aiida_alml.committee_calculator(campaign.pk),
        aiida_alml.committee_calculator(committee),
        aiida_alml.committee_calculator(models),
    ]
    for calc in calculators:
        assert calc.members == {key: model.uuid for key, model in models.items()}
    for atoms in emt_labelled[:2]:
        atoms = atoms.copy()
        engine.calculate(atoms, ['energy', 'forces'])
        for calc in calculators:
            atoms.calc = calc
            assert atoms.get_potential_energy() == pytest.approx(engine.results['energy'], abs=1e-10)
            np.testing.assert_allclose(atoms.get_forces(), engine.results['forces'], atol=1e-10)
            np.testing.assert_allclose(calc.results['force_sigma'], engine.results['force_sigma'], atol=1e-10)
            np.testing.assert_allclose(calc.results['force_sigma'],
                                       np.sqrt(calc.results['forces_comm'].var(axis=0).sum(axis=1)), atol=1e-12)
            assert calc.results['energy_sigma'] == pytest.approx(np.sqrt(engine.results['energy_var']), abs=1e-10)
            assert calc.results['energy_sigma'] == pytest.approx(calc.results['energy_comm'].std(), abs=1e-10)
            assert calc.results['force_sigma'].max() > 0  # three different members disagree


def test_members_are_taken_in_numeric_order_from_any_reference(tmp_path):
    from aiida_alml.calculator import committee_models

    models = _models(tmp_path, 2)
    shuffled = {'member_10': models['member_1'], 'member_2': models['member_0']}
    assert list(committee_models(shuffled)) == ['member_2', 'member_10']
    campaign = _run_with_models(ACTIVE_LEARNING, shuffled)
    for reference in (campaign, campaign.pk, campaign.uuid, str(campaign.pk)):
        assert {key: model.uuid for key, model in committee_models(reference).items()} == {
            'member_2': models['member_0'].uuid, 'member_10': models['member_1'].uuid}
        assert list(committee_models(reference)) == ['member_2', 'member_10']


def test_refuses_what_is_not_a_committee(tmp_path):
    from aiida_alml.calculator import committee_calculator

    model = _models(tmp_path, 1)['member_0']
    with pytest.raises(TypeError, match='alml.active_learning or alml.committee run'):
        committee_calculator(model.pk)  # a model node, not a run
    with pytest.raises(TypeError, match='not MlipModel nodes'):
        committee_calculator({'member_0': model, 'member_1': orm.Int(1)})
    running = orm.WorkChainNode(process_type=ACTIVE_LEARNING)
    running.set_process_state('running')
    running.store()
    with pytest.raises(ValueError, match='has no output `models`'):
        committee_calculator(running)
