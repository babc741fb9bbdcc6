"""``alml.ase.base``: run ``alml.ase``, again when the scheduler ended the job from outside."""

from __future__ import annotations

from aiida_alml.calculations.ase import AseLabelCalculation
from aiida_alml.workflows.base import JobBaseWorkChain

__all__ = ('AseBaseWorkChain',)


class AseBaseWorkChain(JobBaseWorkChain):
    """Label configurations with an ASE calculator (:class:`AseLabelCalculation`, inputs in namespace ``ase``); a job
    the scheduler cancelled or lost is run again unchanged (see :mod:`aiida_alml.workflows.base`)."""

    _process_class = AseLabelCalculation
    _inputs_namespace = 'ase'
