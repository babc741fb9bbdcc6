"""Calcfunctions that make the records of ``alml.active_learning``: one row per iteration, and the learning curve."""

from __future__ import annotations

from aiida import orm
from aiida.engine import calcfunction

__all__ = ('record_iteration', 'assemble_learning_curve')


@calcfunction
def record_iteration(facts: orm.Dict) -> orm.Dict:
    """The row of one loop iteration of ``alml.active_learning`` (output ``iterations.iteration_<i>``).

    ``facts`` is what the loop gathered during the iteration: seeds, training metrics, held-out errors, the
    selection's figures, labels attempted/new/failed, out-of-sample errors, calibration, wall times and the labels
    used so far. An iteration that labelled nothing (converged, or nothing chosen) gets ``labels_new`` 0. The row is
    the record campaign status, plots and comparisons read (docs/provenance.md).
    """
    row = facts.get_dict()
    for key in ('iteration', 'labels_total', 'labels_used'):
        if key not in row:
            raise ValueError(f'facts: `{key}` is missing')
    row.setdefault('labels_new', 0)
    row.setdefault('wall_time_s', {})
    return orm.Dict(row)


@calcfunction
def assemble_learning_curve(summary: orm.Dict, **rows: orm.Dict) -> orm.Dict:
    """The output ``learning_curve`` of ``alml.active_learning``: the iteration rows (``iteration_<i>``, made by
    :func:`record_iteration`) in order under ``iterations``, and the run's ``summary`` (stop reason, labels used and
    failed, calibration, final training, validation) beside them."""
    ordered = sorted(rows, key=lambda key: int(key.rsplit('_', 1)[1]))
    return orm.Dict({'iterations': [rows[key].get_dict() for key in ordered], **summary.get_dict()})
