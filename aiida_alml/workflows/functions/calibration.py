"""The calcfunction that calibrates the committee's σ: one factor pooled over the recent out-of-sample (error, σ)
pairs."""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import calcfunction

from aiida_alml.selection import fit_calibration

__all__ = ('calibrate_committee',)


@calcfunction
def calibrate_committee(num_members: orm.Int, **pairs: orm.ArrayData) -> orm.Dict:
    """Calibration factor of committee σ pooled over the given out-of-sample (error, σ) pairs (one ArrayData per
    iteration, as made by :func:`evaluate_predictions`), with its bootstrap interval and frame-level coverage.

    See :func:`aiida_alml.selection.fit_calibration` for the estimator.
    """
    errors, sigmas, frames, offset = [], [], [], 0
    for key in sorted(pairs):
        node = pairs[key]
        frame = node.get_array('atom_frame')
        errors.append(node.get_array('atom_error'))
        sigmas.append(node.get_array('atom_sigma'))
        frames.append(frame + offset)
        offset += int(frame.max()) + 1 if len(frame) else 0
    result = fit_calibration(np.concatenate(errors), np.concatenate(sigmas), np.concatenate(frames),
                             num_members=num_members.value)
    return orm.Dict({**result, 'pooled': sorted(pairs)})
