"""``alml.mace.train.base``: run ``alml.mace.train``, again when the scheduler ended the job from outside."""

from __future__ import annotations

from aiida_alml.calculations.mace_train import MaceTrainCalculation
from aiida_alml.workflows.base import JobBaseWorkChain

__all__ = ('MaceTrainBaseWorkChain',)


class MaceTrainBaseWorkChain(JobBaseWorkChain):
    """Train one MACE model (:class:`MaceTrainCalculation`, inputs in namespace ``train``); a job the scheduler
    cancelled or lost is run again unchanged (see :mod:`aiida_alml.workflows.base`)."""

    _process_class = MaceTrainCalculation
    _inputs_namespace = 'train'
