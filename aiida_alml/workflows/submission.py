"""Submit a child process at most once, even when the daemon worker dies in the middle of the step submitting it."""

from __future__ import annotations

from aiida.common.links import LinkType
from plumpy import ProcessState

__all__ = ('submit_once',)


def submit_once(process, process_class, **inputs):
    """``process.submit(process_class, **inputs)``, unless an interrupted run of this step already submitted it.

    AiiDA stores and launches a child inside the step (``Runner.submit``) but saves the parent's checkpoint only when
    the step has returned (``Process.on_entered``). A worker killed in between makes the next worker replay the step
    from the older checkpoint, and the child was submitted twice, both copies running (measured with
    ``benchmarks/fault_injection.py``: one ``alml.ase`` job ran twice). The child is recognised by its call link
    label (``inputs['metadata']['call_link_label']``; unique per parent in this package) and reused once it was
    launched: it has a checkpoint or has already ended. A child stored but never launched (no checkpoint: no worker
    will ever run it) is marked killed, so that it does not show as waiting to run for ever, and submitted anew.
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
            process.report(f'{label}: reusing <{child.pk}>, submitted before the daemon worker was interrupted')
            return child
        stale.append(child)
    node = process.submit(process_class, **inputs)
    for child in stale:
        child.set_process_state(ProcessState.KILLED)
        child.set_process_status(f'never launched (the daemon worker was interrupted); replaced by <{node.pk}>')
        child.seal()
        process.report(f'{label}: <{child.pk}> was stored but never launched; submitted <{node.pk}> instead')
    return node
