"""``alml-train`` checks its whole command line before anything runs, and nothing it loads is unpickled (issue 22).

Anything that can run a code can hand ``alml-train`` a command line (the shell labeller could), so it refuses on the
compute node what would read, write or download outside the job folder or unpickle a file: options given twice
(argparse keeps the last), abbreviations and ``--option=value`` (argparse expands them), and every option that names
a file, a folder, a download or the network. Checkpoints of ``--restart_latest`` load weights-only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip('mace')
pytestmark = pytest.mark.filterwarnings('ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD:UserWarning')

from aiida_alml.engines import train  # noqa: E402
from aiida_alml.engines.train import (  # noqa: E402
    EXIT_BAD_ARGUMENTS,
    EXIT_BAD_CHECKPOINT,
    EXIT_BAD_FOUNDATION,
    REFUSED,
    argv_problems,
)

#: What the calculation passes (prepare_for_submission), warm start and restart included.
CALCULATION_ARGV = [
    '--name', 'mace', '--seed', '3', '--train_file', 'train.xyz', '--valid_file', 'valid.xyz',
    '--test_file', 'test.xyz',
    '--E0s', '{29: -0.25}', '--energy_key', 'REF_energy', '--forces_key', 'REF_forces', '--stress_key', 'REF_stress',
    '--work_dir', '.', '--foundation_model', 'parent.alml', '--restart_latest', '--swa',
    '--model', 'ScaleShiftMACE', '--num_channels', '8', '--max_L', '0', '--r_max', '4.0', '--radial_MLP', '[8, 8]',
    '--mean', '-1.5', '--default_dtype', 'float64', '--device', 'cpu', '--plot', 'False',
]  # fmt: skip
TINY = ['--model', 'MACE', '--num_channels', '8', '--max_L', '0', '--r_max', '4.0', '--num_interactions', '2',
        '--correlation', '2', '--batch_size', '5', '--valid_fraction', '0.2', '--E0s', '{29: 3.51}', '--device', 'cpu',
        '--default_dtype', 'float64', '--work_dir', '.']


class Payload:
    """Unpickling this creates ``marker``: what a hostile model or checkpoint file would carry."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def _payload_file(path: Path, marker: Path) -> Path:
    import torch

    torch.save(Payload(marker), path)
    return path


@pytest.fixture(scope='module')
def parser():
    from mace.tools import build_default_arg_parser

    return build_default_arg_parser()


@pytest.fixture
def job(tmp_path, monkeypatch):
    """An empty job folder as the working directory; TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is restored afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', os.environ.get('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1'))
    return tmp_path


def _alml_train() -> str:
    return str(Path(sys.executable).parent / 'alml-train')


def _training_set(folder: Path, name: str = 'train.xyz') -> Path:
    from ase.io import write
    from helpers.mace import make_cu_dataset

    write(folder / name, make_cu_dataset(), format='extxyz')
    return folder / name


# ---------------------------------------------------------------------- the attack of the issue
def test_the_second_foundation_model_is_refused_before_it_is_unpickled(tmp_path):
    """``--foundation_model small --foundation_model evil.model``: argparse keeps the last, and MACE unpickled it."""
    marker = tmp_path / 'unpickled'
    _payload_file(tmp_path / 'evil.model', marker)
    _training_set(tmp_path, 'geo.xyz')
    proc = subprocess.run(
        [_alml_train(), '--name', 'x', '--train_file', 'geo.xyz', '--foundation_model', 'small',
         '--foundation_model', 'evil.model'],
        cwd=tmp_path, capture_output=True, text=True, check=False, env={**os.environ, 'OMP_NUM_THREADS': '1'},
    )  # fmt: skip
    assert not marker.exists(), 'the pickle ran'
    assert proc.returncode == EXIT_BAD_ARGUMENTS, proc.stderr[-2000:]
    assert f'{REFUSED} the command line' in proc.stderr
    assert '--foundation_model is given twice: argparse would keep only the last' in proc.stderr
    assert not (tmp_path / 'logs').exists()  # MACE never started


# ---------------------------------------------------------------------- the command line, word by word
def test_the_calculations_own_command_line_passes(parser, job):
    assert argv_problems(CALCULATION_ARGV, parser) == []


@pytest.mark.parametrize(('argv', 'message'), [
    (['--name', 'a', '--name', 'b'], '--name is given twice: argparse would keep only the last'),
    (['--swa', '--stage_two'], '--stage_two is given twice (as --swa and --stage_two)'),
    (['--foundation', 'parent.alml'], '--foundation is not an option of mace_run_train (an abbreviation of'),
    (['--max_num', '5'], '--max_num is not an option of mace_run_train (an abbreviation of --max_num_epochs'),
    (['--conf', 'x.yaml'], '--conf is not an option of mace_run_train (an abbreviation of --config'),
    (['--foundation_model=parent.alml'], "'--foundation_model=parent.alml': write the option and its value as two"),
    (['--name', '--foundation_model', 'evil.model'], '--name needs a value'),
    (['--name', 'x', 'evil.model'], "'evil.model' is not an option"),
    (['--', '--name', 'x'], "'--' is not an option"),
    (['-foundation_model', 'x'], '-foundation_model is not an option of mace_run_train'),
], ids=['twice', 'two-spellings', 'abbreviation', 'abbreviation-2', 'config-prefix', 'equals', 'no-value', 'stray',
        'double-dash', 'single-dash'])
def test_only_exact_options_once_each(parser, job, argv, message):
    problems = argv_problems(argv, parser)
    assert any(message in problem for problem in problems), problems


@pytest.mark.parametrize(('argv', 'message'), [
    (['--config', 'x.yaml'], 'reads options from a YAML file'),
    (['--statistics_file', '/etc/shadow'], 'reads a file on the compute node'),
    (['--pt_train_file', 'mp'], 'downloads'),
    (['--pt_valid_file', 'pt.xyz'], 'reads pretraining data'),
    (['--heads', "{'a': {'train_file': '/etc/passwd'}}"], 'defines heads with their own train_file'),
    (['--les_arguments', 'les.yaml'], 'reads a YAML file'),
    (['--downloads_dir', '.'], 'nothing may be downloaded'),
    (['--foundation_model_kwargs', "{'model': 'x'}"], "configures the download of MACE's own foundation models"),
    (['--fixedpoint_update_config', '{}'], 'PolarMACE only'),
    (['--field_readout_config', '{}'], 'PolarMACE only'),
    (['--wandb'], 'Weights & Biases'),
    (['--wandb_dir', 'w'], 'Weights & Biases'),
    (['--wandb_project', 'p'], 'Weights & Biases'),
    (['--wandb_log_hypers', 'lr'], 'Weights & Biases'),
    (['--log_dir', '/tmp'], 'logs stay in the working directory'),
    (['--model_dir', '/tmp'], 'the model stays in the working directory'),
    (['--checkpoints_dir', '/tmp'], 'checkpoints stay in the working directory'),
    (['--results_dir', '/tmp'], 'results stay in the working directory'),
    (['--test_dir', '/etc'], 'reads every file of a folder'),
    (['--distributed'], 'torch.distributed'),
    (['--launcher', 'torchrun'], 'torch.distributed'),
    (['--model', 'BOTNet'], "'BOTNet' is not one of ['MACE', 'ScaleShiftMACE']"),
])
def test_options_that_reach_outside_the_job_are_refused(parser, job, argv, message):
    problems = argv_problems(argv, parser)
    assert any(problem.startswith(argv[0]) and message in problem for problem in problems), problems


@pytest.mark.parametrize(('argv', 'message'), [
    (['--train_file', '/etc/passwd'], "--train_file: '/etc/passwd' must be a plain file name in the job folder"),
    (['--valid_file', '../../x.xyz'], "--valid_file: '../../x.xyz' must be a plain file name"),
    (['--test_file', 'sub/t.xyz'], "--test_file: 'sub/t.xyz' must be a plain file name"),
    (['--name', '../../../tmp/x'], "--name: '../../../tmp/x' must be a plain file name"),
    (['--work_dir', '/tmp'], "--work_dir: '/tmp' must be a plain file name"),
    (['--work_dir', '..'], "--work_dir: '..' must be a plain file name"),
    (['--E0s', '/etc/e0s.json'], "--E0s: '/etc/e0s.json' must be a plain file name"),
    (['--train_file', ''], "--train_file: '' must be a plain file name"),
])
def test_file_arguments_are_plain_names_in_the_job_folder(parser, job, argv, message):
    problems = argv_problems(argv, parser)
    assert any(message in problem for problem in problems), problems


def test_a_link_out_of_the_job_folder_is_refused(parser, job, tmp_path_factory):
    outside = tmp_path_factory.mktemp('outside') / 'secret.xyz'
    outside.write_text('secret')
    (job / 'train.xyz').symlink_to(outside)
    assert argv_problems(['--train_file', 'train.xyz'], parser) == [
        "--train_file: 'train.xyz' leads outside the job folder"]


def test_text_options_fail_closed(parser):
    """An option a later MACE adds that takes text (a path, perhaps) is refused until someone reviews it."""
    new = argparse.ArgumentParser()
    new.add_argument('--new_thing', type=str)
    new.add_argument('--new_source', type=lambda text: text)  # read by a function of MACE's own
    new.add_argument('--reference_file', type=float)
    new.add_argument('--lr', type=float)
    reasons = {action.dest: train.option_refusal(action) for action in new._actions if action.dest != 'help'}
    assert reasons['new_thing'] == 'takes text that alml-train does not know to be harmless (it could be a path)'
    assert 'MACE reads its value with <lambda>()' in reasons['new_source']
    assert reasons['reference_file'] == 'names a file or folder outside what the calculation passes'
    assert reasons['lr'] is None
    # Every option of the installed MACE is either refused or classified, none is left to chance.
    for action in parser._actions:
        if action.dest not in ('help', *train.JOB_FILE_OPTIONS, 'E0s') and action.nargs != 0 and not action.choices:
            type_name = getattr(action.type, '__name__', 'str') if action.type else 'str'
            if type_name == 'str':
                assert action.dest in train.TEXT_OPTIONS or train.option_refusal(action), action.dest


# ---------------------------------------------------------------------- main: exit codes, before anything runs
def test_main_refuses_with_a_message_and_its_exit_code(job, capsys):
    marker = job / 'unpickled'
    _payload_file(job / 'evil.model', marker)
    assert train.main(['--name', 'x', '--train_file', 'geo.xyz', '--foundation_model', 'small',
                       '--foundation_model', 'evil.model']) == EXIT_BAD_ARGUMENTS
    assert not marker.exists()
    err = capsys.readouterr().err
    assert err.startswith(f'{REFUSED} the command line is not one alml-train runs:')
    assert 'Traceback' not in err


@pytest.mark.parametrize(('foundation', 'message'), [
    ('evil.model', 'is not an aiida-alml model file: it asks to rebuild Python objects'),
    ('small', "'small' is not a file in the job folder: a warm start needs a model in aiida-alml's format (MACE's "
              'named models such as `small` are downloaded'),
    ('../parent.alml', "'../parent.alml' must be a plain file name in the job folder"),
])
def test_foundation_model_must_be_ours_in_the_job_folder(job, capsys, foundation, message):
    marker = job / 'unpickled'
    _payload_file(job / 'evil.model', marker)
    status = train.main(['--name', 'x', '--train_file', 'geo.xyz', '--foundation_model', foundation])
    assert status == EXIT_BAD_FOUNDATION
    assert not marker.exists()
    err = capsys.readouterr().err
    assert err.startswith(f'{REFUSED} --foundation_model') and message in err, err


def test_a_model_file_already_in_the_job_folder_is_refused(job, capsys):
    """Only a model this run writes is loaded after training: one planted beforehand is never taken for it."""
    marker = job / 'unpickled'
    _payload_file(job / 'x_stagetwo.model', marker)
    _training_set(job)
    assert train.main(['--name', 'x', '--train_file', 'train.xyz', *TINY]) == EXIT_BAD_ARGUMENTS
    assert 'x_stagetwo.model exists before training' in capsys.readouterr().err
    assert not marker.exists() and not (job / 'logs').exists()


def test_a_checkpoint_that_is_not_plain_weights_is_refused(job, capsys):
    """MACE would catch the failed load of ``--restart_latest`` and silently train from scratch."""
    marker = job / 'unpickled'
    (job / 'checkpoints').mkdir()
    _payload_file(job / 'checkpoints' / 'x_run-1_epoch-1.pt', marker)
    _training_set(job)
    assert train.main(['--name', 'x', '--seed', '1', '--train_file', 'train.xyz', '--restart_latest', *TINY]) == \
        EXIT_BAD_CHECKPOINT
    assert not marker.exists()
    assert 'x_run-1_epoch-1.pt is not plain weights' in capsys.readouterr().err


def test_checkpoints_from_outside_the_job_folder_are_refused(job, capsys, tmp_path_factory):
    (job / 'checkpoints').symlink_to(tmp_path_factory.mktemp('elsewhere'))
    _training_set(job)
    assert train.main(['--name', 'x', '--seed', '1', '--train_file', 'train.xyz', '--restart_latest', *TINY]) == \
        EXIT_BAD_CHECKPOINT
    assert 'checkpoints leads outside the job folder' in capsys.readouterr().err


def test_loads_during_training_are_weights_only(job, monkeypatch):
    """MACE calls torch.load without weights_only and sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD: inside training every
    load is weights-only, and the foundation model is the one rebuilt from our file (no pickle file at all)."""
    import pickle

    import torch

    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')  # what importing mace does
    marker = job / 'unpickled'
    _payload_file(job / 'checkpoint.pt', marker)
    foundation = torch.nn.Linear(2, 2)
    with train._weights_only_loads('parent.alml', foundation):  # noqa: SLF001
        assert 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' not in os.environ
        with pytest.raises(pickle.UnpicklingError):
            torch.load(str(job / 'checkpoint.pt'))
        assert torch.load('parent.alml', map_location='cpu') is foundation
        assert torch.load(str(job / 'parent.alml')) is foundation  # the same file, by another path
    assert not marker.exists()
    assert torch.load.__module__ == 'torch.serialization'  # put back


# ---------------------------------------------------------------------- a real restart, weights-only
def _run(folder: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([_alml_train(), *argv], cwd=folder, capture_output=True, text=True, check=False,
                          env={**os.environ, 'OMP_NUM_THREADS': '1'})


@pytest.mark.slow
def test_restart_from_real_checkpoints_loads_them_weights_only(tmp_path):
    first, second = tmp_path / 'first', tmp_path / 'second'
    for folder in (first, second):
        folder.mkdir()
        _training_set(folder)
    common = ['--name', 'cu', '--seed', '1', '--train_file', 'train.xyz', *TINY]
    proc = _run(first, *common, '--max_num_epochs', '2')
    assert proc.returncode == 0, proc.stderr[-3000:]
    # What the calculation's restart_folder does: the interrupted job's checkpoints, copied into a fresh job folder.
    shutil.copytree(first / 'checkpoints', second / 'checkpoints')
    for checkpoint in (second / 'checkpoints').glob('*.pt'):
        import torch

        torch.load(checkpoint, weights_only=True)  # plain tensors and numbers
    proc = _run(second, *common, '--max_num_epochs', '4', '--restart_latest')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (second / 'cu.alml').is_file()
    output = proc.stdout + proc.stderr
    assert 'Loading checkpoint: ./checkpoints/cu_run-1_epoch-1.pt' in output
    # MACE's checkpoint load ran weights-only: torch warns whenever the variable turns a load into full unpickling.
    assert 'checkpoint.py' not in output, output[-3000:]
    results = (second / 'results' / 'cu_run-1_train.txt').read_text().splitlines()
    epochs = {json.loads(line)['epoch'] for line in results}
    assert 0 not in epochs and max(epochs - {None}) == 3  # continued after the checkpointed epoch, not from scratch
