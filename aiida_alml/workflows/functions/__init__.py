"""Calcfunctions of the work chains: every data transformation between processes is on record.

One module per kind of thing they make (a calcfunction's name and call link label are what the provenance graph
shows; its module is only where the code lives):

* :mod:`.datasets`: sets of configurations (perturbed copies, MD starting points, merged training sets);
* :mod:`.e0s`: the isolated atoms and the E0s from their labels;
* :mod:`.labels`: the labelled sets of ``alml.label`` (merged, failures recorded, settings declared);
* :mod:`.selection`: the frames chosen for labelling, with their record and summary;
* :mod:`.descriptors`: the local environments of the training configurations, described once and kept as nodes;
* :mod:`.errors`: the committee's errors, out of sample and on the held-out test set;
* :mod:`.calibration`: the calibration factor of σ;
* :mod:`.records`: the row of each loop iteration and the learning curve.

Calcfunctions of a single labeller (``fixed_kpoints``, ``split_configurations``, ``parse_shell_labels``) live with
that labeller in :mod:`aiida_alml.workflows.labellers`.
"""

from aiida_alml.workflows.functions.calibration import calibrate_committee
from aiida_alml.workflows.functions.datasets import merge_training_sets, perturb_structures, split_structures
from aiida_alml.workflows.functions.descriptors import describe_configurations, gather_environments
from aiida_alml.workflows.functions.e0s import isolated_atom_e0s, isolated_atoms
from aiida_alml.workflows.functions.errors import (
    FORCE_ERROR_CONVENTION, evaluate_predictions, force_errors, score_predictions,
)
from aiida_alml.workflows.functions.labels import declare_label_settings, merge_labelled, record_failures
from aiida_alml.workflows.functions.records import assemble_learning_curve, record_iteration
from aiida_alml.workflows.functions.selection import exploration_accounting, physical_contacts, select_for_labelling

__all__ = (
    'isolated_atoms', 'isolated_atom_e0s', 'score_predictions',
    'perturb_structures', 'split_structures', 'merge_training_sets', 'select_for_labelling', 'evaluate_predictions',
    'calibrate_committee', 'exploration_accounting', 'record_iteration', 'assemble_learning_curve',
    'merge_labelled', 'record_failures', 'declare_label_settings',
    'FORCE_ERROR_CONVENTION', 'force_errors', 'physical_contacts', 'describe_configurations', 'gather_environments',
)
