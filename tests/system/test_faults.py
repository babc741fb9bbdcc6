"""Faults: the daemon worker killed mid-campaign, and a job whose working directory fills up.

The first test runs ``benchmarks/fault_injection.py`` (its own throw-away profile and daemon) on one small campaign
with two SIGKILLs of the worker. The full-disk tests mount a small tmpfs as the computer's working directory (root
only; skipped otherwise) and run each engine through its CalcJob with a code that fills that file system, as another
job sharing the disk would, before the program starts.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_alml.engines.disk import DISK_FULL_MARKER, EXIT_DISK_FULL

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent


@pytest.mark.daemon
@pytest.mark.slow
def test_campaign_survives_two_worker_kills(tmp_path):
    out = tmp_path / 'faults.json'
    result = subprocess.run(
        [sys.executable, str(ROOT / 'benchmarks' / 'fault_injection.py'), '--no-reference', '--group', '2',
         '--points', 'training_job', 'label_job', '--timeout', '900', '--settle', '10', '--out', str(out)],
        capture_output=True, text=True, timeout=1200, env={**os.environ, 'PATH': f'{BIN}{os.pathsep}{os.environ["PATH"]}'},
    )  # fmt: skip
    assert out.exists(), f'no report written:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}'
    (campaign,) = json.loads(out.read_text())['campaigns']
    summary = f'{result.stdout[-2000:]}\n{json.dumps({k: v for k, v in campaign.items() if k != "structure"})}'
    assert [kill['point'] for kill in campaign['kills'] if 'worker_back_s' in kill] == ['training_job', 'label_job'], summary
    assert all(kill['worker_back_s'] < 30 for kill in campaign['kills']), summary
    assert campaign['process_state'] == 'finished' and campaign['exit_status'] == 401, summary  # the iteration cap
    # 10 initial labels + 3 per iteration, each labelled once and in the dataset once
    assert campaign['frames_chosen'] == 16 and campaign['structure']['dataset_size'] == 16, summary
    assert campaign['lost_unlabelled'] == campaign['lost_from_dataset'] == 0, summary
    assert campaign['duplicated_labelled'] == campaign['duplicated_in_dataset'] == 0, summary
    assert campaign['double_submissions'] == {} and campaign['jobs_run_twice'] == {}, summary
    assert campaign['jobs_same_inputs'] == 0 and campaign['orphan_jobs'] == [], summary
    assert campaign['structure']['iterations'] == 2, summary
    assert result.returncode == 0, summary


# ---------------------------------------------------------------------- full disk
TMPFS_SIZE = '4m'


@pytest.fixture
def full_disk(tmp_path):
    """A 4 MiB tmpfs (the computer's working directories go there), unmounted afterwards."""
    mount = tmp_path / 'scratch'
    mount.mkdir()
    result = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={TMPFS_SIZE}', 'tmpfs', str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f'cannot mount a small tmpfs to fill up (needs root and CAP_SYS_ADMIN): {result.stderr.strip()}')
    try:
        yield mount
    finally:
        subprocess.run(['umount', '-l', str(mount)], check=False)


def _filling_code(full_disk: pathlib.Path, code, keep_kib: int):
    """``code``'s program on a computer whose working directories are on ``full_disk``, started by a script that
    first fills that file system (after the inputs were uploaded) up to ``keep_kib`` KiB."""
    executable = pathlib.Path(code.filepath_executable).name
    computer = orm.Computer(label=f'full-disk-{full_disk.parent.name}-{executable}', hostname='localhost',
                            transport_type='core.local', scheduler_type='core.direct',
                            workdir=str(full_disk / 'work')).store()
    computer.configure(safe_interval=0.0)
    computer.set_minimum_job_poll_interval(0.0)
    computer.set_default_mpiprocs_per_machine(1)
    script = full_disk.parent / f'fill-then-{executable}'
    script.write_text(
        '#!/bin/sh\n'
        f'avail=$(df -k --output=avail "{full_disk}" | tail -1)\n'
        f'dd if=/dev/zero of="{full_disk}/filler-$$" bs=1k count=$((avail - {keep_kib})) 2>/dev/null\n'
        f'exec "{code.filepath_executable}" "$@"\n'
    )
    script.chmod(0o755)
    return orm.InstalledCode(label=executable, computer=computer, default_calc_job_plugin=code.default_calc_job_plugin,
                             filepath_executable=str(script)).store()


def _big_set(count=60, repeat=(2, 2, 2)):
    from ase.build import bulk

    from aiida_alml.data import ConfigurationSet

    images = []
    for index in range(count):
        atoms = bulk('Cu', 'fcc', a=3.6, cubic=True).repeat(repeat)
        atoms.rattle(0.05, seed=index)
        images.append(atoms)
    return ConfigurationSet.from_ase(images)


def _remote_files(node) -> list[str]:
    return sorted(os.listdir(node.outputs.remote_folder.get_remote_path()))


def test_label_engine_exits_with_the_disk_full_code(full_disk):
    from aiida_alml.atoms.configurations import Configurations

    work = full_disk / 'engine'
    work.mkdir()
    (work / 'structures.npz').write_bytes(_big_set().configurations.to_npz_bytes())
    (work / 'calculator.json').write_text(json.dumps({'name': 'emt'}))
    avail = os.statvfs(full_disk).f_bavail * os.statvfs(full_disk).f_frsize // 1024
    (full_disk / 'filler').write_bytes(b'\0' * ((avail - 16) * 1024))
    with open(work / 'alml-label.out', 'w') as stdout:
        result = subprocess.run([BIN / 'alml-label'], cwd=work, stdout=stdout, stderr=subprocess.PIPE, text=True)
    assert result.returncode == EXIT_DISK_FULL, result.stderr
    output = (work / 'alml-label.out').read_text()
    assert output.startswith(f'{DISK_FULL_MARKER} alml-label:') and 'No space left on device' in output
    assert sorted(os.listdir(work)) == ['alml-label.out', 'calculator.json', 'structures.npz']  # partial outputs gone
    with open(work / 'structures.npz', 'rb') as handle:
        assert len(Configurations.from_npz(handle)) == 60  # the inputs are untouched


@pytest.mark.slow
def test_label_job_on_a_full_disk(full_disk, label_code):
    from aiida_alml.calculations.ase import AseLabelCalculation

    code = _filling_code(full_disk, label_code, keep_kib=16)
    _, node = run_get_node(AseLabelCalculation, code=code, structures=_big_set(), calculator=orm.Dict({'name': 'emt'}),
                           properties=orm.List(['energy', 'forces']))
    assert node.exit_status == AseLabelCalculation.exit_codes.ERROR_DISK_FULL.status == 302, node.exit_message
    assert 'No space left on device' in node.exit_message and 'alml-label' in node.exit_message
    assert 'labelled.npz' not in _remote_files(node)  # the truncated archive was removed


@pytest.mark.slow
def test_md_job_on_a_full_disk(full_disk, md_code, trained_committee):
    from aiida_alml.calculations.md import MdCalculation

    from ase.build import bulk

    _, models = trained_committee
    atoms = bulk('Cu', 'fcc', a=3.6, cubic=True).repeat((2, 2, 1))
    atoms.rattle(0.05, seed=1)
    code = _filling_code(full_disk, md_code, keep_kib=16)
    # 201 frames of 16 atoms: some 200 KiB of trajectory, far more than the 16 KiB left
    _, node = run_get_node(
        MdCalculation, code=code, structure=orm.StructureData(ase=atoms),
        models={f'member_{i}': model for i, model in enumerate(models)},
        parameters=orm.Dict({'temperature': 300.0, 'steps': 200, 'sample_interval': 1}),
        metadata={'options': {'resources': {'num_machines': 1}, 'environment_variables': {'OMP_NUM_THREADS': '1'}}},
    )  # fmt: skip
    assert node.exit_status == MdCalculation.exit_codes.ERROR_DISK_FULL.status, node.exit_message
    assert 'No space left on device' in node.exit_message and 'alml-md' in node.exit_message
    assert 'trajectory.npz' not in _remote_files(node)


@pytest.mark.slow
def test_training_job_on_a_full_disk(full_disk, tiny_mace_inputs):
    from aiida_alml.calculations.mace_train import MaceTrainCalculation

    inputs = tiny_mace_inputs(max_num_epochs=2)
    inputs['code'] = _filling_code(full_disk, inputs['code'], keep_kib=96)
    inputs['seed'] = orm.Int(1)
    _, node = run_get_node(MaceTrainCalculation, **inputs)
    # mace_run_train is not ours: its checkpoint write fails (torch reports the short write as "unexpected pos")
    assert node.exit_status == MaceTrainCalculation.exit_codes.ERROR_DISK_FULL.status, node.exit_message
    assert 'model' not in node.outputs


def test_disk_full_signs_are_recognised():
    from aiida_alml.engines.disk import disk_full_line

    assert disk_full_line('ok\nOSError: [Errno 28] No space left on device\n') == \
        'OSError: [Errno 28] No space left on device'
    assert disk_full_line('', 'RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 63168 vs 63056')
    assert disk_full_line('Disk quota exceeded')
    assert disk_full_line('alml-md: 200 steps, 201 frames, completed') is None
    assert disk_full_line(f'{DISK_FULL_MARKER} alml-label: ...')
