"""Jobs ended from outside by the scheduler (``scancel``, preemption, node failure) are relaunched, not failures.

Every job runs under a base work chain (``alml.mace.train.base``, ``alml.md.base``, ``alml.ase.base``,
``alml.aims.base``) that its parent calls under the job's name (``member_0``, ``cu_c0``, ``ase``); the attempts are
its children ``iteration_01``, ``iteration_02``, ...

Here the local ``core.direct`` scheduler runs the jobs, and a **mock of SLURM's kill** stands in for SLURM: a wrapper
around the real program that, the first time any job of the code starts, appends slurmstepd's line
``*** JOB ... CANCELLED AT ... ***`` to the job's stderr file and exits as a killed job does. The same path with a real
``scancel`` on a real SLURM cluster is tests/system/test_cluster.py.
"""

from __future__ import annotations

import pathlib
import types

import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_alml.calculations.base import EXIT_JOB_INTERRUPTED
from aiida_alml.parsers.interruption import scheduler_interruption

KILL_LINE = 'slurmstepd: error: *** JOB 4242 ON node7 CANCELLED AT 2026-12-05T06:30:01{} ***'


def _retrieved(files: dict):
    folder = orm.FolderData()
    for name, content in files.items():
        folder.base.repository.put_object_from_bytes(content.encode(), name)
    return folder


def _job(exit_status=None, sacct=None, job_id='4242'):
    """The few things of a CalcJobNode that the check reads."""
    return types.SimpleNamespace(exit_status=exit_status, get_detailed_job_info=lambda: sacct,
                                 get_job_id=lambda: job_id)


@pytest.mark.parametrize('files, node, expected', [
    ({'_scheduler-stderr.txt': KILL_LINE.format('')}, _job(), 'job 4242 on node7 cancelled at 2026-12-05T06:30:01'),
    ({'_scheduler-stderr.txt': KILL_LINE.format(' DUE TO PREEMPTION')}, _job(), 'due to preemption'),
    ({'_scheduler-stderr.txt': KILL_LINE.format(' DUE TO NODE FAILURE, SEE SLURMCTLD LOG FOR DETAILS')}, _job(),
     'due to node failure at'),
    ({'_scheduler-stderr.txt': KILL_LINE.format(' DUE TO TIME LIMIT')}, _job(), None),  # walltime: its own handlers
    ({'_scheduler-stderr.txt': 'Traceback ...\nValueError: bad', '_scheduler-stdout.txt': ''}, _job(), None),
    ({}, _job(), 'job 4242 never started'),  # cancelled while pending: no scheduler output at all
    ({}, _job(job_id=None), None),  # never submitted: not the scheduler's doing
    ({'_scheduler-stderr.txt': ''}, _job(exit_status=140), 'the node running it failed'),
    ({'_scheduler-stderr.txt': ''}, _job(sacct={'retval': 0, 'stdout': 'JobID|State|ExitCode\n42|CANCELLED by 0|0:15'}),
     'scheduler state CANCELLED by 0'),
    ({'_scheduler-stderr.txt': ''}, _job(sacct={'retval': 0, 'stdout': 'JobID|State|ExitCode\n42|FAILED|1:0'}), None),
    ({'_scheduler-stderr.txt': ''}, _job(sacct={'retval': 1, 'stdout': '', 'stderr': 'no accounting'}), None),
], ids=['scancel', 'preempted', 'node-failure-line', 'walltime', 'program-error', 'never-started', 'never-submitted',
        'aiida-node-failure', 'sacct-cancelled', 'sacct-failed', 'no-accounting'])  # fmt: skip
def test_interruptions_are_told_from_failures(files, node, expected):
    reason = scheduler_interruption(node, _retrieved(files))
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason


def _cancelled_once(code, folder: pathlib.Path, label: str):
    """``code``'s program behind the mock of SLURM's kill: the first job to start is 'cancelled', later ones run."""
    marker = folder / f'{label}.cancelled'
    script = folder / label
    script.write_text(
        '#!/bin/sh\n'
        f'if mkdir "{marker}" 2>/dev/null; then\n'
        # slurmstepd writes to the job's stderr file, not to the program's (which the job script may redirect)
        f'    echo "{KILL_LINE.format("")}" >> _scheduler-stderr.txt\n'
        '    exit 143\n'
        'fi\n'
        f'exec "{code.filepath_executable}" "$@"\n'
    )
    script.chmod(0o755)
    return orm.InstalledCode(label=label, computer=code.computer, default_calc_job_plugin=code.default_calc_job_plugin,
                             filepath_executable=str(script)).store()


def _called(node) -> dict:
    from aiida.common.links import LinkType

    links = node.base.links.get_outgoing(link_type=(LinkType.CALL_CALC, LinkType.CALL_WORK)).all()
    return {link.link_label: link.node for link in links}


@pytest.mark.slow
def test_committee_relaunches_a_cancelled_member(tiny_mace_inputs, tmp_path):
    from aiida_alml.workflows.committee import CommitteeWorkChain

    train = tiny_mace_inputs()
    train['code'] = _cancelled_once(train['code'], tmp_path, 'train-cancelled-once')
    results, node = run_get_node(CommitteeWorkChain, num_members=orm.Int(2), train=train)
    assert node.is_finished_ok, node.exit_message
    members = {label: _called(base) for label, base in _called(node).items() if label.startswith('member_')}
    assert sorted(members) == ['member_0', 'member_1']
    relaunched = [label for label, jobs in members.items() if 'iteration_02' in jobs]
    assert len(relaunched) == 1, {label: sorted(jobs) for label, jobs in members.items()}
    member = relaunched[0]
    cancelled, relaunch = members[member]['iteration_01'], members[member]['iteration_02']
    assert sorted(members[member]) == ['iteration_01', 'iteration_02']
    assert cancelled.exit_status == EXIT_JOB_INTERRUPTED
    assert 'job 4242 on node7 cancelled' in cancelled.exit_message
    assert relaunch.is_finished_ok
    # the relaunch ran the same inputs; the committee's output is the relaunched member's model
    assert relaunch.inputs.seed.value == cancelled.inputs.seed.value
    assert results['models'][member].uuid == relaunch.outputs.model.uuid
    assert sorted(results['summary'].get_dict()) == ['member_0', 'member_1']
    assert results['summary'][member]['pk'] == relaunch.pk
    logs = orm.Log.collection.get_logs_for(_called(node)[member])
    assert any('was ended by the scheduler' in log.message for log in logs)  # reported by the base work chain


@pytest.mark.slow
def test_committee_without_relaunches_names_the_cancelled_member(tiny_mace_inputs, tmp_path):
    from aiida_alml.workflows.committee import CommitteeWorkChain

    train = tiny_mace_inputs()
    train['code'] = _cancelled_once(train['code'], tmp_path, 'train-cancelled-no-relaunch')
    _, node = run_get_node(CommitteeWorkChain, num_members=orm.Int(2), train=train, max_relaunches=orm.Int(0))
    assert node.exit_status == CommitteeWorkChain.exit_codes.ERROR_MEMBER_FAILED.status
    assert f'(exit status {EXIT_JOB_INTERRUPTED})' in node.exit_message
    # the one attempt max_relaunches=0 allows: the base work chain gave up after it
    cancelled = [base for label, base in _called(node).items()
                 if label.startswith('member_') and not base.is_finished_ok]
    assert len(cancelled) == 1 and sorted(_called(cancelled[0])) == ['iteration_01']
    assert cancelled[0].inputs.max_iterations.value == 1


def test_label_relaunches_a_cancelled_batch_job(label_code, cu_images, tmp_path):
    from aiida_alml.data import ConfigurationSet
    from aiida_alml.workflows.label import LabelWorkChain

    code = _cancelled_once(label_code, tmp_path, 'label-cancelled-once')
    results, node = run_get_node(
        LabelWorkChain, structures=ConfigurationSet.from_ase(cu_images[:3]), labeller=orm.Str('ase'),
        ase={'code': code, 'calculator': orm.Dict({'name': 'emt', 'kwargs': {}})},
    )  # fmt: skip
    assert node.is_finished_ok, node.exit_message
    attempts = _called(_called(node)['ase'])
    assert attempts['iteration_01'].exit_status == EXIT_JOB_INTERRUPTED
    assert attempts['iteration_02'].is_finished_ok
    assert len(results['labelled']) == 3 and results['failures'].get_dict() == {}


@pytest.mark.slow
def test_explore_relaunches_a_cancelled_md_run(md_code, trained_committee, tmp_path):
    from ase.build import bulk

    from aiida_alml.workflows.explore import ExploreWorkChain

    _, models = trained_committee
    atoms = bulk('Cu', 'fcc', a=3.6, cubic=True).repeat((2, 1, 1))
    code = _cancelled_once(md_code, tmp_path, 'md-cancelled-once')
    results, node = run_get_node(
        ExploreWorkChain, structures={'cu': orm.StructureData(ase=atoms)},
        conditions=orm.List([{'temperature': 300.0, 'steps': 20, 'sample_interval': 5, 'seed': 1}]),
        md={'code': code, 'models': {f'member_{i}': model for i, model in enumerate(models)},
            'metadata': {'options': {'resources': {'num_machines': 1}}}},
    )  # fmt: skip
    assert node.is_finished_ok, node.exit_message
    attempts = _called(_called(node)['cu_c0'])
    assert attempts['iteration_01'].exit_status == EXIT_JOB_INTERRUPTED
    assert attempts['iteration_02'].is_finished_ok
    overview = results['overview'].get_dict()
    assert overview['cu_c0']['failed'] is False and overview['cu_c0']['pk'] == attempts['iteration_02'].pk


def test_a_negative_relaunch_count_is_refused(tiny_mace_inputs):
    from aiida_alml.workflows.committee import CommitteeWorkChain

    with pytest.raises(ValueError, match='max_relaunches: must be >= 0'):
        run_get_node(CommitteeWorkChain, num_members=orm.Int(2), train=tiny_mace_inputs(), max_relaunches=orm.Int(-1))


def test_every_base_work_chain_shares_the_interruption_handler():
    from aiida.engine import CalcJob
    from aiida.plugins import WorkflowFactory

    from aiida_alml.workflows.base import RestartsInterruptedJobs

    for entry_point in ('alml.mace.train.base', 'alml.md.base', 'alml.ase.base', 'alml.aims.base'):
        cls = WorkflowFactory(entry_point)
        assert issubclass(cls, RestartsInterruptedJobs)
        assert cls.handle_interrupted_job.__wrapped__ is RestartsInterruptedJobs.handle_interrupted_job.__wrapped__
        assert cls._process_class.exit_codes.ERROR_JOB_INTERRUPTED.status == EXIT_JOB_INTERRUPTED
    # the handler: an interruption (ours or AiiDA's node failure) is run again unchanged; nothing else is its business
    reports = []
    extras = types.SimpleNamespace(get=lambda *_: [])
    process = types.SimpleNamespace(
        report=reports.append, ctx=types.SimpleNamespace(iteration=1), node=types.SimpleNamespace(
            base=types.SimpleNamespace(extras=extras)),
        inputs=types.SimpleNamespace(max_iterations=orm.Int(4)), _considered_handlers_extra='considered_handlers',
    )  # fmt: skip
    node_failure = CalcJob.exit_codes.ERROR_SCHEDULER_NODE_FAILURE.status
    for status, handled in ((EXIT_JOB_INTERRUPTED, True), (node_failure, True), (300, False), (0, False)):
        job = types.SimpleNamespace(exit_status=status, exit_message='why', process_label='Job', pk=7)
        report = RestartsInterruptedJobs.__dict__['handle_interrupted_job'].__get__(process)(job)
        assert (report is not None) == handled, status
        assert not handled or (report.do_break and report.exit_code.status == 0)
    assert len(reports) == 2 and 'attempt 2 of at most 4' in reports[0]


def test_calculations_import_nothing_from_parsers_or_workflows():
    import aiida_alml.calculations

    for path in pathlib.Path(aiida_alml.calculations.__file__).parent.glob('*.py'):
        lines = [line.strip() for line in path.read_text().splitlines()]
        imports = [line for line in lines if line.startswith(('from ', 'import '))]
        assert not [line for line in imports if 'aiida_alml.parsers' in line or 'aiida_alml.workflows' in line], path
