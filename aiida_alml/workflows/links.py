"""The call link labels of ``alml.active_learning``: written here, read back by campaign, plotting and provenance.

Every process the loop calls gets a call link label naming its step: ``<step>_<i>`` for the steps of loop iteration
``i`` (``train_0``, ``explore_0``, ``select_0``, ``label_0``, ...; ``record_<i>`` is the calcfunction that stores the
iteration's row), ``<step>_initial`` before the loop (``label_initial``, ...; also ``isolated_atoms``,
``label_isolated_atoms`` and ``e0s``), ``train_final``, ``score_final``, ``errors_final``, ``validate`` and
``learning_curve`` after it.
docs/provenance.md lists them for users.

No AiiDA import: this is plain string grammar.
"""

from __future__ import annotations

import re

__all__ = (
    'ACTIVE_LEARNING', 'E0S', 'ERRORS_FINAL', 'ISOLATED_ATOMS', 'ITERATION_STEPS', 'LABEL_INITIAL', 'LABEL_ISOLATED_ATOMS',
    'LEARNING_CURVE', 'MERGE_INITIAL', 'PERTURB_INITIAL',
    'SCORE_FINAL', 'STARTING_POINTS', 'TRAIN_FINAL', 'VALIDATE', 'iteration_label', 'parse_iteration_label',
)

#: ``process_type`` of an ``alml.active_learning`` run (its workflow entry point).
ACTIVE_LEARNING = 'aiida.workflows:alml.active_learning'

#: The steps of one loop iteration, in the order they run; each is called as ``<step>_<iteration>``. ``record`` closes
#: the iteration: the calcfunction that returns its row (output ``iterations.iteration_<i>``), the row readers use.
#: ``score`` is the job that runs the new committee on the held-out test set (beside ``explore``), ``errors`` the
#: calcfunction that compares its predictions with the test set's labels.
ITERATION_STEPS = ('train', 'score', 'errors', 'explore', 'select', 'label', 'evaluate', 'calibrate', 'merge', 'record')

#: Before the loop: exploration structures split into starting points, initial structures perturbed, labelled and
#: merged into the first training set.
STARTING_POINTS = 'starting_points'
PERTURB_INITIAL = 'perturb_initial'
LABEL_INITIAL = 'label_initial'
MERGE_INITIAL = 'merge_initial'
#: Before the loop, unless E0s are given: one atom of each element alone in a box, labelled with the campaign's
#: reference, and the E0s taken from those energies (used by every training of the campaign).
ISOLATED_ATOMS = 'isolated_atoms'
LABEL_ISOLATED_ATOMS = 'label_isolated_atoms'
E0S = 'e0s'
#: After the loop: the last training on the whole dataset, and the validation MD of the final committee.
TRAIN_FINAL = 'train_final'
SCORE_FINAL = 'score_final'
ERRORS_FINAL = 'errors_final'
VALIDATE = 'validate'
#: The calcfunction that assembles the output ``learning_curve`` from the iteration rows and the run's summary.
LEARNING_CURVE = 'learning_curve'

_ITERATION_LABEL = re.compile(r'([a-z]+)_([0-9]+)')


def iteration_label(step: str, iteration: int) -> str:
    """The call link label of ``step`` (one of :data:`ITERATION_STEPS`) in loop iteration ``iteration``."""
    if step not in ITERATION_STEPS:
        raise ValueError(f'step: must be one of {", ".join(ITERATION_STEPS)}, got {step!r}')
    if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
        raise ValueError(f'iteration: must be a non-negative integer, got {iteration!r}')
    return f'{step}_{iteration}'


def parse_iteration_label(label: str) -> tuple[str, int] | None:
    """``(step, iteration)`` of a label made by :func:`iteration_label`; None for any other label."""
    match = _ITERATION_LABEL.fullmatch(label)
    if match is None or match[1] not in ITERATION_STEPS:
        return None
    return match[1], int(match[2])
