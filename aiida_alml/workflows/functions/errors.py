"""Calcfunctions that measure the committee's errors: on freshly labelled frames (:func:`evaluate_predictions`, out of
sample, with the (error, σ) pairs calibration pools) and on the held-out test set (:func:`score_predictions`)."""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import calcfunction

from aiida_alml.data import ConfigurationSet
from aiida_alml.selection import energy_jumps

__all__ = ('FORCE_ERROR_CONVENTION', 'force_errors', 'evaluate_predictions', 'score_predictions')


#: How every force RMSE/MAE we report is taken (as MACE's logs and most papers do); σ and calibration use vector norms.
FORCE_ERROR_CONVENTION = 'per Cartesian component'


def force_errors(differences: np.ndarray) -> dict:
    """RMSE and MAE over Cartesian components of force differences (n_atoms, 3)."""
    differences = np.asarray(differences, dtype=float)
    return {'force_rmse': float(np.sqrt(np.mean(differences**2))), 'force_mae': float(np.mean(np.abs(differences))),
            'force_error_convention': FORCE_ERROR_CONVENTION}


@calcfunction
def evaluate_predictions(labelled: ConfigurationSet, selected: ConfigurationSet, predictions: orm.ArrayData) -> dict:
    """The committee's error on freshly labelled frames (out of sample by construction), with the (error, σ) pairs
    that calibration pools over iterations.

    Frames are matched through ``selection_index`` in the metadata, so frames whose labelling failed drop out.
    """
    labels = labelled.configurations
    chosen = selected.configurations
    if 'forces' not in predictions.get_arraynames():
        raise ValueError('the trajectories carried no committee forces: cannot measure the out-of-sample error')
    predicted_forces = predictions.get_array('forces')
    predicted_sigma = predictions.get_array('force_sigma')
    predicted_energy = predictions.get_array('energy') if 'energy' in predictions.get_arraynames() else None
    differences, errors, sigmas, frame_of_atom, energy_errors, reasons = [], [], [], [], [], []
    for index, meta in enumerate(labels.metadata):
        rank = meta['selection_index']
        source = chosen.atom_slice(rank)
        difference = predicted_forces[source] - labels.forces[labels.atom_slice(index)]
        error = np.linalg.norm(difference, axis=1)
        differences.append(difference)
        errors.append(error)
        sigmas.append(predicted_sigma[source])
        frame_of_atom.append(np.full(len(error), index))
        reasons.append(meta.get('selection_reason', 'chosen'))
        if predicted_energy is not None:
            energy_errors.append((predicted_energy[rank] - labels.energy[index]) / labels.n_atoms[index])
    errors, sigmas, frame_of_atom = np.concatenate(errors), np.concatenate(sigmas), np.concatenate(frame_of_atom)
    result = {
        'num_frames': len(labels),
        **force_errors(np.concatenate(differences)),
        'energy_rmse_per_atom': float(np.sqrt(np.mean(np.square(energy_errors)))) if energy_errors else None,
        # Frames whose label may come from another electronic state (selection_index of each): kept, but flagged.
        'energy_jumps': [labels.metadata[i]['selection_index'] for i in energy_jumps(energy_errors)],
    }
    pairs = orm.ArrayData()
    pairs.set_array('atom_error', errors)
    pairs.set_array('atom_sigma', sigmas)
    pairs.set_array('atom_frame', frame_of_atom)
    starts = np.flatnonzero(np.r_[True, np.diff(frame_of_atom) != 0])  # atoms are grouped by frame, in order
    pairs.set_array('frame_max_error', np.maximum.reduceat(errors, starts))
    pairs.set_array('frame_max_sigma', np.maximum.reduceat(sigmas, starts))
    pairs.base.attributes.set('selection_reasons', reasons)
    return {'metrics': orm.Dict(result), 'error_sigma_pairs': pairs}


@calcfunction
def score_predictions(test_set: ConfigurationSet, predictions: orm.ArrayData) -> orm.Dict:
    """Errors of the committee mean on a labelled held-out set (energy per atom, forces), and the mean σ there, from
    the committee's ``predictions`` on it (an ``alml.score`` job: the models run there, not here)."""
    configurations = test_set.configurations
    sizes = np.asarray(configurations.n_atoms)
    energy_errors = (predictions.get_array('energy') - np.asarray(configurations.energy)) / sizes
    differences = predictions.get_array('forces') - np.asarray(configurations.forces)
    return orm.Dict({
        'num_configurations': len(test_set),
        'energy_rmse_per_atom': float(np.sqrt(np.mean(np.square(energy_errors)))),
        # The signed mean shows a constant offset (wrong E0s, an energy never learned) that the RMSE mixes in.
        'energy_mean_error_per_atom': float(np.mean(energy_errors)),
        **force_errors(differences),
        'mean_force_sigma': float(np.mean(predictions.get_array('force_sigma'))),
    })
