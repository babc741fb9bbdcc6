"""``alml.active_learning`` end to end on CPU: EMT reference, tiny MACE committee, short MD."""

import pytest
from aiida import orm
from aiida.engine import run_get_node
from ase.build import bulk

from aiida_alml.data import ConfigurationSet
from aiida_alml.workflows.active_learning import ActiveLearningWorkChain

pytestmark = [pytest.mark.slow]


@pytest.fixture
def al_inputs(label_code, mace_train_code, md_code):
    from conftest import TINY_MACE, mace_train_options

    cubic = bulk('Cu', 'fcc', a=3.61, cubic=True)
    vacancy = cubic.repeat((2, 1, 1))
    del vacancy[3]

    def factory(**overrides):
        inputs = {
            'initial_structures': ConfigurationSet.from_ase([cubic, cubic.repeat((2, 1, 1)), vacancy]),
            'initial_perturbation': orm.Dict({'count': 12, 'rattle_std': 0.06, 'max_strain': 0.03, 'seed': 1}),
            'exploration_structures': ConfigurationSet.from_ase([vacancy]),
            'label': {
                'labeller': orm.Str('ase'),
                'ase': {'code': label_code, 'calculator': orm.Dict({'name': 'emt'}),
                        'properties': orm.List(['energy', 'forces'])},
            },
            'train': {
                'num_members': orm.Int(2),
                'train': {'code': mace_train_code, 'parameters': orm.Dict({**TINY_MACE, 'batch_size': 4}),
                          'e0s': orm.Str('average'), 'metadata': {'options': mace_train_options()}},
            },
            'explore': {
                'md': {'code': md_code},
                'conditions': orm.List([{'ensemble': 'nvt_langevin', 'temperature': 600.0, 'steps': 60,
                                         'sample_interval': 5, 'timestep': 2.0, 'seed': 3}]),
            },
            'selection': orm.Dict({'trust_lo': 0.05, 'trust_hi': 5.0, 'labels_per_iteration': 4}),
            'max_iterations': orm.Int(3),
            'max_labels': orm.Int(100),
        }
        inputs.update(overrides)
        return inputs

    return factory


def test_stops_on_label_budget_through_the_daemon(submit_and_await, al_inputs):
    # trust_lo tiny: every frame is a candidate, so each iteration labels up to the cap (4), then what is left (2)
    inputs = al_inputs(max_labels=orm.Int(18), warm_start=orm.Bool(True),
                       warm_start_parameters=orm.Dict({'max_num_epochs': 2}),
                       selection=orm.Dict({'trust_lo': 1e-6, 'trust_hi': 50.0, 'labels_per_iteration': 4}))
    node = submit_and_await(ActiveLearningWorkChain, timeout=1200, **inputs)
    assert node.exit_status == ActiveLearningWorkChain.exit_codes.ERROR_LABEL_BUDGET_SPENT.status, node.exit_message
    curve = node.outputs.learning_curve.get_dict()
    assert curve['stop_reason'] == 'label_budget' and curve['labels_used'] == 18
    first, second = curve['iterations']
    assert (first['labels_new'], second['labels_new']) == (4, 2)  # the cap, then what was left of the budget
    assert first['frames'] == 13 and first['candidate_fraction'] == 1.0
    # the calibration fitted on iteration 0's new labels scales the uncertainty of iteration 1
    assert second['calibration_factor'] == pytest.approx(first['fitted_calibration_factor'])
    assert first['oos_force_rmse'] > 0
    # all outputs still attached
    assert len(node.outputs.dataset) == 18 and len(node.outputs.models) == 2
    record = node.outputs.selection_records.iteration_0
    assert int(record.get_array('chosen').sum()) == 4 and len(record.get_array('reason')) == 13
    # warm start: each member of iteration 1 continued from the same member of iteration 0
    from aiida_alml.data import MlipModel
    final = node.outputs.models.member_1
    parent = final.creator.inputs.parent_model
    assert isinstance(parent, MlipModel) and parent.creator.base.attributes.get('process_label') == 'MaceTrainCalculation'
    assert parent.creator.inputs.seed.value == final.creator.inputs.seed.value
    # provenance API: the EMT jobs behind the final dataset, by iteration
    from aiida_alml.provenance import labelling_calculations, labels_of_iteration

    jobs = labelling_calculations(node.outputs.dataset)
    assert sum(job['num_configurations'] for job in jobs) == 18
    assert sorted(job['iteration'] for job in jobs) == [-1, 0, 1]
    assert all(job['settings']['calculator'] == {'name': 'emt'} for job in jobs)
    assert len(labels_of_iteration(node, 1)) == 2
    # lineage: the final dataset descends from the EMT labelling calculations
    query = orm.QueryBuilder().append(orm.CalcJobNode, filters={'attributes.process_label': 'AseLabelCalculation'},
                                      tag='calc').append(ConfigurationSet, with_ancestors='calc',
                                                         filters={'id': node.outputs.dataset.pk})
    assert query.count() >= 1


def test_converges_when_exploration_stays_trusted(al_inputs, emt_labelled):
    # A wide trust window: every frame is accurate. The first iteration still labels a diverse batch of accurate
    # frames, because σ has not been checked against labels yet; once calibrated, the loop converges.
    inputs = al_inputs(selection=orm.Dict({'trust_lo': 10.0, 'trust_hi': 20.0, 'labels_per_iteration': 4}),
                       patience=orm.Int(1), target_accurate_fraction=orm.Float(0.9),
                       test_set=ConfigurationSet.from_ase(emt_labelled[:3]))
    results, node = run_get_node(ActiveLearningWorkChain, **inputs)
    assert node.is_finished_ok, node.exit_message
    curve = results['learning_curve'].get_dict()
    assert curve['stop_reason'] == 'converged' and len(curve['iterations']) == 2
    first, second = curve['iterations']
    assert first['accurate_fraction'] == 1.0 and first['labels_new'] == 4
    assert set(results['selection_records']['iteration_0'].get_array('reason')) == {'calibration', 'accurate'}
    assert second['accurate_fraction'] == 1.0 and second['labels_new'] == 0 and curve['labels_used'] == 16
    assert second['calibration_factor'] == pytest.approx(first['fitted_calibration_factor'])
    # each iteration's committee was scored on the test set, independently of our numbers: check one by hand
    assert 0 < first['test_force_rmse'] < 5 and 'test_force_rmse' in second
    import numpy as np
    from aiida_alml.engines.committee import CommitteeCalculator

    models = [results['models'][key] for key in sorted(results['models'])]
    with models[0].verified_path() as a, models[1].verified_path() as b:
        calculator = CommitteeCalculator(model_paths=[str(a), str(b)])
        errors = []
        for atoms in emt_labelled[:3]:
            reference = atoms.get_forces()
            atoms.calc = calculator
            errors.append(np.linalg.norm(atoms.get_forces() - reference, axis=1))
    assert second['test_force_rmse'] == pytest.approx(float(np.sqrt(np.mean(np.concatenate(errors) ** 2))))


@pytest.mark.parametrize('name, value, message', [
    ('selection', {'trust_lo': 0.2, 'trust_hi': 0.1}, r'trust_lo \(0.2\) must be smaller than trust_hi'),
    ('selection', {'labels_per_iteration': 0}, 'labels_per_iteration must be a positive integer'),
    ('selection', {'trust_low': 0.1}, r'unknown keys trust_low \(did you mean trust_lo'),
    ('max_labels', 0, 'max_labels: must be positive'),
    ('max_iterations', -1, 'max_iterations: must be positive'),
    ('initial_perturbation', {'count': 0}, 'count must be a positive integer'),
])
def test_bad_inputs_refused_before_running(al_inputs, name, value, message):
    node = orm.Dict(value) if isinstance(value, dict) else orm.Int(value)
    with pytest.raises(ValueError, match=message):
        run_get_node(ActiveLearningWorkChain, **al_inputs(**{name: node}))


def test_exploration_elements_without_labeller_refused(al_inputs):
    silver = bulk('Ag', 'fcc', a=4.09, cubic=True)
    with pytest.raises(ValueError, match=r"exploration_structures: elements \['Ag'\] are absent"):
        run_get_node(ActiveLearningWorkChain, **al_inputs(exploration_structures=ConfigurationSet.from_ase([silver])))
    silicon = bulk('Si', 'diamond', a=5.43)
    with pytest.raises(ValueError, match=r"the labeller \(EMT\) cannot label elements \['Si'\]"):
        run_get_node(ActiveLearningWorkChain, **al_inputs(initial_structures=ConfigurationSet.from_ase([silicon]),
                                                          exploration_structures=ConfigurationSet.from_ase([silicon])))


def test_wrong_plugin_code_and_unlabelled_dataset_refused(al_inputs, md_code, cu_images):
    inputs = al_inputs()
    inputs['label']['ase']['code'] = md_code
    with pytest.raises(ValueError, match="label.ase.code: is a code for 'alml.md'"):
        run_get_node(ActiveLearningWorkChain, **inputs)
    inputs = al_inputs(initial_dataset=ConfigurationSet.from_ase(cu_images))
    with pytest.raises(ValueError, match='initial_dataset: needs energy and forces labels'):
        run_get_node(ActiveLearningWorkChain, **inputs)
    with pytest.raises(ValueError, match='test_set: needs energy and forces labels'):
        run_get_node(ActiveLearningWorkChain, **al_inputs(test_set=ConfigurationSet.from_ase(cu_images)))
