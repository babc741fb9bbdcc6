"""Jobs the scheduler ended before the program did: cancelled, preempted, or on a node that failed or went down.

Such a job is not the program's failure and running it again with the same inputs is the right answer, so the
parsers of this package report it with one exit code, ``ERROR_JOB_INTERRUPTED`` (305, declared on every CalcJob by
:func:`aiida_alml.calculations.base.define_interruption_exit_code`), and the base work chains run it again
(:class:`aiida_alml.workflows.base.RestartsInterruptedJobs`). A walltime kill is not an interruption: it has its own
exit codes and handlers.
"""

from __future__ import annotations

import re

from aiida.engine import CalcJob
from aiida.parsers import Parser

__all__ = ('InterruptionAwareParser', 'scheduler_interruption')

SCHEDULER_STDOUT = '_scheduler-stdout.txt'
SCHEDULER_STDERR = '_scheduler-stderr.txt'
#: SLURM's job states (sacct) that mean "ended from outside", not by the program.
INTERRUPTED_STATES = ('CANCELLED', 'NODE_FAIL', 'PREEMPTED', 'BOOT_FAIL', 'REQUEUED')
#: slurmstepd's line in the job's stderr when it kills the job, e.g. ``*** JOB 42 ON node1 CANCELLED AT
#: 2026-12-05T06:00:01 ***``; ``DUE TO TIME LIMIT`` is a walltime kill, ``DUE TO PREEMPTION`` and ``DUE TO NODE
#: FAILURE, SEE SLURMCTLD LOG FOR DETAILS`` (a node set down under the job) are interruptions.
_SLURM_KILL = re.compile(r'\*\*\* (?:JOB|STEP) (\S+) ON (\S+) CANCELLED AT (\S+)(?: DUE TO ([A-Z ]+))?[^*]*\*\*\*')


def _sacct_state(node) -> str | None:
    """The job's state in the detailed job info AiiDA fetched from the scheduler (``sacct``), if it has one."""
    info = node.get_detailed_job_info() or {}
    lines = (info.get('stdout') or '').splitlines()
    if info.get('retval') != 0 or len(lines) < 2:
        return None  # no accounting (e.g. SLURM without slurmdbd) or another scheduler
    fields = dict(zip(lines[0].split('|'), lines[1].split('|')))
    return fields.get('State') or None


def scheduler_interruption(node, retrieved) -> str | None:
    """Why the scheduler ended this job early, or None when it did not (or cannot be told).

    Evidence, in order: AiiDA's own node-failure exit code; the state in ``sacct``; slurmstepd's kill line in the
    job's stderr; and a job that left neither scheduler output file (it never started: cancelled while pending).
    """
    if node.exit_status == CalcJob.exit_codes.ERROR_SCHEDULER_NODE_FAILURE.status:
        return 'the node running it failed'
    state = _sacct_state(node)
    if state and state.split()[0] in INTERRUPTED_STATES:
        return f'scheduler state {state}'
    names = set(retrieved.base.repository.list_object_names()) if retrieved is not None else set()
    if SCHEDULER_STDERR in names:
        match = _SLURM_KILL.search(retrieved.base.repository.get_object_content(SCHEDULER_STDERR, mode='r'))
        cause = (match.group(4) or '').strip() if match else None
        if match and cause != 'TIME LIMIT':
            why = f'cancelled due to {cause.lower()}' if cause else 'cancelled'
            return f'job {match.group(1)} on {match.group(2)} {why} at {match.group(3)}'
    if retrieved is not None and not names & {SCHEDULER_STDOUT, SCHEDULER_STDERR} and node.get_job_id():
        return f'job {node.get_job_id()} never started: no scheduler output was written'
    return None


class InterruptionAwareParser(Parser):
    """A parser whose failures are first checked against the scheduler: an interrupted job is not a failed program.

    Subclasses implement :meth:`parse_job` (what ``parse`` would be); a non-zero exit code it returns is replaced by
    ``ERROR_JOB_INTERRUPTED`` when the scheduler ended the job early.
    """

    def parse_job(self, **kwargs):
        raise NotImplementedError

    def parse(self, **kwargs):
        exit_code = self.parse_job(**kwargs)
        if exit_code is not None and exit_code.status:
            reason = scheduler_interruption(self.node, self.retrieved)
            if reason is not None:
                return self.exit_codes.ERROR_JOB_INTERRUPTED.format(reason=reason)
        return exit_code
