"""Labels whose energy jumps away from the rest of their batch: a reference that converged to another electronic
state (a different spin or charge distribution, an SCF that found another minimum) on one frame.

The committee's energy error per atom on freshly labelled frames is similar across a batch: the frames come from
the same exploration and the same model. A frame whose error sits far from the batch's median, in units of the
batch's own spread, and by more than a physical floor, is flagged. Flagged frames are kept (a flag is a question for
the user, not a verdict) and listed in the learning curve.
"""

from __future__ import annotations

import numpy as np

__all__ = ('ENERGY_JUMP_FLOOR', 'ENERGY_JUMP_SPREADS', 'energy_jumps')

#: eV/atom: smaller departures are within what a tiny committee gets wrong anyway.
ENERGY_JUMP_FLOOR = 0.05
#: How many robust standard deviations (1.4826 x median absolute deviation) from the median make a jump.
ENERGY_JUMP_SPREADS = 6.0


def energy_jumps(errors_per_atom, floor: float = ENERGY_JUMP_FLOOR, spreads: float = ENERGY_JUMP_SPREADS) -> list[int]:
    """Positions of the frames whose energy error per atom (committee − reference, eV/atom) jumps from the rest."""
    errors = np.asarray(errors_per_atom, dtype=float)
    if len(errors) < 3:
        return []  # no "rest" to compare with
    median = np.median(errors)
    spread = 1.4826 * np.median(np.abs(errors - median))
    departure = np.abs(errors - median)
    return [int(i) for i in np.flatnonzero((departure > floor) & (departure > spreads * spread))]
