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
            # No long final stage two (the product's default, 400 steps): minutes per campaign here. The budget
            # test below runs a short one.
            'final_stage_two_steps': orm.Int(0),
        }
        inputs.update(overrides)
        return inputs

    return factory


def _trained_on(model):
    return model.creator.inputs.training_set


def test_stops_on_label_budget_through_the_daemon(submit_and_await, al_inputs):
    # The reference fails on cells of more than 7 atoms (a NaN energy, like a diverging SCF): the four 8-atom initial
    # cells are failed labels, far above max_failed_fraction, yet the campaign keeps the 8 labels that succeeded and
    # goes on. Failed labels are charged to the budget. trust_lo tiny: every counted frame is a candidate.
    inputs = al_inputs(max_labels=orm.Int(18), warm_start=orm.Bool(True), final_stage_two_steps=orm.Int(60),
                       warm_start_parameters=orm.Dict({'max_num_epochs': 2}),
                       selection=orm.Dict({'trust_lo': 1e-6, 'trust_hi': 50.0, 'labels_per_iteration': 4}))
    inputs['label']['ase']['calculator'] = orm.Dict({'name': 'alml_test.nan_for_heavy_cells',
                                                     'kwargs': {'max_atoms': 7}})
    del inputs['train']['train']['e0s']  # the E0s come from an isolated atom labelled with the campaign's reference
    node = submit_and_await(ActiveLearningWorkChain, timeout=1200, **inputs)
    assert node.exit_status == ActiveLearningWorkChain.exit_codes.ERROR_LABEL_BUDGET_SPENT.status, node.exit_message
    curve = node.outputs.learning_curve.get_dict()
    # 12 initial calculations (4 failed) + 4 + 2: the budget of 18 counts every reference calculation
    assert curve['stop_reason'] == 'label_budget' and curve['labels_used'] == 18 and curve['labels_failed'] == 4
    first, second = curve['iterations']
    assert (first['labels_new'], second['labels_new']) == (4, 2)  # the cap, then what was left of the budget
    # what the labels cost: the reference's own CPU seconds (EMT: milliseconds) next to the jobs' wall seconds
    assert 0 < first['reference_cpu_s'] < first['reference_time_s']
    # 13 frames per trajectory; the starting structure (step 0) is neither counted nor chosen
    assert first['frames'] == 13 and first['frames_counted'] == 12 and first['num_starts'] == 1
    assert first['candidate_fraction'] == 1.0
    # every iteration is a new observation: new member and MD seeds, recorded
    assert first['member_seeds'] != second['member_seeds'] and first['md_seeds'] != second['md_seeds']
    # the calibration fitted on iteration 0's new labels scales the uncertainty of iteration 1
    assert second['calibration_factor'] == pytest.approx(first['fitted_calibration_factor'])
    low, high = first['calibration_interval']
    assert low <= first['fitted_calibration_factor'] <= high
    # the loop stopped right after labelling: a final training on the whole dataset, so the models saw every label
    assert len(node.outputs.dataset) == 8 + 4 + 2 and len(node.outputs.models) == 2
    assert curve['models_trained_on_dataset'] and curve['final_training']['labels_total'] == 14
    for model in node.outputs.models.values():
        assert _trained_on(model).uuid == node.outputs.dataset.uuid
        # the final stage two has at least 60 steps: 14 labels, 2 split off for validation, batches of 4 -> 3 steps
        # an epoch, 20 epochs after the one epoch of stage one that the warm start's 2 epochs give (MACE's 3/4)
        parameters = model.creator.inputs.parameters.get_dict()
        assert (parameters['start_swa'], parameters['max_num_epochs'], parameters['swa_lr']) == (1, 21, 0.01)
        assert model.creator.outputs.metrics['stage_two']
    record = node.outputs.selection_records.iteration_0
    assert int(record.get_array('chosen').sum()) == 4 and len(record.get_array('reason')) == 13
    # warm start: each member of iteration 1 continued from the same member of iteration 0
    from aiida_alml.data import MlipModel
    calls = {link.link_label: link.node for link in node.base.links.get_outgoing().all()}
    member = calls['train_1'].outputs.models.member_1
    parent = member.creator.inputs.parent_model
    assert isinstance(parent, MlipModel) and parent.uuid == calls['train_0'].outputs.models.member_1.uuid
    # E0s: a lone Cu atom labelled through the daemon by the campaign's labeller (not charged to the budget), and
    # every training, warm-started or not, got them and holds them in its weights
    assert node.outputs.e0s.get_dict() == {'Cu': pytest.approx(3.51, abs=0.01)}
    assert node.outputs.e0s.creator.inputs.labelled.uuid == calls['label_isolated_atoms'].outputs.labelled.uuid
    for link in ('train_0', 'train_1', 'train_final'):
        for model in calls[link].outputs.models.values():
            assert model.creator.inputs.e0s.uuid == node.outputs.e0s.uuid
            assert model.creator.outputs.metrics['e0s'] == node.outputs.e0s.get_dict()
    # provenance API: the labelling jobs behind the final dataset, by iteration
    from aiida_alml.provenance import labelling_calculations, labels_of_iteration

    jobs = labelling_calculations(node.outputs.dataset)
    assert sum(job['num_configurations'] for job in jobs) == 14
    assert sorted(job['iteration'] for job in jobs) == [-1, 0, 1]
    assert len(labels_of_iteration(node, 1)) == 2
    # lineage: the final dataset descends from the labelling calculations
    query = orm.QueryBuilder().append(orm.CalcJobNode, filters={'attributes.process_label': 'AseLabelCalculation'},
                                      tag='calc').append(ConfigurationSet, with_ancestors='calc',
                                                         filters={'id': node.outputs.dataset.pk})
    assert query.count() >= 1


def _hot_test_set(count=6, temperature=1200.0, seed=11, atoms=None):
    """Held-out labels from independent EMT MD of the vacancy cell (or ``atoms``), hotter than the exploration."""
    import numpy as np
    from ase import units
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    if atoms is None:
        atoms = bulk('Cu', 'fcc', a=3.61, cubic=True).repeat((2, 2, 1))
        del atoms[5]
    atoms = atoms.copy()
    atoms.calc = EMT()
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    dynamics = Langevin(atoms, 2 * units.fs, temperature_K=temperature, friction=0.02, rng=rng)
    frames = []
    for _ in range(count):
        dynamics.run(25)
        frame = atoms.copy()
        frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        frames.append(frame)
    return ConfigurationSet.from_ase(frames)


def test_realistic_window_hot_exploration_learns_without_converging(al_inputs):
    # The default trust window (0.05 / 0.15 eV/Å) with a tiny committee exploring a vacancy cell at 900 K: the
    # committee is far from accurate, so convergence must not be reached. Candidates are scarce and failed frames
    # abound; the loop must still label up to its cap every iteration (rescuing the earliest failed frames), end
    # on the iteration limit with a final model trained on every label, and its held-out error must fall.
    cell = bulk('Cu', 'fcc', a=3.61, cubic=True).repeat((2, 2, 1))
    del cell[5]
    conditions = [{'ensemble': 'nvt_langevin', 'temperature': 900.0, 'steps': 40, 'sample_interval': 5,
                   'timestep': 2.0, 'seed': seed} for seed in (1, 2)]
    inputs = al_inputs(
        exploration_structures=ConfigurationSet.from_ase([cell]),
        selection=orm.Dict({'trust_lo': 0.05, 'trust_hi': 0.15, 'labels_per_iteration': 5}),
        max_iterations=orm.Int(2), test_set=_hot_test_set(), seed=orm.Int(7),
    )
    inputs['explore']['conditions'] = orm.List(conditions)
    results, node = run_get_node(ActiveLearningWorkChain, **inputs)
    assert node.exit_status == ActiveLearningWorkChain.exit_codes.ERROR_MAX_ITERATIONS.status, node.exit_message
    curve = results['learning_curve'].get_dict()
    iterations = curve['iterations']
    assert curve['stop_reason'] == 'max_iterations' and len(iterations) == 2
    assert not any(row['converged_now'] for row in iterations)
    assert all(row['labels_new'] == 5 for row in iterations)  # never starved
    reasons = set()
    for key in ('iteration_0', 'iteration_1'):
        record = results['selection_records'][key]
        reasons |= set(record.get_array('reason')[record.get_array('chosen')].tolist())
        assert set(record.get_array('reason')[record.get_array('step') == 0]) == {'start'}
    assert 'rescue' in reasons or all(row['failed_fraction'] == 0 for row in iterations)
    assert sum(row['failed_fraction'] for row in iterations) > 0  # the hot exploration does fail somewhere
    # One owned record per iteration: iterations.iteration_<i> is the row record_<i> returned; learning_curve is
    # assembled from those rows, and the progress table reads them back.
    from aiida.common.links import LinkType

    from aiida_alml.progress import iteration_table, recorded_rows

    rows = results['iterations']
    assert [rows[f'iteration_{i}'].get_dict() for i in range(2)] == iterations
    assert [rows[f'iteration_{i}'].creator.base.links.get_incoming(link_type=LinkType.CALL_CALC).one().link_label
            for i in range(2)] == ['record_0', 'record_1']
    assert results['learning_curve'].creator.process_label == 'assemble_learning_curve'
    assert iteration_table(node) == iterations and recorded_rows(node) == dict(enumerate(iterations))
    # Work chains return data, calculations create it: every Data node the campaign or any workflow under it
    # returned has a creator (a calcfunction, or a CalcJob's parser).
    workflows = [node, *(child for child in node.called_descendants if isinstance(child, orm.WorkflowNode))]
    returned = [(workflow, link.link_label, link.node) for workflow in workflows
                for link in workflow.base.links.get_outgoing(link_type=LinkType.RETURN).all()]
    orphans = [f'{workflow.process_label}<{workflow.pk}>.{label}' for workflow, label, data in returned
               if not isinstance(data.creator, orm.CalculationNode)]
    assert not orphans, orphans
    assert {'learning_curve', 'iterations__iteration_0', 'iterations__iteration_1', 'overview', 'summary',
            'failures'} <= {label for _, label, _ in returned}
    # the final committee was trained on the output dataset, which holds every label
    assert len(results['dataset']) == 12 + 10
    assert all(_trained_on(model).uuid == results['dataset'].uuid for model in results['models'].values())
    final = curve['final_training']
    assert final['test_force_rmse'] < iterations[0]['test_force_rmse']
    # the calibration is pooled over both iterations' new labels
    calls = {link.link_label: link.node for link in node.base.links.get_outgoing().all()}
    assert calls['calibrate_1'].outputs.result['pooled'] == ['iteration_0', 'iteration_1']
    assert calls['calibrate_1'].outputs.result['num_frames'] == 10
    # issue 26: iteration 1's selection describes only the 5 labels iteration 0 added; the rest comes from the block
    # iteration 0's selection described (its output, this one's input)
    first, second = calls['select_0'], calls['select_1']
    assert second.inputs.environments.iteration_0.uuid == first.outputs.training_environments.uuid
    assert len(second.inputs.training_set) == len(first.inputs.training_set) + 5
    assert len(second.outputs.training_environments.get_array('fingerprint')) == 5


@pytest.mark.parametrize('name, value, message', [
    ('selection', {'trust_lo': 0.2, 'trust_hi': 0.1}, r'trust_lo \(0.2\) must be smaller than trust_hi'),
    ('selection', {'labels_per_iteration': 0}, 'labels_per_iteration must be a positive integer'),
    ('selection', {'trust_low': 0.1}, r'unknown keys trust_low \(did you mean trust_lo'),
    ('max_labels', 0, 'max_labels: must be positive'),
    ('max_iterations', -1, 'max_iterations: must be positive'),
    ('initial_perturbation', {'count': 0}, 'count must be a positive integer'),
    ('isolated_atom_box', 0.0, 'isolated_atom_box: must be a positive length in Å, not 0.0'),
])
def test_bad_inputs_refused_before_running(al_inputs, name, value, message):
    types = {dict: orm.Dict, float: orm.Float, int: orm.Int}
    node = types[type(value)](value)
    with pytest.raises(ValueError, match=message):
        run_get_node(ActiveLearningWorkChain, **al_inputs(**{name: node}))


def test_unknown_keys_of_exposed_namespaces_refused(al_inputs):
    """AiiDA marks the exposed namespaces (train, explore, label) dynamic: without our check a misspelt block is
    dropped without a word (here `train.trian`, whose settings would silently not apply)."""
    inputs = al_inputs()
    inputs['train'] = {**inputs['train'], 'trian': {'parameters': orm.Dict({'max_num_epochs': 50})}}
    with pytest.raises(ValueError, match=r'train.trian: unknown input \(did you mean train'):
        run_get_node(ActiveLearningWorkChain, **inputs)
    inputs = al_inputs()
    inputs['explore'] = {**inputs['explore'], 'condition': orm.List([])}
    with pytest.raises(ValueError, match=r'explore.condition: unknown input \(did you mean conditions'):
        run_get_node(ActiveLearningWorkChain, **inputs)


def test_python_api_scheduler_words_refused(al_inputs):
    """A script is code, but a newline in queue_name is never a partition name: refused before anything runs."""
    inputs = al_inputs()
    options = {**inputs['train']['train']['metadata']['options'], 'queue_name': 'debug\ntouch /tmp/x'}
    inputs['train'] = {**inputs['train'], 'train': {**inputs['train']['train'], 'metadata': {'options': options}}}
    with pytest.raises(ValueError, match=r'train.train.metadata.options.queue_name: .* is not a plain scheduler name'):
        run_get_node(ActiveLearningWorkChain, **inputs)


def _conditions(**changes):
    return orm.List([{'ensemble': 'nvt_langevin', 'temperature': 600.0, 'steps': 60, 'sample_interval': 5,
                      'timestep': 2.0, 'seed': 3, **changes}])


@pytest.mark.parametrize('name, value, message', [
    ('max_labels', 10**7, 'max_labels: must be at most 1000000, got 10000000'),
    ('calibration_window', 5000, 'calibration_window: must be at most 1000'),
    ('selection', {'descriptor_r_cut': 25.0}, 'selection: descriptor_r_cut must be at most 20 Å'),
    ('initial_perturbation', {'count': 20000}, 'initial_perturbation: count must be at most 10000'),
    ('validation', {'steps_factor': 10**7}, r'validation: steps_factor 1e\+07 x the longest exploration \(60 steps\)'),
    ('validation', {'steps': 10**6},
     r'validation: 1000000 steps sampled as the exploration samples make 200000 frames'),
    ('isolated_atom_box', 500.0, 'isolated_atom_box: must be at most 100 Å, got 500'),
])
def test_counts_and_sizes_above_their_bounds_refused(al_inputs, name, value, message):
    """Upper bounds of the Python API (the campaign file's are in tests/cli/test_bad_input.py)."""
    types = {dict: orm.Dict, float: orm.Float, int: orm.Int}
    with pytest.raises(ValueError, match=message):
        run_get_node(ActiveLearningWorkChain, **al_inputs(**{name: types[type(value)](value)}))


def test_md_runs_per_exploration_and_md_bounds_refused(al_inputs, md_code):
    many = orm.List(_conditions().get_list() * 10001)
    with pytest.raises(ValueError, match=r'explore.conditions: 10001 conditions x 1 exploration_structures make 10001 '
                                         r'MD runs per iteration, each a job submitted at once; at most 10000'):
        run_get_node(ActiveLearningWorkChain, **al_inputs(explore={'md': {'code': md_code}, 'conditions': many}))
    hot = {'md': {'code': md_code}, 'conditions': _conditions(temperature_start=300.0, temperature_end=2e4,
                                                              temperature=None)}
    with pytest.raises(ValueError, match=r'conditions\[0\]: temperature_end must be at most 10000 K, got 20000'):
        run_get_node(ActiveLearningWorkChain, **al_inputs(explore=hot))


def test_test_set_with_an_element_never_labelled_refused(al_inputs):
    from ase.calculators.emt import EMT

    silver = bulk('Ag', 'fcc', a=4.09, cubic=True)
    silver.calc = EMT()
    silver.get_forces()
    with pytest.raises(ValueError, match=r"test_set: elements \['Ag'\] are absent from the training data"):
        run_get_node(ActiveLearningWorkChain, **al_inputs(test_set=ConfigurationSet.from_ase([silver])))


def test_md_bounds_and_gpu_rule_as_functions():
    from aiida_alml.engines.md import (
        MAX_MD_STEPS, MAX_MD_TEMPERATURE, MAX_MD_TIMESTEP, md_bounds_problem, validate_parameters,
    )
    from aiida_alml.workflows.explore import md_device_problem, requested_gpus

    at_bounds = validate_parameters({'temperature': MAX_MD_TEMPERATURE, 'steps': MAX_MD_STEPS,
                                     'timestep': MAX_MD_TIMESTEP, 'sample_interval': 1000})
    assert md_bounds_problem(at_bounds) is None
    assert 'steps must be at most' in md_bounds_problem({**at_bounds, 'steps': MAX_MD_STEPS + 1})
    assert 'timestep must be at most 10 fs' in md_bounds_problem({**at_bounds, 'timestep': 10.5})
    # What a job's options say about its GPUs: campaign `gpus: N` (→ --gres=gpu:N), other SLURM spellings,
    # CUDA_VISIBLE_DEVICES first; a request we cannot read is not refused.
    assert requested_gpus({}) == 0
    assert requested_gpus({'custom_scheduler_commands': '#SBATCH --gres=gpu:2'}) == 2
    assert requested_gpus({'custom_scheduler_commands': '#SBATCH --gres=gpu:a100:4,shard:1'}) == 4
    assert requested_gpus({'custom_scheduler_commands': '#SBATCH --gpus-per-node=3'}) == 3
    assert requested_gpus({'custom_scheduler_commands': '#SBATCH --gres=gpu'}) == 1
    assert requested_gpus({'custom_scheduler_commands': '#PBS -l select=1:ngpus=2'}) is None
    assert requested_gpus({'environment_variables': {'CUDA_VISIBLE_DEVICES': '0,1,2'},
                           'custom_scheduler_commands': '#SBATCH --gres=gpu:8'}) == 3
    assert md_device_problem('cpu', {}) is None and md_device_problem('mps', {}) is None
    assert md_device_problem('cuda', {'custom_scheduler_commands': '#SBATCH --gres=gpu:1'}) is None
    assert md_device_problem('cuda:3', {'custom_scheduler_commands': '#PBS -l ngpus=4'}) is None
    assert 'at least 1 GPU, but' in md_device_problem('cuda', {})
    assert 'at least 8 GPUs' in md_device_problem('cuda:7', {'custom_scheduler_commands': '#SBATCH --gres=gpu:2'})


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


def test_initial_dataset_without_label_settings_refused(al_inputs, emt_labelled):
    inputs = al_inputs(initial_dataset=ConfigurationSet.from_ase(emt_labelled))
    with pytest.raises(ValueError, match='initial_dataset: its labels record no settings'):
        run_get_node(ActiveLearningWorkChain, **inputs)


def test_training_sets_with_different_label_settings_are_not_merged(emt_labelled):
    from aiida_alml.label_settings import with_label_settings
    from aiida_alml.workflows.functions import merge_training_sets

    def labelled_with(name):
        base = ConfigurationSet.from_ase(emt_labelled[:2]).configurations
        metadata = [with_label_settings(meta, {'calculator': {'class': name}}) for meta in base.metadata]
        return ConfigurationSet(base.replace(metadata=metadata))

    merged = merge_training_sets(a=labelled_with('emt'), b=labelled_with('emt'))
    assert len(merged) == 4
    with pytest.raises(ValueError, match=r"refusing to merge a and b: .*calculator.class='lj'.*calculator.class='emt'"):
        merge_training_sets(a=labelled_with('emt'), b=labelled_with('lj'))


def test_water_campaign_labelled_with_gfn2_xtb_through_the_daemon(submit_and_await, label_code, mace_train_code,
                                                                   md_code, tmp_path):
    """Issue 24: a whole campaign on a real electronic-structure reference, from the water demo's campaign file
    (shortened: fewer initial labels, shorter MD, two iterations, tiny trainings). The labels, the E0s of the lone
    H and O atoms and the held-out set are GFN2-xTB's as tblite's own ASE calculator gives them; the learning curve
    records what the reference cost in CPU seconds; the label settings name the method and tblite's version."""
    import pathlib
    import shutil

    import numpy as np
    import yaml
    from ase import Atoms
    from tblite.ase import TBLite

    import aiida_alml
    from aiida_alml.campaign import load_campaign

    demo = pathlib.Path(aiida_alml.__file__).parent / 'protocols' / 'demo'
    config = yaml.safe_load((demo / 'water_xtb.yaml').read_text())
    for name in ('water_initial.xyz', 'water_start.xyz', 'water_test.xyz'):
        shutil.copy(demo / name, tmp_path / name)
    config['label']['ase']['code'] = label_code.full_label
    config['train']['train']['code'] = mace_train_code.full_label
    config['explore']['md']['code'] = md_code.full_label
    config['initial_perturbation']['count'] = 6
    config['train']['train']['parameters']['max_num_epochs'] = 8  # stage two from 8 epochs on: on
    config['warm_start_parameters'] = {'max_num_epochs': 4}
    for condition in config['explore']['conditions']:
        condition.update(steps=100, sample_interval=10)
    config['explore_schedule'] = [{'temperature': 300}, {'temperature': 350}]
    config['selection']['labels_per_iteration'] = 3
    config.update(max_iterations=2, final_training=False)
    del config['validation']
    path = tmp_path / 'water.yaml'
    path.write_text(yaml.safe_dump(config))

    node = submit_and_await(ActiveLearningWorkChain, timeout=1500, **load_campaign(path))
    curve = node.outputs.learning_curve.get_dict()
    assert node.is_finished, node.process_state
    assert curve['stop_reason'] in ('converged', 'max_iterations'), curve['stop_reason']
    assert node.exit_status in (0, ActiveLearningWorkChain.exit_codes.ERROR_MAX_ITERATIONS.status), node.exit_message
    rows = curve['iterations']
    assert len(rows) == 2 and all(row['labels_new'] <= 3 for row in rows)
    # the reference's cost is on the record: tblite's CPU seconds for every labelling, and a held-out score per
    # iteration (the test set's labels are GFN2-xTB's; energies judged beside forces)
    for row in rows:
        assert row['reference_cpu_s'] > 0 and np.isfinite(row['test_force_rmse'])
        assert np.isfinite(row['test_energy_rmse_per_atom'])

    def tblite_labels(atoms):
        atoms = atoms.copy()
        atoms.calc = TBLite(method='GFN2-xTB', verbosity=0)
        return atoms.get_potential_energy(), atoms.get_forces()

    # E0s: lone H and O atoms labelled by the campaign's own reference through the daemon
    e0s = node.outputs.e0s.get_dict()
    assert sorted(e0s) == ['H', 'O']
    for symbol, energy in e0s.items():
        atom = Atoms(symbol, positions=[[0.0, 0.0, 0.0]], cell=[20.0] * 3, pbc=False)
        assert energy == pytest.approx(tblite_labels(atom)[0], abs=1e-5)
    # every label of the final dataset is tblite's own (one from each iteration's labelling checked, plus the first)
    dataset = node.outputs.dataset
    metadata = dataset.configurations.metadata
    settings = [meta['label_settings'] for meta in metadata]
    assert all(entry == settings[0] for entry in settings)
    assert settings[0]['calculator']['kwargs']['method'] == 'GFN2-xTB'
    assert settings[0]['calculator_version'].startswith('tblite ')
    for index in (0, len(dataset) - 1):
        energy, forces = tblite_labels(dataset.get_atoms(index))
        assert dataset.get_atoms(index).get_potential_energy() == pytest.approx(energy, abs=1e-5)
        np.testing.assert_allclose(dataset.get_atoms(index).get_forces(), forces, atol=1e-4)
