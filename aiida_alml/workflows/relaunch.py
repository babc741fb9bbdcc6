"""Relaunch jobs that the scheduler ended from outside (``scancel``, preemption, a node drained or gone down).

The job's program did not fail, so the same inputs are submitted again (``get_builder_restart``) under the call
link label ``<label>_relaunch_<n>``; the interrupted job stays in the provenance graph beside its replacement.
"""

from __future__ import annotations

from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import CalcJob, ToContext

from aiida_alml.parsers.interruption import EXIT_JOB_INTERRUPTED
from aiida_alml.workflows.submission import submit_once

__all__ = ('RelaunchesInterruptedJobs', 'define_relaunch_input', 'was_interrupted')

#: Exit statuses meaning "ended from outside": ours, and AiiDA's node failure (set from ``sacct``'s NODE_FAIL).
INTERRUPTED = (EXIT_JOB_INTERRUPTED, CalcJob.exit_codes.ERROR_SCHEDULER_NODE_FAILURE.status)


def was_interrupted(node) -> bool:
    return isinstance(node, orm.CalcJobNode) and node.is_finished and node.exit_status in INTERRUPTED


def define_relaunch_input(spec) -> None:
    spec.input('max_relaunches', valid_type=orm.Int, default=lambda: orm.Int(3),
               validator=lambda value, _: None if value.value >= 0 else 'max_relaunches: must be >= 0',
               help='How often one job that the scheduler cancelled or lost (node failure) is submitted again.')


class RelaunchesInterruptedJobs:
    """Work-chain mixin: outline steps ``has_interrupted_jobs`` / ``relaunch_interrupted_jobs`` over the CalcJobs that
    :meth:`relaunchable_jobs` names (context keys); each relaunch replaces its context entry."""

    def relaunchable_jobs(self) -> list[str]:
        raise NotImplementedError

    def _to_relaunch(self) -> list[str]:
        counts = self.ctx.get('relaunches', {})
        limit = self.inputs.max_relaunches.value
        return [key for key in self.relaunchable_jobs()
                if was_interrupted(self.ctx[key]) and counts.get(key, 0) < limit]

    def has_interrupted_jobs(self) -> bool:
        return bool(self._to_relaunch())

    def relaunch_interrupted_jobs(self):
        counts = dict(self.ctx.get('relaunches', {}))
        futures = {}
        for key in self._to_relaunch():
            old = self.ctx[key]
            counts[key] = counts.get(key, 0) + 1
            builder = old.get_builder_restart()
            label = old.base.links.get_incoming(link_type=LinkType.CALL_CALC).one().link_label.split('_relaunch_')[0]
            builder.metadata.call_link_label = f'{label}_relaunch_{counts[key]}'
            futures[key] = submit_once(self, builder.process_class, **builder._inputs(prune=True))
            self.report(f'{label}: <{old.pk}> was ended by the scheduler ({old.exit_message}); relaunched as '
                        f'<{futures[key].pk}> (relaunch {counts[key]} of at most {self.inputs.max_relaunches.value})')
        self.ctx.relaunches = counts
        return ToContext(**futures)
