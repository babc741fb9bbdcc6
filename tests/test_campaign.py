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
