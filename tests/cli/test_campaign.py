"""Campaign files: YAML → inputs of alml.active_learning, with clear errors for what is wrong."""

import pathlib

import pytest
from aiida import orm

import aiida_alml
from aiida_alml.campaign import CampaignError, load_campaign
from aiida_alml.workflows.active_learning import ActiveLearningWorkChain

DEMO = pathlib.Path(aiida_alml.__file__).parent / 'protocols' / 'demo' / 'copper_vacancy.yaml'


@pytest.fixture
def demo_codes(aiida_localhost):
    """The codes the demo campaign names, on a computer labelled localhost (as `aiida-alml setup` makes them)."""
    from aiida.common.exceptions import NotExistent

    assert aiida_localhost.label == 'localhost'
    for label, plugin in (('alml-label', 'alml.ase'), ('mace-train', 'alml.mace.train'), ('alml-md', 'alml.md')):
        try:
            orm.load_code(f'{label}@localhost')
        except NotExistent:
            orm.InstalledCode(label=label, computer=aiida_localhost, filepath_executable='/bin/true',
                              default_calc_job_plugin=plugin).store()


def _write(tmp_path, text):
    (tmp_path / 'start.xyz').write_text(DEMO.with_name('copper_vacancy.xyz').read_text())
    path = tmp_path / 'campaign.yaml'
    path.write_text(text)
    return path


def test_demo_campaign_converts_and_validates(demo_codes):
    inputs = load_campaign(DEMO)
    assert isinstance(inputs['initial_structures'], aiida_alml.data.ConfigurationSet)
    assert len(inputs['initial_structures']) == 3 and inputs['initial_structures'].elements == ['Cu']
    assert inputs['label']['ase']['code'].label == 'alml-label'
    assert inputs['train']['num_members'].value == 2
    assert inputs['selection'].get_dict()['trust_lo'] == 0.2
    assert inputs['test_set'].num_configurations == 12 and 'validation' in inputs
    assert inputs['train']['train']['metadata']['options']['withmpi'] is False  # metadata stays plain
    spec = ActiveLearningWorkChain.spec().inputs
    assert spec.validate(spec.pre_process(inputs)) is None


def test_unknown_key_names_the_closest(tmp_path, demo_codes):
    path = _write(tmp_path, 'initial_structures: start.xyz\nselecton: {trust_lo: 0.1}\n')
    with pytest.raises(CampaignError, match=r'unknown key `selecton` \(did you mean selection\?\)'):
        load_campaign(path)
    path = _write(tmp_path, 'initial_structures: start.xyz\ntrain: {num_member: 2}\n')
    with pytest.raises(CampaignError, match=r'unknown key `train.num_member` \(did you mean num_members'):
        load_campaign(path)


def test_wrong_values_are_named(tmp_path, demo_codes):
    with pytest.raises(CampaignError, match=r'`max_iterations`: cannot use \'many\' here \(expected Int\)'):
        load_campaign(_write(tmp_path, 'max_iterations: many\n'))
    with pytest.raises(CampaignError, match=r'structure file .*nothere.xyz does not exist'):
        load_campaign(_write(tmp_path, 'initial_structures: nothere.xyz\n'))
    with pytest.raises(CampaignError, match='`label.ase.code`'):
        load_campaign(_write(tmp_path, 'label: {ase: {code: no-such-code@localhost}}\n'))
    with pytest.raises(CampaignError, match='not valid YAML'):
        load_campaign(_write(tmp_path, 'selection: {trust_lo: [\n'))
    with pytest.raises(CampaignError, match='top level must be a mapping'):
        load_campaign(_write(tmp_path, '- a\n- b\n'))
    with pytest.raises(CampaignError, match='does not exist'):
        load_campaign(tmp_path / 'missing.yaml')


def test_progress_table_reads_the_recorded_rows_of_a_running_campaign():
    # A running campaign: iteration 0 is closed (record_0 returned its row), iteration 1 is training. The table
    # shows the stored row as it is, and only the iteration under way is pieced together from its steps.
    from aiida.common.links import LinkType

    from aiida_alml.progress import format_table, iteration_table, recorded_rows
    from aiida_alml.workflows.links import ACTIVE_LEARNING

    campaign = orm.WorkflowNode(process_type=ACTIVE_LEARNING)
    campaign.set_process_state('running')
    campaign.store()
    row = {'iteration': 0, 'frames': 13, 'frames_counted': 12, 'accurate_fraction': 0.5, 'candidate_fraction': 0.25,
           'failed_fraction': 0.25, 'labels_new': 4, 'oos_force_rmse': 0.12, 'fitted_calibration_factor': 1.5,
           'wall_time_s': {'train': 10.0, 'explore': 5.0, 'label': 3.0}, 'test_energy_rmse_per_atom': 0.0123,
           'train_metrics': {f'member_{i}': {'seed': i, 'metrics': {'valid': {'rmse_e_per_atom': e}}}
                             for i, e in enumerate((0.004, 0.006))}}
    record = orm.CalcFunctionNode()
    record.base.links.add_incoming(campaign, LinkType.CALL_CALC, 'record_0')
    record.set_process_state('finished')
    record.set_exit_status(0)
    record.store()
    result = orm.Dict(row)
    result.base.links.add_incoming(record, LinkType.CREATE, 'result')
    result.store()
    training = orm.WorkflowNode()
    training.base.links.add_incoming(campaign, LinkType.CALL_WORK, 'train_1')
    training.set_process_state('running')
    training.store()
    assert recorded_rows(campaign) == {0: row}
    assert iteration_table(campaign) == [row, {'iteration': 1, 'wall_time_s': {}}]
    lines = format_table(iteration_table(campaign)).splitlines()
    # energy RMSE in meV/atom: the worst member's validation error, the committee's held-out error
    assert lines[1].split() == ['0', '12', '50.0%', '25.0%', '25.0%', '4', '0.120', '-', '6.0', '12.3', '1.50', '10.0',
                                '5.0', '3.0']
    assert lines[2].split()[:2] == ['1', '-']
