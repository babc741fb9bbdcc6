"""Provenance queries (aiida_alml.provenance) and the ``lineage``/``export`` commands on a hand-built graph.

The graph has the shape alml.active_learning gives it (same node types, link types and link labels) without running
anything: initial labels by an alml.ase job, one iteration labelled by two alml.aims jobs, two trainings, and an
unrelated branch (another labeller and model) that every answer must leave out. Jobs sit under their base work chains
(``alml.ase.base``, ``alml.aims.base``, ``alml.mace.train.base``), but one training job sits right under its committee
as in graphs made before ``alml.mace.train.base`` existed.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from aiida import orm
from aiida.common.links import LinkType

from aiida_alml.data import ConfigurationSet, MlipModel
from aiida_alml.provenance import labelling_calculations, labels_of_iteration, model_lineage, models_fed_by

pytestmark = pytest.mark.storage

EMT = {'name': 'emt', 'kwargs': {}}
PBE = {'xc': 'pbe', 'relativistic': 'atomic_zora scalar', 'occupation_type': 'gaussian 0.01'}
SPECIES_DIR = '/opt/aims/species_defaults/defaults_2020/light'


def _configurations(count: int, metadata: list[dict] | None = None, labelled: bool = True, seed: int = 0):
    from ase.build import bulk
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        atoms = bulk('Cu', 'fcc', a=3.6, cubic=True)
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        if labelled:
            atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal()), forces=rng.normal(size=(4, 3)))
        images.append(atoms)
    return ConfigurationSet.from_ase(images, metadata=metadata or [{} for _ in range(count)])


def _process(cls, process_type: str, inputs: dict, caller=None, call_label: str | None = None):
    """A stored, finished process node with its input links (and call link from ``caller``)."""
    node = cls(process_type=process_type) if process_type else cls()
    if cls is orm.CalcJobNode:
        node.set_process_label(process_type.split(':')[-1])
    input_link = LinkType.INPUT_WORK if issubclass(cls, orm.WorkflowNode) else LinkType.INPUT_CALC
    for label, data in inputs.items():
        node.base.links.add_incoming(data.store() if not data.is_stored else data, input_link, label)
    if caller is not None:
        call = LinkType.CALL_WORK if issubclass(cls, orm.WorkflowNode) else LinkType.CALL_CALC
        node.base.links.add_incoming(caller, call, call_label)
    node.set_process_state('finished')
    node.set_exit_status(0)
    return node.store()


def _create(calc, label: str, data):
    data.base.links.add_incoming(calc, LinkType.CREATE, label)
    return data.store()


def _return(workflow, label: str, data):
    data.base.links.add_incoming(workflow, LinkType.RETURN, label)
    return data


def _model(tmp_path, name: str) -> MlipModel:
    from helpers.mace import model_file

    path = model_file(tmp_path / f'{name}.alml', seed=sum(map(ord, name)))
    return MlipModel(path, seed=1)


def _train(tmp_path, name, training_set, committee, member, base=True, **extra):
    """A training job under its alml.mace.train.base (called ``member`` by the committee); ``base=False``: right under
    the committee, as before alml.mace.train.base."""
    caller, label = committee, member
    if base:
        caller = _process(orm.WorkChainNode, 'aiida.workflows:alml.mace.train.base', {}, committee, member)
        label = 'iteration_01'
    calc = _process(orm.CalcJobNode, 'aiida.calculations:alml.mace.train',
                    {'training_set': training_set, 'parameters': orm.Dict({'max_num_epochs': 3}), 'seed': orm.Int(1),
                     **extra}, caller, label)
    model = _create(calc, 'model', _model(tmp_path, name))
    if base:
        _return(caller, 'model', model)
    _return(committee, f'models__{member}', model)
    return calc, model


def _label_merge(label_workflow, structures, labelled_sets):
    """merge_labelled as alml.label runs it: each configuration's metadata gains source_calc_uuid of its creator."""
    metadata = []
    for node in labelled_sets:
        for meta in node.configurations.metadata:
            metadata.append({**meta, 'source_calc_uuid': meta.get('labelled_by') or node.creator.uuid})
    original = structures.configurations.metadata
    metadata = [{**original[i], **meta, 'input_index': i} for i, meta in enumerate(metadata)]
    merge = _process(orm.CalcFunctionNode, 'aiida_alml.workflows.functions.labels.merge_labelled',
                     {'structures': structures, **{f'set_{k}': s for k, s in enumerate(labelled_sets)}},
                     label_workflow, 'merge')
    merged = _create(merge, 'result', _configurations(len(metadata), metadata, seed=len(metadata)))
    return _return(label_workflow, 'labelled', merged)


def _merge_training_sets(loop, link, **sets):
    metadata = [meta for key in sorted(sets) for meta in sets[key].configurations.metadata]
    merge = _process(orm.CalcFunctionNode, 'aiida_alml.workflows.functions.datasets.merge_training_sets', sets, loop,
                     link)
    return _create(merge, 'result', _configurations(len(metadata), metadata, seed=100 + len(metadata)))


@pytest.fixture(scope='module')
def graph(alml_localhost, tmp_path_factory):
    """The nodes of the hand-built campaign, by name."""
    tmp_path = tmp_path_factory.mktemp('models')
    g = {}
    code = orm.InstalledCode(label='alml-label', computer=alml_localhost, filepath_executable='/bin/true').store()
    loop = g['loop'] = _process(orm.WorkChainNode, 'aiida.workflows:alml.active_learning', {})

    # Initial labels: 2 configurations given as data (no labelling calculation), 3 perturbed ones labelled by EMT.
    given = g['given'] = _configurations(2, seed=1).store()
    structures = _configurations(3, [{'perturbed_from': i, 'iteration': 0} for i in range(3)], labelled=False)
    label_initial = _process(orm.WorkChainNode, 'aiida.workflows:alml.label', {'structures': structures}, loop,
                             'label_initial')
    ase_base = _process(orm.WorkChainNode, 'aiida.workflows:alml.ase.base', {}, label_initial, 'ase')
    ase = g['ase'] = _process(orm.CalcJobNode, 'aiida.calculations:alml.ase',
                              {'structures': structures, 'calculator': orm.Dict(EMT),
                               'properties': orm.List(['energy', 'forces']), 'code': code}, ase_base, 'iteration_01')
    ase_out = _create(ase, 'labelled', _configurations(
        3, [{'perturbed_from': i, 'iteration': 0, 'source_index': i, 'labelled_by': ase.uuid} for i in range(3)]))
    g['initial_labels'] = _label_merge(label_initial, structures, [ase_out])
    dataset_0 = g['dataset_0'] = _merge_training_sets(loop, 'merge_initial', a_initial=given,
                                                      b_labelled=g['initial_labels'])

    # Iteration 0: train, explore, select two frames, label each with FHI-aims, merge.
    committee_0 = _process(orm.WorkChainNode, 'aiida.workflows:alml.committee', {}, loop, 'train_0')
    g['train_0'], g['model_0'] = _train(tmp_path, 'model_0', dataset_0, committee_0, 'member_0')
    md = _process(orm.CalcJobNode, 'aiida.calculations:alml.md', {'models__member_0': g['model_0']})
    trajectory = _create(md, 'trajectory', orm.ArrayData())
    select = _process(orm.CalcFunctionNode, 'aiida_alml.workflows.functions.selection.select_for_labelling',
                      {'training_set': dataset_0, 't0': trajectory}, loop, 'select_0')
    selected = _create(select, 'selected', _configurations(2, [
        {'iteration': 0, 'selection_index': k, 'trajectory': trajectory.uuid, 'frame': 3 + k, 'uncertainty': 0.2}
        for k in range(2)], labelled=False))
    label_0 = _process(orm.WorkChainNode, 'aiida.workflows:alml.label', {'structures': selected}, loop, 'label_0')
    aims_sets = []
    for index in range(2):
        base = _process(orm.WorkChainNode, 'aiida.workflows:alml.aims.base', {}, label_0, f'aims_{index}')
        aims = g[f'aims_{index}'] = _process(
            orm.CalcJobNode, 'aiida.calculations:alml.aims',
            {'structure': orm.StructureData(ase=selected.get_atoms(index)), 'parameters': orm.Dict(PBE),
             'species_dir': orm.Str(SPECIES_DIR)}, base, 'iteration_01')
        labelled = _create(aims, 'labelled', _configurations(1, [{'source_calc_uuid': aims.uuid,
                                                                  'labeller': 'fhi-aims'}]))
        aims_sets.append(_return(base, 'labelled', labelled))
    g['labels_0'] = _label_merge(label_0, selected, aims_sets)
    dataset_1 = g['dataset_1'] = _merge_training_sets(loop, 'merge_0', a_previous=dataset_0, b_new=g['labels_0'])

    # An unrelated labeller and model; its set is also the validation set of the final model (which it must not
    # count as training data).
    other_structures = _configurations(2, labelled=False, seed=5)
    other = g['other'] = _process(orm.CalcJobNode, 'aiida.calculations:alml.ase',
                                  {'structures': other_structures, 'calculator': orm.Dict({'name': 'lj'})})
    other_set = g['other_set'] = _create(other, 'labelled', _configurations(
        2, [{'source_index': i, 'labelled_by': other.uuid} for i in range(2)], seed=6))
    other_committee = _process(orm.WorkChainNode, 'aiida.workflows:alml.committee', {})
    g['other_train'], g['other_model'] = _train(tmp_path, 'other', other_set, other_committee, 'member_0')

    # Iteration 1: the final committee.
    committee_1 = _process(orm.WorkChainNode, 'aiida.workflows:alml.committee', {}, loop, 'train_1')
    g['train_1'], g['model_1a'] = _train(tmp_path, 'model_1a', dataset_1, committee_1, 'member_0',
                                         validation_set=other_set)
    _, g['model_1b'] = _train(tmp_path, 'model_1b', dataset_1, committee_1, 'member_1', base=False)
    g['learning_curve'] = orm.Dict({'iterations': [{'iteration': 0, 'labels_new': 2}], 'stop_reason': 'converged',
                                    'labels_used': 5, 'final_calibration_factor': 1.0}).store()
    _return(loop, 'models__member_0', g['model_1a'])
    _return(loop, 'models__member_1', g['model_1b'])
    _return(loop, 'dataset', dataset_1)
    _return(loop, 'learning_curve', g['learning_curve'])
    g['model_hashes'] = {node.sha256 for node in orm.QueryBuilder().append(MlipModel).all(flat=True)}
    return g


def _summary(entries):
    return [(e['pk'], e['labeller'], e['iteration'], e['num_configurations']) for e in entries]


def test_labelling_calculations_of_the_final_dataset(graph):
    entries = labelling_calculations(graph['dataset_1'])
    assert _summary(entries) == [
        (graph['ase'].pk, 'ase', -1, 3), (graph['aims_0'].pk, 'aims', 0, 1), (graph['aims_1'].pk, 'aims', 0, 1),
    ]
    ase, aims = entries[0], entries[1]
    assert ase['settings'] == {'calculator': EMT, 'properties': ['energy', 'forces']}
    assert ase['code']['label'] == 'alml-label'
    # The call link `label_initial` wins over the configurations' metadata (perturb_structures writes iteration 0).
    assert ase['iteration_source'] == 'call_link' and ase['metadata_iterations'] == [0]
    assert ase['call_link_label'] == 'label_initial' and ase['workflow'] == graph['loop'].pk
    assert aims['settings'] == {'parameters': PBE, 'species_dir': SPECIES_DIR}
    assert aims['call_link_label'] == 'label_0' and aims['uuid'] == graph['aims_0'].uuid
    json.dumps(entries)  # plain data


def test_labels_of_an_iteration_exclude_calculations_that_only_steered_the_selection(graph):
    # The EMT job is an ancestor of the iteration-0 labels (through the selection), but labelled none of them.
    assert labels_of_iteration(graph['loop'], 0).pk == graph['labels_0'].pk
    assert [e['pk'] for e in labelling_calculations(graph['labels_0'])] == [graph['aims_0'].pk, graph['aims_1'].pk]
    assert labels_of_iteration(graph['loop'], 'initial').pk == graph['initial_labels'].pk
    assert labels_of_iteration(graph['loop'], -1).pk == graph['initial_labels'].pk
    assert labels_of_iteration(graph['loop'], 1) is None  # iteration 1 labelled nothing
    assert _summary(labelling_calculations(graph['other_set'])) == [(graph['other'].pk, 'ase', None, 2)]


def test_labels_of_iteration_refuses_bad_input(graph):
    with pytest.raises(ValueError, match="iteration: must be a non-negative integer, -1 or 'initial', got -2"):
        labels_of_iteration(graph['loop'], -2)
    with pytest.raises(TypeError, match='is a aiida.workflows:alml.label run, not aiida.workflows:alml.active'):
        labels_of_iteration(graph['initial_labels'].creator.caller, 0)
    with pytest.raises(TypeError, match=r'workflow_node: node <\d+> is a ConfigurationSet'):
        labels_of_iteration(graph['dataset_1'], 0)


def test_model_lineage(graph):
    lineage = model_lineage(graph['model_1a'])
    assert lineage['model']['uuid'] == graph['model_1a'].uuid
    assert lineage['model']['sha256'] == graph['model_1a'].sha256
    training = lineage['training']
    assert training['pk'] == graph['train_1'].pk and training['member'] == 'member_0'
    assert training['iteration'] == 1 and training['workflow'] == graph['loop'].pk
    assert training['parameters'] == {'max_num_epochs': 3} and training['seed'] == 1
    assert training['validation_set']['pk'] == graph['other_set'].pk
    assert lineage['training_set']['pk'] == graph['dataset_1'].pk
    assert lineage['training_set']['num_configurations'] == 7
    assert lineage['labelling_calculations'] == labelling_calculations(graph['dataset_1'])
    # The validation set's labeller is an ancestor of the model, but not of the data it was trained on.
    assert graph['other'].pk not in [e['pk'] for e in lineage['labelling_calculations']]
    assert lineage['unattributed_configurations'] == 2  # the two configurations given as data
    assert json.loads(json.dumps(lineage)) == lineage

    first = model_lineage(graph['model_0'])
    assert first['training']['iteration'] == 0 and first['training']['member'] == 'member_0'
    # a training job right under its committee (a graph made before alml.mace.train.base): the same answers
    old = model_lineage(graph['model_1b'])['training']
    assert (old['member'], old['iteration'], old['workflow']) == ('member_1', 1, graph['loop'].pk)
    assert _summary(first['labelling_calculations']) == [(graph['ase'].pk, 'ase', -1, 3)]


def test_model_lineage_of_a_model_stored_by_hand(graph, tmp_path):
    model = _model(tmp_path, 'uploaded').store()
    lineage = model_lineage(model)
    assert lineage['training'] is None and lineage['labelling_calculations'] == []
    with pytest.raises(TypeError, match=r'model: node <\d+> is a ConfigurationSet, not an MlipModel'):
        model_lineage(graph['dataset_1'])
    with pytest.raises(ValueError, match='model: the MlipModel is not stored'):
        model_lineage(_model(tmp_path, 'unstored'))


def test_models_fed_by(graph):
    def pks(node):
        return [model.pk for model in models_fed_by(node)]

    final = [graph['model_1a'].pk, graph['model_1b'].pk]
    assert pks(graph['dataset_0']) == [graph['model_0'].pk, *final]  # trained on it, and on what grew from it
    assert pks(graph['given']) == [graph['model_0'].pk, *final]
    assert pks(graph['ase']) == [graph['model_0'].pk, *final]  # a calculation: through the labels it made
    assert pks(graph['labels_0']) == final
    assert pks(graph['aims_1']) == final
    assert pks(graph['dataset_1']) == final
    # Used only as a validation set of model_1a: feeds only the model trained on it.
    assert pks(graph['other_set']) == [graph['other_model'].pk]
    assert pks(graph['learning_curve']) == []


def test_relabelled_configurations_are_attributed_to_the_later_calculation(graph):
    # An EMT-labelled set labelled again with FHI-aims: the stale `labelled_by` survives in the metadata.
    first = _process(orm.CalcJobNode, 'aiida.calculations:alml.ase',
                     {'structures': _configurations(1, labelled=False), 'calculator': orm.Dict(EMT)})
    emt = _create(first, 'labelled', _configurations(1, [{'source_index': 0, 'labelled_by': first.uuid}]))
    label = _process(orm.WorkChainNode, 'aiida.workflows:alml.label', {'structures': emt})
    second = _process(orm.CalcJobNode, 'aiida.calculations:alml.aims',
                      {'structure': orm.StructureData(ase=emt.get_atoms(0)), 'parameters': orm.Dict(PBE)}, label,
                      'aims_0')
    aims = _create(second, 'labelled', _configurations(1, [{'source_calc_uuid': second.uuid}]))
    relabelled = _label_merge(label, emt, [aims])
    assert relabelled.configurations.metadata[0]['labelled_by'] == first.uuid  # the stale key the test is about
    entries = labelling_calculations(relabelled)
    assert _summary(entries) == [(second.pk, 'aims', None, 1)]
    assert entries[0]['label_workflow'] == label.pk and entries[0]['workflow'] is None


# ---------------------------------------------------------------------- command line
@pytest.fixture
def invoke(aiida_profile):
    from click.testing import CliRunner

    def run(command, *args):
        return CliRunner().invoke(command, ['-p', aiida_profile.name, *map(str, args)], catch_exceptions=False)

    return run


def test_lineage_command(graph, invoke):
    from aiida_alml.cli.inspect import lineage

    result = invoke(lineage, graph['model_1a'].uuid)
    assert result.exit_code == 0, result.output
    text = result.output
    assert f'trained by aiida.calculations:alml.mace.train<{graph["train_1"].pk}>' in text
    assert 'member_0 of alml.committee' in text and f'iteration 1 of alml.active_learning<{graph["loop"].pk}>' in text
    assert f'3 labelled by aiida.calculations:alml.ase<{graph["ase"].pk}> (initial labels)' in text
    assert f'1 labelled by aiida.calculations:alml.aims<{graph["aims_1"].pk}> (iteration 0)' in text
    assert '"xc": "pbe"' in text and '"name": "emt"' in text
    assert '2 without a labelling calculation' in text

    result = invoke(lineage, graph['model_1a'].pk, '--json')
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == model_lineage(graph['model_1a'])

    result = invoke(lineage, graph['dataset_1'].pk)
    assert result.exit_code != 0
    assert f'node {graph["dataset_1"].pk} is a ConfigurationSet, not an MlipModel' in result.output


def test_export_command(graph, invoke, tmp_path):
    from aiida_alml.cli.inspect import export
    from aiida_alml.atoms.configurations import read_extxyz

    target = tmp_path / 'export'
    result = invoke(export, graph['loop'].pk, target)
    assert result.exit_code == 0, result.output
    for key, name in (('member_0', 'model_1a'), ('member_1', 'model_1b')):
        exported = target / 'models' / key / f'{name}.alml'
        assert hashlib.sha256(exported.read_bytes()).hexdigest() in graph['model_hashes']
    dataset = read_extxyz(target / 'dataset.extxyz')
    assert len(dataset) == 7 and dataset.content_hash() == graph['dataset_1'].content_hash
    assert json.loads((target / 'learning_curve.json').read_text()) == graph['learning_curve'].get_dict()
    provenance = json.loads((target / 'provenance.json').read_text())
    assert provenance['workflow']['pk'] == graph['loop'].pk
    assert provenance['model']['uuid'] == graph['model_1a'].uuid
    assert [e['pk'] for e in provenance['labelling_calculations']] == [graph['ase'].pk, graph['aims_0'].pk,
                                                                      graph['aims_1'].pk]

    again = invoke(export, graph['loop'].pk, target)
    assert again.exit_code != 0 and 'would overwrite' in again.output

    wrong = invoke(export, graph['model_0'].pk, tmp_path / 'other')
    assert wrong.exit_code != 0 and 'not an alml.active_learning run' in wrong.output
    unfinished = _process(orm.WorkChainNode, 'aiida.workflows:alml.active_learning', {})
    result = invoke(export, unfinished.pk, tmp_path / 'unfinished')
    assert result.exit_code != 0 and 'has no output models, dataset, learning_curve' in result.output
