"""Protocols of the work chains users start: builders that validate, overrides, refusals, the campaign file route."""

from __future__ import annotations

import pytest
import yaml
from aiida import orm

from aiida_alml.campaign import CampaignError, load_campaign, validation_problem
from aiida_alml.data import ConfigurationSet, MlipModel
from aiida_alml.protocols import merge_inputs
from aiida_alml.workflows.active_learning import ActiveLearningWorkChain
from aiida_alml.workflows.committee import CommitteeWorkChain
from aiida_alml.workflows.explore import ExploreWorkChain
from aiida_alml.workflows.label import LabelWorkChain
from aiida_alml.workflows.protocols import ProtocolError

PROTOCOLS = ('fast', 'moderate', 'precise')
WORK_CHAINS = (ActiveLearningWorkChain, CommitteeWorkChain, ExploreWorkChain, LabelWorkChain)


def _cu_cells():
    from helpers.mace import cu_cell

    cells = [cu_cell(), cu_cell((2, 1, 1))]
    vacancy = cu_cell((2, 1, 1))
    del vacancy[3]
    return cells + [vacancy]


@pytest.fixture
def models(tmp_path):
    from helpers.mace import model_file

    return [MlipModel(file=model_file(tmp_path / f'member_{index}', seed=index)) for index in range(2)]


@pytest.fixture
def builders(label_code, mace_train_code, md_code, cu_training_set, models):
    """protocol, work chain -> a builder from the protocol, made from what a user has."""
    cells = _cu_cells()

    def make(process_class, protocol, overrides=None, **extra):
        if process_class is ActiveLearningWorkChain:
            return process_class.get_builder_from_protocol(
                mace_train_code, md_code, label_code, cells, calculator='emt', protocol=protocol, overrides=overrides,
                **extra)
        if process_class is CommitteeWorkChain:
            return process_class.get_builder_from_protocol(mace_train_code, cu_training_set, protocol=protocol,
                                                           overrides=overrides, **extra)
        if process_class is ExploreWorkChain:
            return process_class.get_builder_from_protocol(md_code, cells[:2], models, protocol=protocol,
                                                           overrides=overrides, **extra)
        return process_class.get_builder_from_protocol(label_code, cells, calculator='emt', protocol=protocol,
                                                       overrides=overrides, **extra)

    return make


@pytest.mark.parametrize('process_class', WORK_CHAINS, ids=lambda cls: cls.__name__)
def test_every_protocol_is_listed_with_a_description(process_class):
    available = process_class.get_available_protocols()
    assert tuple(available) == PROTOCOLS and all(entry['description'] for entry in available.values())
    assert process_class.get_default_protocol() == 'moderate'


@pytest.mark.parametrize('protocol', PROTOCOLS)
@pytest.mark.parametrize('process_class', WORK_CHAINS, ids=lambda cls: cls.__name__)
def test_every_protocol_gives_a_builder_that_validates(builders, process_class, protocol):
    builder = builders(process_class, protocol)
    assert validation_problem(builder._inputs(prune=True), process_class) is None


def test_protocol_values_rise_from_fast_to_precise(builders):
    members, epochs, steps, labels, iterations = [], [], [], [], []
    for protocol in PROTOCOLS:
        builder = builders(ActiveLearningWorkChain, protocol)
        members.append(builder.train.num_members.value)
        epochs.append(builder.train.train.parameters['max_num_epochs'])
        steps.append(builder.explore.parameters['steps'])
        labels.append(builder.selection['labels_per_iteration'])
        iterations.append(builder.max_iterations.value)
    for values in (members, epochs, steps, labels, iterations):
        assert values == sorted(values) and len(set(values)) == 3, values
    fast = builders(ActiveLearningWorkChain, 'fast')
    # the demo campaign's settings (protocols/demo/copper_vacancy.yaml)
    assert fast.selection.get_dict() == {'trust_lo': 0.2, 'trust_hi': 0.6, 'labels_per_iteration': 6,
                                         'min_distance': 0.002}
    assert [entry['temperature'] for entry in fast.explore_schedule.get_list()] == [300, 450, 600]
    assert fast.label.labeller.value == 'ase' and fast.label.ase.calculator.get_dict() == {'name': 'emt'}
    assert fast.initial_perturbation['count'] == 16 and 'validation' in fast


def test_overrides_reach_the_inputs(builders):
    builder = builders(ActiveLearningWorkChain, 'fast', overrides={
        'selection': {'trust_lo': 0.1, 'trust_hi': 0.3},
        'train': {'num_members': 3, 'train': {'parameters': {'r_max': 4.5}}},
        'explore_schedule': [{'temperature': 500}],
        'validation': None,  # removes what the protocol sets
        'max_labels': orm.Int(60),
    }, options={'resources': {'num_machines': 1}, 'withmpi': False})
    selection = builder.selection.get_dict()
    assert selection['trust_lo'] == 0.1 and selection['trust_hi'] == 0.3 and selection['labels_per_iteration'] == 6
    parameters = builder.train.train.parameters.get_dict()
    assert parameters['r_max'] == 4.5 and parameters['num_channels'] == 16
    assert builder.train.num_members.value == 3 and builder.max_labels.value == 60
    assert builder.explore_schedule.get_list() == [{'temperature': 500}]
    assert 'validation' not in builder
    assert builder.train.train.metadata.options.withmpi is False
    assert builder.explore.md.metadata.options.resources == {'num_machines': 1}
    assert builder.label.ase.options.get_dict() == {'resources': {'num_machines': 1}, 'withmpi': False}

    committee = builders(CommitteeWorkChain, 'precise', overrides={'bootstrap': True})
    assert committee.num_members.value == 8 and committee.bootstrap.value is True

    label = builders(LabelWorkChain, 'fast', overrides={'max_failed_fraction': 0.2, 'ase': {'jobs': 2}})
    assert label.max_failed_fraction.value == 0.2 and label.ase.jobs.value == 2 and label.max_concurrent.value == 20

    explore = builders(ExploreWorkChain, 'fast', overrides={'parameters': {'timestep': 0.5}})
    assert explore.parameters.get_dict()['timestep'] == 0.5 and explore.parameters.get_dict()['steps'] == 200
    assert sorted(explore.structures) == ['structure_0', 'structure_1'] and sorted(explore.md.models) == [
        'member_0', 'member_1']


@pytest.mark.parametrize('process_class', WORK_CHAINS, ids=lambda cls: cls.__name__)
def test_unknown_protocol_is_refused_naming_it(builders, process_class):
    with pytest.raises(ProtocolError, match=r"protocol 'turbo' is not one of \['fast', 'moderate', 'precise'\]"):
        builders(process_class, 'turbo')


@pytest.mark.parametrize(('process_class', 'overrides', 'message'), [
    (ActiveLearningWorkChain, {'selections': {}}, r'unknown input `selections` \(did you mean selection\?\)'),
    (ActiveLearningWorkChain, {'train': {'num_member': 3}}, r'unknown input `train.num_member` \(did you mean '
                                                            r'num_members\?\)'),
    (CommitteeWorkChain, {'train': {'paramters': {}}}, r'unknown input `train.paramters` \(did you mean parameters'),
    (ExploreWorkChain, {'condition': []}, r'unknown input `condition` \(did you mean conditions'),
    (LabelWorkChain, {'ase': {'calculatr': {}}}, r'unknown input `ase.calculatr` \(did you mean calculator'),
], ids=lambda value: value.__name__ if isinstance(value, type) else None)
def test_unknown_override_is_refused_naming_it(builders, process_class, overrides, message):
    with pytest.raises(ProtocolError, match=message):
        builders(process_class, None, overrides)


def test_a_bad_override_value_is_refused_by_the_work_chains_own_validation(builders):
    with pytest.raises(ProtocolError, match=r'ActiveLearningWorkChain: selection: trust_lo'):
        builders(ActiveLearningWorkChain, 'fast', overrides={'selection': {'trust_lo': 'high'}})
    with pytest.raises(ProtocolError, match='num_members: a committee needs at least two members'):
        builders(CommitteeWorkChain, 'fast', overrides={'num_members': 1})
    with pytest.raises(ProtocolError, match=r'`max_iterations`: cannot use .*expected Int'):
        builders(ActiveLearningWorkChain, 'fast', overrides={'max_iterations': 'many'})


def test_a_code_for_no_labeller_is_refused(mace_train_code, cu_training_set):
    with pytest.raises(ProtocolError, match=r"labeller: cannot tell which labeller .*\(plugin 'alml.mace.train'"):
        LabelWorkChain.get_builder_from_protocol(mace_train_code, cu_training_set)


def test_aims_labeller_takes_the_fhi_aims_protocol_of_the_same_name(aiida_localhost):
    code = orm.InstalledCode(computer=aiida_localhost, filepath_executable='/opt/aims/bin/aims.x',
                             default_calc_job_plugin='alml.aims').store()
    cells = ConfigurationSet.from_ase(_cu_cells())
    with pytest.raises(ProtocolError, match='species_root'):
        LabelWorkChain.get_builder_from_protocol(code, cells, protocol='precise')
    builder = LabelWorkChain.get_builder_from_protocol(code, cells, protocol='precise', species_root='/opt/species/')
    assert builder.labeller.value == 'aims' and 'ase' not in builder._inputs(prune=True)
    assert builder.aims.aims.species_dir.value == '/opt/species/tight'
    assert builder.aims.aims.parameters['sc_accuracy_forces'] == 1.0e-4 and builder.aims.kpoints_distance.value == 0.1
    assert builder.max_failed_fraction.value == 0.02


def _plain(value):
    """Inputs as comparable plain values: nodes by content (codes and sets by identity)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (orm.AbstractCode, ConfigurationSet)):
        return value.uuid
    if isinstance(value, orm.Dict):
        return value.get_dict()
    if isinstance(value, orm.List):
        return value.get_list()
    if isinstance(value, orm.BaseType):
        return value.value
    return value


def test_campaign_file_with_a_protocol_gives_the_python_inputs(tmp_path, label_code, mace_train_code, md_code):
    structures = ConfigurationSet.from_ase(_cu_cells()).store()
    overrides = {'selection': {'trust_lo': 0.1, 'trust_hi': 0.4}, 'max_labels': 70, 'validation': None,
                 'train': {'train': {'parameters': {'r_max': 4.5}}}}
    builder = ActiveLearningWorkChain.get_builder_from_protocol(
        mace_train_code, md_code, label_code, structures, calculator='emt', protocol='fast', overrides=overrides)
    campaign = merge_inputs({
        'protocol': 'fast',
        'initial_structures': structures.pk,
        'label': {'labeller': 'ase', 'ase': {'code': label_code.full_label, 'calculator': {'name': 'emt'}}},
        'train': {'train': {'code': mace_train_code.full_label}},
        'explore': {'md': {'code': md_code.full_label}},
    }, overrides)
    path = tmp_path / 'campaign.yaml'
    path.write_text(yaml.safe_dump(campaign))
    assert _plain(load_campaign(path)) == _plain(builder._inputs(prune=True))

    path.write_text(yaml.safe_dump({**campaign, 'protocol': 'turbo'}))
    with pytest.raises(CampaignError, match=r"`protocol`: protocol 'turbo' is not one of \['fast', 'moderate'"):
        load_campaign(path)
    path.write_text(yaml.safe_dump({**campaign, 'selecton': {}}))
    with pytest.raises(CampaignError, match=r'unknown key `selecton` \(did you mean selection\?\)'):
        load_campaign(path)


def test_campaign_file_without_a_protocol_gets_no_protocol_values(tmp_path, label_code, mace_train_code, md_code):
    structures = ConfigurationSet.from_ase(_cu_cells()).store()
    campaign = {
        'initial_structures': structures.pk,
        'label': {'labeller': 'ase', 'ase': {'code': label_code.full_label, 'calculator': {'name': 'emt'}}},
        'train': {'train': {'code': mace_train_code.full_label}},
        'explore': {'md': {'code': md_code.full_label}, 'conditions': [{'temperature': 300, 'steps': 10}]},
    }
    path = tmp_path / 'campaign.yaml'
    path.write_text(yaml.safe_dump(campaign))
    inputs = load_campaign(path)
    assert 'selection' not in inputs and 'initial_perturbation' not in inputs and 'parameters' not in inputs['train'][
        'train']


@pytest.mark.daemon
def test_daemon_runs_a_label_builder_from_the_fast_protocol(submit_and_await, label_code):
    builder = LabelWorkChain.get_builder_from_protocol(
        label_code, _cu_cells(), calculator='emt', protocol='fast',
        options={'resources': {'num_machines': 1}, 'environment_variables': {'OMP_NUM_THREADS': '1'}},
    )
    node = submit_and_await(builder, timeout=180)
    assert node.is_finished_ok, node.exit_message
    labelled = node.outputs.labelled
    assert len(labelled) == 3 and {'energy', 'forces'} <= set(labelled.labels)
    assert node.inputs.max_failed_fraction.value == 0.1


def test_the_python_example_of_the_docs_builds(label_code, mace_train_code, md_code):
    import pathlib

    from ase.io import read

    import aiida_alml

    demo = pathlib.Path(aiida_alml.__file__).parent / 'protocols' / 'demo'
    builder = ActiveLearningWorkChain.get_builder_from_protocol(
        mace_train_code, md_code, label_code, read(demo / 'copper_initial.xyz', ':'),
        exploration_structures=read(demo / 'copper_vacancy.xyz', ':'), test_set=read(demo / 'copper_test.xyz', ':'),
        calculator='emt', protocol='fast',
        overrides={'selection': {'trust_lo': 0.1, 'trust_hi': 0.3}, 'train': {'train': {'parameters': {'r_max': 4.5}}}},
        options={'resources': {'num_machines': 1}, 'withmpi': False},
    )
    assert len(builder.test_set) == 12 and builder.exploration_structures.num_configurations == 1
