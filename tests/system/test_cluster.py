"""A campaign through a real SLURM cluster over SSH (scripts/cluster.sh): sbatch, partitions, GRES, provenance.

Runs only with ``ALML_TEST_CLUSTER=1`` (scripts/test.sh sets it, as root, after scripts/cluster.sh); otherwise
skipped. The daemon of the test profile submits every job with sbatch over SSH as the unprivileged cluster user:
labelling on ``slurm-cpu`` (partition cpu), training and MD on ``slurm-gpu`` (partition gpu, ``gpus: 1`` in the
campaign file, device cpu: the GPUs are stand-ins). The same campaign file, pointed at localhost codes, is the
reference for the provenance.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import pwd
import re
import shutil
import subprocess

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.daemon, pytest.mark.slow]

REPO = pathlib.Path(__file__).resolve().parents[2]
CLUSTER_USER = os.environ.get('ALML_CLUSTER_USER', 'alml')
WALLTIME = {'cpu': 600, 'gpu': 900}  # seconds, i.e. --time=00:10:00 and 00:15:00

if os.environ.get('ALML_TEST_CLUSTER') != '1':
    pytestmark.append(pytest.mark.skip(
        reason='needs the local SLURM cluster: run scripts/cluster.sh as root, then ALML_TEST_CLUSTER=1 '
               '(scripts/test.sh does both when run as root)'))


def _cluster_module():
    spec = importlib.util.spec_from_file_location('cluster_aiida', REPO / 'scripts' / 'cluster_aiida.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sacct(job_ids) -> dict:
    """{job id: (partition, user, state)} from SLURM's job-completion log (no slurmdbd: ``sacct --completion``)."""
    result = subprocess.run(
        ['sacct', '--completion', '--parsable2', '--noheader', '-o', 'JobID,Partition,User,State',
         '-j', ','.join(job_ids)], capture_output=True, text=True, timeout=60, check=True,
    )
    rows = {}
    for line in result.stdout.splitlines():
        job_id, partition, user, state = line.split('|')
        rows[job_id] = (partition, user.split('(')[0], state)  # the last line wins if slurmctld reused an id
    return rows


@pytest.fixture(scope='module')
def cluster(aiida_profile):
    """The cluster's computers and codes in the test profile; fails (not skips) if asked for while SLURM is down."""
    if shutil.which('sinfo') is None:
        pytest.fail('ALML_TEST_CLUSTER=1 but sinfo is not installed: run scripts/cluster.sh as root')
    answer = subprocess.run(['sinfo', '-h', '-o', '%P %a'], capture_output=True, text=True, timeout=30)
    if answer.returncode != 0 or 'gpu up' not in answer.stdout:
        pytest.fail(f'ALML_TEST_CLUSTER=1 but SLURM does not answer with partitions cpu and gpu up: '
                    f'{answer.stdout or answer.stderr}')
    module = _cluster_module()
    home = pathlib.Path(pwd.getpwnam(CLUSTER_USER).pw_dir)
    codes = module.setup_cluster(username=CLUSTER_USER, workdir=str(home / 'aiida_run'))
    return module, codes


def _structures(folder: pathlib.Path):
    import ase.io
    from ase.build import bulk

    cubic = bulk('Cu', 'fcc', a=3.61, cubic=True)
    vacancy = cubic.repeat((2, 1, 1))
    del vacancy[3]
    ase.io.write(folder / 'initial.xyz', [cubic, cubic.repeat((2, 1, 1)), vacancy])
    ase.io.write(folder / 'vacancy.xyz', [vacancy])


def _campaign(label_code: str, train_code: str, md_code: str, cluster: bool) -> dict:
    """A tiny campaign: one iteration, then a final training. On the cluster each stage names its partition."""
    from conftest import TINY_MACE

    def options(partition):
        options = {'resources': {'num_machines': 1}, 'withmpi': False, 'max_wallclock_seconds': WALLTIME[partition],
                   'environment_variables': {'OMP_NUM_THREADS': '1'}}
        if cluster:
            options['queue_name'] = partition
            if partition == 'gpu':
                options['gpus'] = 1  # the campaign key that becomes `#SBATCH --gres=gpu:1`
        return options

    return {
        'initial_structures': 'initial.xyz',
        'initial_perturbation': {'count': 8, 'rattle_std': 0.06, 'max_strain': 0.03, 'seed': 1},
        'exploration_structures': 'vacancy.xyz',
        'label': {'labeller': 'ase', 'ase': {'code': label_code, 'calculator': {'name': 'emt'},
                                             'properties': ['energy', 'forces'], 'options': options('cpu')}},
        'train': {'num_members': 2, 'train': {
            'code': train_code, 'e0s': 'average', 'parameters': {**TINY_MACE, 'batch_size': 4},
            'metadata': {'options': options('gpu')}}},
        'explore': {'md': {'code': md_code, 'metadata': {'options': options('gpu')}},
                    'conditions': [{'ensemble': 'nvt_langevin', 'temperature': 600.0, 'steps': 40,
                                    'sample_interval': 5, 'timestep': 2.0, 'seed': 3}]},
        # Every frame a candidate and none failed: the selection takes exactly the cap, on both machines.
        'selection': {'trust_lo': 1e-6, 'trust_hi': 50.0, 'labels_per_iteration': 3},
        'max_iterations': 1,
        'max_labels': 100,
        'final_stage_two_steps': 0,  # the final training as the loop's: its length is not what this test checks
    }


def _load(folder: pathlib.Path, name: str, campaign: dict) -> dict:
    import yaml

    from aiida_alml.campaign import load_campaign

    path = folder / name
    path.write_text(yaml.safe_dump(campaign, sort_keys=False), encoding='utf-8')
    return load_campaign(path)


def _shape(node, prefix=()) -> list:
    """Every descendant process: (call-link path, process type, exit status, output link labels), sorted."""
    from aiida.common.links import LinkType

    rows = []
    for link in node.base.links.get_outgoing(link_type=(LinkType.CALL_CALC, LinkType.CALL_WORK)).all():
        child, path = link.node, prefix + (link.link_label,)
        outputs = child.base.links.get_outgoing(link_type=(LinkType.CREATE, LinkType.RETURN)).all_link_labels()
        rows.append((path, child.process_type, child.exit_status, tuple(sorted(outputs))))
        rows.extend(_shape(child, path))
    return sorted(rows)


def _diagnosis(node) -> str:
    """What went wrong where: every process's exit status and message, and the campaign's report."""
    from aiida.cmdline.utils.common import get_workchain_report

    lines = [f'{node.process_label}<{node.pk}> {node.exit_status}: {node.exit_message}']
    for child in node.called_descendants:
        lines.append(f'  {child.process_label}<{child.pk}> {child.process_state.value} {child.exit_status}: '
                     f'{child.exit_message or ""}')
    return '\n'.join(lines + [get_workchain_report(node, 'REPORT')])


def _outputs(node) -> list:
    from aiida.common.links import LinkType

    return sorted(node.base.links.get_outgoing(link_type=LinkType.RETURN).all_link_labels())


def _calcjobs(node) -> list:
    from aiida import orm

    return [child for child in node.called_descendants if isinstance(child, orm.CalcJobNode)]


def test_campaign_through_slurm_over_ssh(cluster, submit_and_await, label_code, mace_train_code, md_code, tmp_path):
    from aiida.engine import submit

    from aiida_alml.workflows.active_learning import ActiveLearningWorkChain

    module, codes = cluster
    _structures(tmp_path)
    on_cluster = _load(tmp_path, 'cluster.yaml', _campaign(
        codes['slurm-cpu']['alml-label'].full_label, codes['slurm-gpu']['mace-train'].full_label,
        codes['slurm-gpu']['alml-md'].full_label, cluster=True))
    local = _load(tmp_path, 'local.yaml', _campaign(label_code.full_label, mace_train_code.full_label,
                                                    md_code.full_label, cluster=False))
    # the campaign key, not a hand-written directive, asks for the GPU
    assert on_cluster['train']['train']['metadata']['options']['custom_scheduler_commands'] == '#SBATCH --gres=gpu:1'

    reference = submit(ActiveLearningWorkChain, **local)
    node = submit_and_await(ActiveLearningWorkChain, timeout=1800, **on_cluster)
    reference = submit_and_await(reference, timeout=900)
    expected = ActiveLearningWorkChain.exit_codes.ERROR_MAX_ITERATIONS.status  # one iteration, as asked
    assert node.exit_status == expected, _diagnosis(node)
    assert reference.exit_status == expected, _diagnosis(reference)

    jobs = _calcjobs(node)
    kinds = sorted(job.process_type for job in jobs)
    # initial + iteration labelling, 2 members x (iteration 0 + final training), one MD run
    assert kinds.count('aiida.calculations:alml.ase') == 2, kinds
    assert kinds.count('aiida.calculations:alml.mace.train') == 4, kinds
    assert kinds.count('aiida.calculations:alml.md') == 1, kinds
    cluster_uid = pwd.getpwnam(CLUSTER_USER).pw_uid
    for job in jobs:
        partition = 'cpu' if job.process_type.endswith('alml.ase') else 'gpu'
        where = f'{job.process_label} <{job.pk}>'
        assert job.computer.label == f'slurm-{partition}' and job.computer.scheduler_type == 'core.slurm', where
        assert job.computer.transport_type in module.TRANSPORTS, where
        assert job.is_finished_ok, f'{where}: {job.exit_status} {job.exit_message}'
        assert re.fullmatch(r'\d+', job.get_job_id() or ''), f'{where}: job id {job.get_job_id()!r}'
        # the job ran as the cluster user: it owns the working directory the transport made
        assert pathlib.Path(job.get_remote_workdir()).stat().st_uid == cluster_uid, where
        script = job.base.repository.get_object_content('_aiidasubmit.sh')
        assert f'#SBATCH --partition={partition}' in script, f'{where}:\n{script}'
        minutes = WALLTIME[partition] // 60
        assert f'#SBATCH --time=00:{minutes:02d}:00' in script, f'{where}:\n{script}'
        assert module.COMPUTER_PREPEND in script, where
        assert (module.GPU_CODE_PREPEND in script) == (partition == 'gpu'), where
        assert ('#SBATCH --gres=gpu:1' in script) == (partition == 'gpu'), f'{where}:\n{script}'
        # what the job itself printed (retrieved scheduler stdout): SLURM placed it as asked
        stdout = job.outputs.retrieved.base.repository.get_object_content('_scheduler-stdout.txt')
        gpus = r'\d' if partition == 'gpu' else 'none'
        pattern = rf'alml-cluster: job {job.get_job_id()} partition {partition} gpus {gpus} user {CLUSTER_USER}'
        assert re.search(pattern, stdout), f'{where}: {stdout!r}'

    seen = _sacct([job.get_job_id() for job in jobs])
    for job in jobs:
        partition = 'cpu' if job.process_type.endswith('alml.ase') else 'gpu'
        assert seen.get(job.get_job_id()) == (partition, CLUSTER_USER, 'COMPLETED'), (job.pk, seen)

    # the same processes, call links and outputs as the local run of the same campaign file
    assert _shape(node) == _shape(reference)
    assert _outputs(node) == _outputs(reference)
    assert len(node.outputs.dataset) == len(reference.outputs.dataset)


def _squeue_state(job_id: str) -> str:
    result = subprocess.run(['squeue', '-h', '-j', job_id, '-o', '%T'], capture_output=True, text=True, timeout=30)
    return result.stdout.strip()


def _committee_training_on_the_cluster(cluster, tiny_mace_inputs, epochs=40):
    """Submit a 2-member committee to the gpu partition; return (committee, member_0) once member_0 is training.

    RUNNING in squeue is not enough: a job disturbed in its first second has not even written its output files.
    So this waits until mace writes its log, i.e. the training is under way.
    """
    import time

    from aiida import orm
    from aiida.engine import submit

    from aiida_alml.workflows.committee import CommitteeWorkChain

    _, codes = cluster
    train = tiny_mace_inputs(max_num_epochs=epochs)
    train['code'] = codes['slurm-gpu']['mace-train']
    train['metadata']['options'].update(queue_name='gpu', max_wallclock_seconds=WALLTIME['gpu'],
                                        custom_scheduler_commands='#SBATCH --gres=gpu:1')
    node = submit(CommitteeWorkChain, num_members=orm.Int(2), train=train)

    def training(member) -> bool:
        if member is None or _squeue_state(member.get_job_id()) != 'RUNNING':
            return False
        logs = pathlib.Path(member.get_remote_workdir()) / 'logs'
        return logs.is_dir() and any(path.stat().st_size for path in logs.iterdir())

    deadline = time.monotonic() + 600
    member = None
    while not training(member):
        assert time.monotonic() < deadline, 'member_0 never started training under SLURM'
        assert not node.is_terminated, node.exit_message
        member = _members(node).get('member_0')
        if member is not None and member.get_job_id() is None:
            member = None  # stored, not yet submitted to SLURM
        time.sleep(0.5)
    return node, member


def _members(node) -> dict:
    """The committee's training jobs: ``member_<k>`` for the first attempt of the member's alml.mace.train.base,
    ``member_<k>_relaunch_<n>`` for the n-th relaunch (its ``iteration_<n + 1>``)."""
    from aiida.common.links import LinkType

    jobs = {}
    for link in node.base.links.get_outgoing(link_type=LinkType.CALL_WORK).all():
        for attempt in link.node.base.links.get_outgoing(link_type=LinkType.CALL_CALC).all():
            number = int(attempt.link_label.removeprefix('iteration_'))
            jobs[link.link_label if number == 1 else f'{link.link_label}_relaunch_{number - 1}'] = attempt.node
    return jobs


def test_scancel_of_a_member_is_absorbed_by_a_relaunch(cluster, submit_and_await, tiny_mace_inputs):
    # An administrator (or a preemption) cancels a running job: AiiDA sees the job leave squeue and retrieves what
    # is there; the parser finds slurmstepd's CANCELLED line and says ERROR_JOB_INTERRUPTED, and the committee
    # trains that member again with the same inputs.
    from aiida import orm

    from aiida_alml.calculations.base import EXIT_JOB_INTERRUPTED

    node, member = _committee_training_on_the_cluster(cluster, tiny_mace_inputs)
    job_id = member.get_job_id()
    subprocess.run(['scancel', job_id], check=True, timeout=30)

    node = submit_and_await(node, timeout=900)
    assert node.is_finished_ok, _diagnosis(node)
    member = orm.load_node(member.pk)
    assert member.exit_status == EXIT_JOB_INTERRUPTED, member.exit_message
    assert f'job {job_id} on ' in member.exit_message and ' cancelled at ' in member.exit_message
    stderr = member.outputs.retrieved.base.repository.get_object_content('_scheduler-stderr.txt')
    assert f'JOB {job_id} ON' in stderr and 'CANCELLED AT' in stderr, stderr
    assert _sacct([job_id])[job_id][2].startswith('CANCELLED')
    members = _members(node)
    assert sorted(members) == ['member_0', 'member_0_relaunch_1', 'member_1'], sorted(members)
    relaunch = members['member_0_relaunch_1']
    assert relaunch.is_finished_ok and relaunch.get_job_id() != job_id
    assert node.outputs.models.member_0.uuid == relaunch.outputs.model.uuid
    assert _sacct([relaunch.get_job_id()])[relaunch.get_job_id()][2] == 'COMPLETED'


def _node_name() -> str:
    return subprocess.run(['sinfo', '-h', '-N', '-o', '%N'], capture_output=True, text=True, check=True,
                          timeout=30).stdout.split()[0]


def _node_state(name: str) -> str:
    return subprocess.run(['sinfo', '-h', '-n', name, '-o', '%T'], capture_output=True, text=True, check=True,
                          timeout=30).stdout.strip().splitlines()[0]


def test_node_drained_then_failing_mid_training_is_absorbed(cluster, submit_and_await, tiny_mace_inputs):
    # An administrator drains the node under a training member (the job runs on), then the node fails (State=DOWN:
    # SLURM ends the job as NODE_FAIL; AiiDA's jobs are --no-requeue). The committee relaunches the member; the
    # relaunch waits in the queue while the node is drained and runs once the administrator returns it to service.
    import time

    from aiida import orm

    from aiida_alml.calculations.base import EXIT_JOB_INTERRUPTED

    node, member = _committee_training_on_the_cluster(cluster, tiny_mace_inputs)
    name, job_id = _node_name(), member.get_job_id()

    def scontrol(*args, check=True):
        return subprocess.run(['scontrol', 'update', f'NodeName={name}', *args], check=check, timeout=30)

    try:
        scontrol('State=DRAIN', 'Reason=alml-test: drained')
        time.sleep(5)
        assert _squeue_state(job_id) == 'RUNNING'  # draining lets running jobs finish
        scontrol('State=DOWN', 'Reason=alml-test: failed')
        deadline = time.monotonic() + 300
        relaunch = None
        while relaunch is None or relaunch.get_job_id() is None or not _squeue_state(relaunch.get_job_id()):
            assert time.monotonic() < deadline, f'member_0 was not relaunched: {sorted(_members(node))}'
            relaunch = _members(node).get('member_0_relaunch_1')
            time.sleep(1)
        time.sleep(10)
        assert _squeue_state(relaunch.get_job_id()) == 'PENDING'  # nowhere to run while the node is drained
    finally:
        scontrol('State=RESUME', check=False)  # (refused if the node is already back in service)

    node = submit_and_await(node, timeout=900)
    assert node.is_finished_ok, _diagnosis(node)
    member = orm.load_node(member.pk)
    assert member.exit_status == EXIT_JOB_INTERRUPTED and 'due to node failure' in member.exit_message
    assert _sacct([job_id])[job_id][2] == 'NODE_FAIL'
    members = _members(node)
    # member_1, if it was running on the node too, failed and was relaunched the same way
    assert {'member_0', 'member_0_relaunch_1', 'member_1'} <= set(members) <= \
        {'member_0', 'member_0_relaunch_1', 'member_1', 'member_1_relaunch_1'}, sorted(members)
    for key in ('member_0', 'member_1'):
        last = members.get(f'{key}_relaunch_1', members[key])
        assert last.is_finished_ok and node.outputs.models[key].uuid == last.outputs.model.uuid
        if last is not members[key]:
            assert members[key].exit_status == EXIT_JOB_INTERRUPTED, members[key].exit_message


def test_ssh_server_restarted_mid_campaign_is_absorbed(cluster, submit_and_await, tiny_mace_inputs):
    # The cluster's SSH server goes away for 20 s (listener and every session killed) while the daemon polls and
    # retrieves over it; AiiDA's transport retries (exponential backoff) must carry the committee through.
    import time

    node, _ = _committee_training_on_the_cluster(cluster, tiny_mace_inputs, epochs=15)
    pid = pathlib.Path('/run/sshd-alml-cluster.pid').read_text().strip()
    subprocess.run(['kill', '-KILL', pid], check=True, timeout=30)  # the listener
    subprocess.run(['pkill', '-KILL', '-u', CLUSTER_USER, '-f', 'sshd'], timeout=30)  # the open sessions
    time.sleep(20)
    assert subprocess.run(['ssh', '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=3', 'alml-cluster', 'true'],
                          capture_output=True, timeout=30).returncode != 0, 'the SSH server was still answering'
    # the services script starts sshd again as it was (and leaves SLURM, which is up, alone)
    subprocess.run(['bash', str(REPO / 'scripts' / 'cluster.sh'), '--services-only'], check=True, timeout=300,
                   capture_output=True)
    node = submit_and_await(node, timeout=900)
    assert node.is_finished_ok, _diagnosis(node)
    assert sorted(node.outputs.models) == ['member_0', 'member_1']


def _as_job_user(command: str) -> subprocess.CompletedProcess:
    """``command`` run over SSH on the cluster as its job user, the way the jobs reach this machine's files."""
    return subprocess.run(['ssh', '-T', '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=10', 'alml-cluster', command],
                          capture_output=True, text=True, timeout=120)


def test_job_user_runs_the_programs_but_reads_no_aiida_config(aiida_profile):
    """scripts/cluster.sh opens to the job user only what jobs run, read-only; never an AiiDA config or storage.

    The demo keeps its profile in the repository (``AIIDA_PATH=$PWD``: ``.aiida/config.json`` and the storage below
    it). Opened to others as an earlier cluster.sh left it (``chmod -R o+rX`` on the repository), it is closed again.
    """
    import shlex

    from aiida.manage.configuration import get_config

    if os.geteuid() != 0:
        pytest.fail('this test runs scripts/cluster.sh, which needs root')
    demo = REPO / '.aiida'
    created = not demo.exists()
    if created:
        demo.mkdir()
        (demo / 'config.json').write_text('{"CONFIG_VERSION": {"CURRENT": 9}, "profiles": {}}\n')
    try:
        subprocess.run(['chmod', '-R', 'o+rX', str(demo)], check=True, timeout=60)
        assert _as_job_user(f'cat {shlex.quote(str(demo / "config.json"))}').returncode == 0, 'the setup did not open it'
        script = subprocess.run(['bash', str(REPO / 'scripts' / 'cluster.sh'), '--services-only'], capture_output=True,
                                text=True, timeout=300)
        assert script.returncode == 0, script.stdout + script.stderr
        assert f'closing the AiiDA config folder {demo} to others' in script.stdout

        for config in (demo / 'config.json', pathlib.Path(get_config().filepath)):
            read = _as_job_user(f'cat {shlex.quote(str(config))}')
            assert read.returncode != 0 and 'Permission denied' in read.stderr, (config, read.stdout, read.stderr)
        listing = _as_job_user(f'ls {shlex.quote(str(demo))}')
        assert listing.returncode != 0 and 'Permission denied' in listing.stderr, listing.stderr

        # What the jobs need still works: the programs' Python and package, read-only.
        run = _as_job_user(f'{REPO}/.venv/bin/python -c "import aiida_alml.engines.label, aiida_alml.engines.md, '
                           f'aiida_alml.engines.train; print(\'imports ok\')"')
        assert run.returncode == 0 and run.stdout.strip() == 'imports ok', run.stderr
        for folder in (REPO, REPO / '.venv' / 'bin', REPO / 'aiida_alml'):
            write = _as_job_user(f'touch {shlex.quote(str(folder / "written_by_the_job_user"))}')
            assert write.returncode != 0 and 'Permission denied' in write.stderr, (folder, write.stderr)
    finally:
        if created:
            shutil.rmtree(demo)
        else:  # the profile that was there stays closed, even if the script did not run
            subprocess.run(['chmod', '-R', 'o-rwx', str(demo)], check=True, timeout=60)
