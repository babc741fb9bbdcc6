"""``alml.md.base``: run ``alml.md``, again when the scheduler ended the job from outside."""

from __future__ import annotations

from aiida_alml.calculations.md import MdCalculation
from aiida_alml.workflows.base import JobBaseWorkChain

__all__ = ('MdBaseWorkChain',)


class MdBaseWorkChain(JobBaseWorkChain):
    """Run committee MD (:class:`MdCalculation`, inputs in namespace ``md``); a job the scheduler cancelled or lost is
    run again unchanged (see :mod:`aiida_alml.workflows.base`)."""

    _process_class = MdCalculation
    _inputs_namespace = 'md'
