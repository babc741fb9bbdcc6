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


def test_water_demo_campaign_converts_and_validates(demo_codes):
    """The second demo: liquid water labelled with GFN2-xTB; its held-out set carries GFN2-xTB labels."""
    inputs = load_campaign(DEMO.with_name('water_xtb.yaml'))
    assert inputs['initial_structures'].elements == ['H', 'O'] and len(inputs['initial_structures']) == 3
    assert inputs['label']['ase']['calculator'].get_dict()['name'] == 'gfn2-xtb'
    test_set = inputs['test_set']
    assert test_set.num_configurations == 12 and {'energy', 'forces'} <= set(test_set.labels)
    # the held-out labels are the campaign's reference: GFN2-xTB with tblite's defaults, as the labeller computes them
    import numpy as np

    from aiida_alml.engines.calculators import build_calculator

    frame = test_set.get_atoms(5)
    reference = frame.get_potential_energy(), frame.get_forces()
    frame.calc = build_calculator({'name': 'gfn2-xtb'}, ['energy', 'forces'])
    assert abs(frame.get_potential_energy() - reference[0]) < 1e-5
    np.testing.assert_allclose(frame.get_forces(), reference[1], atol=1e-3)
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


# ---------------------------------------------------------------------- the YAML file itself is bounded (issue 22)
def _read(tmp_path, text):
    from aiida_alml.campaign import read_campaign_yaml

    path = tmp_path / 'campaign.yaml'
    path.write_text(text)
    return read_campaign_yaml(path)


def test_numbers_and_dates_read_as_yaml_1_2(tmp_path):
    """1e-3 and 1.0e5 are numbers (YAML 1.1 left them text), dates stay text; 0x, 1_000 and merge keys still work."""
    config = _read(tmp_path, 'lr: 1e-3\nbig: 1.0e5\nday: 2024-01-01\nhex: 0x1F\nthousand: 1_000\nzero: 0\n'
                             'base: &base {temperature: 300, steps: 10}\nhot:\n  <<: *base\n  temperature: 600\n')
    assert config['lr'] == 0.001 and config['big'] == 100000.0
    assert config['day'] == '2024-01-01'
    assert (config['hex'], config['thousand'], config['zero']) == (31, 1000, 0)
    assert config['hot'] == {'temperature': 600, 'steps': 10}


@pytest.mark.parametrize('text, message', [
    ('max_labels: 0120\n', r"`max_labels` \(line 1\): '0120' is not a plain whole number: YAML 1.1 reads a leading "
                           r'0 as octal \(0120 is 80\)'),
    ('explore: {conditions: [{steps: 1:40}]}\n', r"`explore.conditions\[0\].steps` \(line 1\): '1:40' is not a plain"),
    ('1: foo\n', r'key 1 at the top level \(line 1\) is not text'),
    ('label: {ase: {yes: 1}}\n', r'key yes in `label.ase` \(line 1\) is not text'),
    ('seed: !!binary aGVsbG8=\n', r'`seed` \(line 1\): the YAML tag !!binary makes a value no input takes'),
    ('seed: !!int abc\n', r"`seed` \(line 1\): 'abc' is not a plain whole number: give digits only"),
    ('initial_structures: ' + '9' * 30 + '\n', r'`initial_structures` \(line 1\): 9{30} is beyond the 64-bit integers'),
    ('a: &loop {b: *loop}\n', r'`a.b` \(line 1\): the alias \*loop is inside the block it names'),
    ('a: ' + '[' * 5000 + '\n', r'`a(\[0\])+` \(line 1\): nested more than 32 levels deep'),
    ('a:\n  b: 1\n  b: 2\n', r'key `b` is given twice in one mapping \(line 2 and line 3\)'),
    ('a: "\x07"\n', r'not valid YAML: unacceptable character'),
])
def test_yaml_that_would_be_misread_or_fail_is_refused_naming_key_and_line(tmp_path, text, message):
    with pytest.raises(CampaignError, match=message):
        _read(tmp_path, text)


def test_size_and_alias_expansion_are_bounded_before_anything_is_built(tmp_path):
    import time

    from aiida_alml.campaign import MAX_CAMPAIGN_BYTES, read_campaign_yaml

    # A sparse file of 100 MB: refused from its size, without reading it.
    path = tmp_path / 'huge.yaml'
    with open(path, 'wb') as handle:
        handle.truncate(100 * 2**20)
    with pytest.raises(CampaignError, match=rf'{100 * 2**20} bytes, more than a campaign file may hold'):
        read_campaign_yaml(path)
    # A 3.8 KB billion laughs (9^9 values) and a flat list that fills 1 MiB: refused while composing, in well under
    # the 100 s the laughs took before.
    laughs = 'l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n' + ''.join(
        f'l{i}: &l{i} [' + ', '.join([f'*l{i - 1}'] * 9) + ']\n' for i in range(1, 9))
    flat = 'a: [' + '1,' * ((MAX_CAMPAIGN_BYTES - 10) // 2) + '1]\n'
    for text in (laughs, flat):
        start = time.perf_counter()
        with pytest.raises(CampaignError, match=r'the file holds more than 20000 values, each alias counted'):
            _read(tmp_path, text)
        assert time.perf_counter() - start < 5
    # Aliases that repeat a block a few times are fine.
    assert _read(tmp_path, 'a: &o {x: 1}\nb: [*o, *o, *o]\n')['b'] == [{'x': 1}] * 3


def test_gpu_device_needs_the_md_jobs_to_ask_for_gpus(tmp_path, demo_codes):
    """`cuda:N` loads when explore.md.metadata.options give the MD jobs N + 1 GPUs (gpus, or CUDA_VISIBLE_DEVICES)."""
    import yaml

    config = yaml.safe_load(DEMO.read_text())
    for path in DEMO.parent.glob('*.xyz'):
        (tmp_path / path.name).write_text(path.read_text())
    options = config['explore']['md']['metadata']['options']
    config['explore']['conditions'][0]['device'] = 'cuda:1'
    for given, accepted in (({}, False), ({'gpus': 1}, False), ({'gpus': 2}, True),
                            ({'environment_variables': {'CUDA_VISIBLE_DEVICES': '0,1'}}, True)):
        config['explore']['md']['metadata']['options'] = {**options, **given}
        path = tmp_path / 'campaign.yaml'
        path.write_text(yaml.safe_dump(config))
        if accepted:
            load_campaign(path)
        else:
            with pytest.raises(CampaignError, match=r"explore.conditions\[0\]: device 'cuda:1' needs each MD job to "
                                                    r'see at least 2 GPUs'):
                load_campaign(path)
