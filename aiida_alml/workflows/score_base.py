"""``alml.score.base``: run ``alml.score``, again when the scheduler ended the job from outside."""

from __future__ import annotations

from aiida_alml.calculations.score import ScoreCalculation
from aiida_alml.workflows.base import JobBaseWorkChain

__all__ = ('ScoreBaseWorkChain',)


class ScoreBaseWorkChain(JobBaseWorkChain):
    """Evaluate a committee on labelled frames (:class:`ScoreCalculation`, inputs in namespace ``score``); a job the
    scheduler cancelled or lost is run again unchanged (see :mod:`aiida_alml.workflows.base`)."""

    _process_class = ScoreCalculation
    _inputs_namespace = 'score'
