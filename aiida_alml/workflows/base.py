"""What the base work chains share: one handler for jobs the scheduler ended from outside, children launched once.

Every CalcJob of this package runs under a ``BaseRestartWorkChain``, as aiida-quantumespresso's ``PwCalculation`` runs
under ``PwBaseWorkChain``: ``alml.mace.train.base``, ``alml.md.base``, ``alml.ase.base``, ``alml.shell.base``
(:class:`JobBaseWorkChain` with nothing of their own yet) and ``alml.aims.base`` (with FHI-aims' own handlers). A job
the scheduler cancelled, preempted or lost with its node (``ERROR_JOB_INTERRUPTED``, 305, or AiiDA's ``ERROR_SCHEDULER_NODE_FAILURE``) is run
again with the same inputs by :meth:`RestartsInterruptedJobs.handle_interrupted_job`; every attempt is a CalcJob of
its own under the base work chain (call link ``iteration_01``, ``iteration_02``, ...), reported by the handler.

The work chains that launch many jobs (committee, explore, label, stability) keep exposing the CalcJob's inputs and
build the base work chain's inputs with :func:`base_inputs`; their ``max_relaunches`` (:func:`define_relaunch_input`)
is the base work chain's ``max_iterations`` less one. :func:`job_failure` says which process explains a failed child.
"""

from __future__ import annotations

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import (
    BaseRestartWorkChain, CalcJob, ExitCode, ProcessHandlerReport, ToContext, append_, process_handler, while_,
)

from aiida_alml.calculations.base import EXIT_JOB_INTERRUPTED
from aiida_alml.workflows.engine_internals import open_handler_record, wrap_bare_dict_inputs
from aiida_alml.workflows.submission import EndsInterruptedFunctions, submit_once

__all__ = (
    'INTERRUPTED', 'JobBaseWorkChain', 'RestartsInterruptedJobs', 'base_inputs', 'define_relaunch_input',
    'job_failure', 'last_job',
)

#: Exit statuses meaning "ended from outside": ours, and AiiDA's node failure (set from ``sacct``'s NODE_FAIL).
INTERRUPTED = (EXIT_JOB_INTERRUPTED, CalcJob.exit_codes.ERROR_SCHEDULER_NODE_FAILURE.status)
#: The exit statuses with which ``BaseRestartWorkChain`` gives up on its job (max iterations, unhandled failure,
#: the job excepted or killed): the job's own exit status says more.
_GAVE_UP = tuple(BaseRestartWorkChain.exit_codes[label].status for label in (
    'ERROR_MAXIMUM_ITERATIONS_EXCEEDED', 'ERROR_UNHANDLED_FAILURE', 'ERROR_SUB_PROCESS_EXCEPTED',
    'ERROR_SUB_PROCESS_KILLED'))


class RestartsInterruptedJobs(EndsInterruptedFunctions, BaseRestartWorkChain):
    """``BaseRestartWorkChain`` that launches each attempt with :func:`submit_once` (a daemon worker killed in
    ``run_process`` does not make the replayed step submit the job twice) and runs a job the scheduler ended from
    outside again, unchanged."""

    def run_process(self):
        """``BaseRestartWorkChain.run_process``, with the job submitted through :func:`submit_once`: a copy of
        aiida-core 2.9's (tests/workflows/test_engine_internals.py fails when aiida-core's changes; its private parts
        are in :mod:`aiida_alml.workflows.engine_internals`)."""
        self.ctx.iteration += 1
        inputs = self.ctx.inputs
        inputs.setdefault('metadata', {})['call_link_label'] = f'iteration_{self.ctx.iteration:02d}'
        inputs = wrap_bare_dict_inputs(self, inputs)
        node = submit_once(self, self.process_class, **inputs)
        open_handler_record(self)
        self.report(f'launching {self.ctx.process_name}<{node.pk}> iteration #{self.ctx.iteration}')
        return ToContext(children=append_(node))

    @process_handler(priority=610, exit_codes=[ExitCode(status) for status in INTERRUPTED])
    def handle_interrupted_job(self, node):
        """The scheduler ended the job from outside (``scancel``, preemption, node failure): run it again unchanged."""
        self.report(f'{node.process_label}<{node.pk}> was ended by the scheduler ({node.exit_message}): running it '
                    f'again with the same inputs (attempt {self.ctx.iteration + 1} of at most '
                    f'{self.inputs.max_iterations.value})')
        return ProcessHandlerReport(True)


class JobBaseWorkChain(RestartsInterruptedJobs):
    """Run ``_process_class`` with the inputs in namespace ``_inputs_namespace``; return its outputs.

    Subclasses set the two class attributes and add process handlers of their own.
    """

    _inputs_namespace: str = ''

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(cls._process_class, namespace=cls._inputs_namespace)
        spec.outline(
            cls.setup,
            while_(cls.should_run_process)(
                cls.run_process,
                cls.inspect_process,
            ),
            cls.results,
        )
        spec.expose_outputs(cls._process_class)

    def setup(self):
        super().setup()
        self.ctx.inputs = AttributeDict(self.exposed_inputs(self._process_class, self._inputs_namespace))


def define_relaunch_input(spec) -> None:
    """The ``max_relaunches`` input of a work chain that launches base work chains (their ``max_iterations`` - 1)."""
    spec.input('max_relaunches', valid_type=orm.Int, default=lambda: orm.Int(3),
               validator=lambda value, _: None if value.value >= 0 else 'max_relaunches: must be >= 0',
               help='How often one job that the scheduler cancelled or lost (node failure) is submitted again.')


def base_inputs(namespace: str, job_inputs: dict, max_relaunches: orm.Int, call_link_label: str) -> dict:
    """The inputs of a base work chain that runs one job with ``job_inputs`` (the CalcJob's inputs, in the base work
    chain's ``namespace``), relaunching it at most ``max_relaunches`` times; called ``call_link_label``."""
    return {
        namespace: job_inputs,
        'max_iterations': orm.Int(max_relaunches.value + 1),
        'metadata': {'call_link_label': call_link_label},
    }


def last_job(node) -> orm.CalcJobNode | None:
    """The CalcJob a base work chain ``node`` launched last (``node`` itself if it is a CalcJob); None if none."""
    if isinstance(node, orm.CalcJobNode):
        return node
    jobs = [child for child in node.called if isinstance(child, orm.CalcJobNode)]
    return max(jobs, key=lambda job: job.pk) if jobs else None


def job_failure(node):
    """The process whose exit status explains why ``node`` (a base work chain or a CalcJob) did not finish ok: its last
    job when the base work chain gave up on that job, else ``node`` itself (a handler's own exit code, or no job)."""
    if node.is_finished_ok or not isinstance(node, orm.WorkflowNode):
        return node
    if node.is_finished and node.exit_status not in _GAVE_UP:
        return node
    job = last_job(node)
    return job if job is not None and not job.is_finished_ok else node
