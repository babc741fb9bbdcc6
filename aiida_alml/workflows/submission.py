"""Replaying a step after the daemon worker died in it: submit each child at most once, and end the process functions
the dead worker was running."""

from __future__ import annotations

from aiida import orm
from aiida.common.links import LinkType
from plumpy import ProcessState

from aiida_alml.workflows.engine_internals import broker_has_task, mark_killed, send_continue_task

__all__ = ('EndsInterruptedFunctions', 'submit_once')

_TERMINAL_STATES = {state.value for state in (ProcessState.FINISHED, ProcessState.EXCEPTED, ProcessState.KILLED)}


def submit_once(process, process_class, **inputs):
    """``process.submit(process_class, **inputs)``, unless an interrupted run of this step already submitted it.

    AiiDA stores and launches a child inside the step (``Runner.submit``) but saves the parent's checkpoint only when
    the step has returned (``Process.on_entered``). A worker killed in between makes the next worker replay the step
    from the older checkpoint, and the child was submitted twice, both copies running (measured with
    ``benchmarks/fault_injection.py``: one ``alml.ase`` job ran twice). The child is recognised by its call link
    label (``inputs['metadata']['call_link_label']``; unique per parent in this package) and reused once it was
    launched: it has a checkpoint or has already ended. A child stored but never launched (no checkpoint: no worker
    will ever run it) is marked killed, so that it does not show as waiting to run for ever, and submitted anew.

    ``Runner.submit`` saves the child's checkpoint before it sends the broker the task that makes a worker run it, so
    a worker killed between the two leaves a child with a checkpoint and no task: reused as it is, it would wait for
    ever and the parent with it (seen once in CI: ``label_0/ase`` left "created"). Where the broker can tell (the
    embedded ZeroMQ broker keeps its queue on disk) such a child is continued by sending that task again.
    """
    label = inputs.get('metadata', {}).get('call_link_label')
    if label is None:
        return process.submit(process_class, **inputs)
    stale = []
    for link in process.node.base.links.get_outgoing(link_type=(LinkType.CALL_CALC, LinkType.CALL_WORK)).all():
        child = link.node
        if link.link_label != label:
            continue
        if child.is_terminated or child.checkpoint is not None:
            if not child.is_terminated and _task_lost(process, child.pk):
                send_continue_task(process.runner, child.pk)
                process.report(
                    f'{label}: <{child.pk}> was stored before the daemon worker was interrupted, but its task never '
                    'reached the broker; sent it again'
                )
            else:
                process.report(f'{label}: reusing <{child.pk}>, submitted before the daemon worker was interrupted')
            return child
        stale.append(child)
    node = process.submit(process_class, **inputs)
    for child in stale:
        mark_killed(child, f'never launched (the daemon worker was interrupted); replaced by <{node.pk}>')
        process.report(f'{label}: <{child.pk}> was stored but never launched; submitted <{node.pk}> instead')
    return node


def _task_lost(process, pk: int) -> bool:
    """Whether the process ``pk`` (not terminated, with a checkpoint) has no task with the broker, so no worker will
    ever run it. False wherever that cannot be known (:func:`~aiida_alml.workflows.engine_internals.broker_has_task`:
    a runner that does not submit through the broker, or RabbitMQ, which hides the tasks workers hold)."""
    if broker_has_task(process.runner, pk) is not False:
        return False
    # It may have ended (and its task been acknowledged) while the queue was read.
    state = orm.QueryBuilder().append(orm.ProcessNode, filters={'id': pk}, project='attributes.process_state').one()[0]
    return state not in _TERMINAL_STATES


class EndsInterruptedFunctions:
    """Work-chain mixin: when the work chain is loaded from its checkpoint, mark killed the process functions it called
    that never ended.

    A calcfunction runs inside the worker that runs its caller's step, without a checkpoint of its own; a worker
    killed while it runs leaves its node "running" for ever (``verdi process list`` shows it, ``verdi process kill``
    cannot reach it), while the next worker replays the step and runs the function again as a new node. A work chain
    runs in one worker at a time, so when it is loaded, a function it called that has not ended is one of those.
    Overrides plumpy's persistence hook ``load_instance_state(saved_state, load_context)`` (checked by
    tests/workflows/test_engine_internals.py).
    """

    def load_instance_state(self, saved_state, load_context):
        super().load_instance_state(saved_state, load_context)
        for child in self.node.called:
            if isinstance(child, (orm.CalcFunctionNode, orm.WorkFunctionNode)) and not child.is_terminated:
                mark_killed(child, 'interrupted: the daemon worker running it died; the step was run again')
                self.report(f'<{child.pk}> ({child.process_label}) was interrupted with the daemon worker running it; '
                            'marked killed')
