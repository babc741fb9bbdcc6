"""Exit codes that mean the same in every CalcJob of this package, declared once.

The CalcJobs declare them with these functions and the parsers return them by label (``self.exit_codes.<LABEL>``);
the work chains that restart jobs (:mod:`aiida_alml.workflows.base`) read :data:`EXIT_JOB_INTERRUPTED`. Codes whose
meaning is the program's own (300 missing output, 301 and the 310+ failures) stay in each CalcJob.
"""

from __future__ import annotations

__all__ = ('EXIT_JOB_INTERRUPTED', 'define_disk_full_exit_code', 'define_interruption_exit_code')

#: The scheduler ended the job before the program did (cancelled, preempted, a node that failed or went down).
EXIT_JOB_INTERRUPTED = 305


def define_interruption_exit_code(spec) -> None:
    """Declare ``ERROR_JOB_INTERRUPTED`` on a CalcJob spec (the same code and meaning for every program).

    Such a job is not the program's failure: running it again with the same inputs is the right answer, and the base
    work chains do (:class:`aiida_alml.workflows.base.RestartsInterruptedJobs`). A walltime kill is not an
    interruption: it has its own exit codes and handlers.
    """
    spec.exit_code(EXIT_JOB_INTERRUPTED, 'ERROR_JOB_INTERRUPTED', invalidates_cache=True,
                   message='The scheduler ended the job before the program finished ({reason}); running it again with '
                           'the same inputs is safe.')  # fmt: skip


def define_disk_full_exit_code(spec) -> None:
    """Declare ``ERROR_DISK_FULL`` (302) on the spec of a CalcJob whose program can report a full disk
    (:mod:`aiida_alml.engines.disk`)."""
    spec.exit_code(302, 'ERROR_DISK_FULL', message='The working directory on the compute machine is full '
                   '(no space left or over quota): {details}')
