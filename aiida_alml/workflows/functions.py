"""Calcfunctions of the active-learning loop: every data transformation between processes is on record."""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import calcfunction

from aiida_alml.configurations import Configurations
from aiida_alml.data import ConfigurationSet
from aiida_alml.selection import (
    CLASS_NAMES, calibration_summary, fit_calibration_factor, frame_uncertainty, radial_descriptor, select_frames,
)

__all__ = (
    'score_committee',
    'perturb_structures', 'split_structures', 'merge_training_sets', 'select_for_labelling', 'evaluate_predictions',
)


@calcfunction
def perturb_structures(structures: ConfigurationSet, parameters: orm.Dict) -> ConfigurationSet:
    """Rattled and strained copies of ``structures`` (``count``, ``rattle_std`` Å, ``max_strain``, ``seed``)."""
    from aiida_alml.perturb import perturbed_copies

    settings = parameters.get_dict()
    images = perturbed_copies(structures.to_ase(), **settings)
    metadata = [{'perturbed_from': index % len(structures), 'iteration': 0} for index in range(len(images))]
    return ConfigurationSet(Configurations.from_ase(images, metadata=metadata, include_info=False))


@calcfunction
def split_structures(structures: ConfigurationSet) -> dict:
    """One StructureData per configuration (starting points of the MD runs), named ``s0``, ``s1``, ..."""
    return {f's{index}': structures.get_structure(index) for index in range(len(structures))}


@calcfunction
def merge_training_sets(**sets: ConfigurationSet) -> ConfigurationSet:
    """Concatenate labelled sets in the order of their (sorted) keys; every configuration keeps its metadata."""
    return ConfigurationSet(Configurations.concatenate([sets[key].configurations for key in sorted(sets)]))


def _descriptors(configurations: list, elements: list[int], settings: dict) -> np.ndarray:
    return np.array([
        radial_descriptor(atoms, elements, r_cut=settings['descriptor_r_cut'], n_bins=settings['descriptor_bins'])
        for atoms in configurations
    ])


@calcfunction
def select_for_labelling(
    settings: orm.Dict,
    calibration: orm.Float,
    iteration: orm.Int,
    training_set: ConfigurationSet,
    calibrated: orm.Bool,
    **trajectories,
) -> dict:
    """Classify every explored frame by its calibrated uncertainty and pick a diverse, capped batch to label.

    Outputs: ``record`` (ArrayData: per frame its trajectory, frame index, σ, class, chosen, reason), ``summary``
    (Dict: counts and fractions), and when anything was chosen ``selected`` (the frames, unlabelled, with their
    origin in the metadata) and ``predictions`` (ArrayData: the committee's mean forces, energies and per-atom σ at
    the chosen frames, to measure its out-of-sample error once they are labelled).
    """
    from ase import Atoms

    settings = settings.get_dict()
    keys = sorted(trajectories)
    # Each trajectory's arrays are read once; per frame we keep what selection and evaluation need.
    frames, origin, sigma_atoms, predicted = [], [], [], []
    for trajectory_index, key in enumerate(keys):
        trajectory = trajectories[key]
        positions, cells = trajectory.get_positions(), trajectory.get_cells()
        pbc = trajectory.base.attributes.get('pbc', [True, True, True])
        force_sigma = trajectory.get_array('force_sigma')
        names = trajectory.get_arraynames()
        committee = {name: trajectory.get_array(name) for name in ('forces', 'energy') if name in names}
        for frame in range(len(positions)):
            frames.append(Atoms(symbols=trajectory.symbols, positions=positions[frame], cell=cells[frame], pbc=pbc))
            origin.append((trajectory_index, frame))
            sigma_atoms.append(force_sigma[frame])
            predicted.append({name: values[frame] for name, values in committee.items()})
    uncertainty = np.array([frame_uncertainty(sigma, calibration.value) for sigma in sigma_atoms])

    elements = sorted(set(training_set.configurations.numbers.tolist()).union(*(set(a.numbers) for a in frames)))
    descriptors = _descriptors(frames, elements, settings)
    training_descriptors = _descriptors(training_set.to_ase(), elements, settings)
    result = select_frames(
        uncertainty, descriptors, settings['trust_lo'], settings['trust_hi'], settings['labels_per_iteration'],
        training_descriptors=training_descriptors, min_distance=settings['min_distance'], mode=settings['mode'],
        seed=settings['seed'] + iteration.value, calibrate_with_accurate=not calibrated.value,
    )

    record = orm.ArrayData()
    record.set_array('trajectory_index', np.array([o[0] for o in origin], dtype=np.int64))
    record.set_array('frame', np.array([o[1] for o in origin], dtype=np.int64))
    record.set_array('uncertainty', uncertainty)
    record.set_array('class', result.classes.astype(np.int64))
    record.set_array('chosen', result.chosen)
    record.set_array('reason', np.array(result.reasons, dtype='U16'))
    record.base.attributes.set_many({
        'trajectories': {str(i): {'key': key, 'uuid': trajectories[key].uuid} for i, key in enumerate(keys)},
        'class_names': list(CLASS_NAMES),
        'pick_order': [int(i) for i in result.order],
        'iteration': iteration.value,
        'calibration': calibration.value,
        'settings': settings,
    })
    summary = {
        'iteration': iteration.value,
        'frames': len(uncertainty),
        **{f'num_{name}': count for name, count in result.counts().items()},
        **{f'{name}_fraction': fraction for name, fraction in result.fractions().items()},
        'num_chosen': len(result.order),
        'num_chosen_for_calibration': result.reasons.count('calibration'),
        'num_duplicates': result.reasons.count('duplicate'),
        'max_uncertainty': float(uncertainty.max()) if len(uncertainty) else None,
    }
    outputs = {'record': record, 'summary': orm.Dict(summary)}
    if result.order:
        chosen_frames = [frames[i] for i in result.order]
        metadata = [
            {
                'iteration': iteration.value,
                'selection_index': rank,
                'trajectory': trajectories[keys[origin[i][0]]].uuid,
                'frame': origin[i][1],
                'uncertainty': float(uncertainty[i]),
            }
            for rank, i in enumerate(result.order)
        ]
        outputs['selected'] = ConfigurationSet(Configurations.from_ase(chosen_frames, metadata=metadata,
                                                                       include_info=False))
        predictions = orm.ArrayData()
        predictions.set_array('force_sigma', np.concatenate([sigma_atoms[i] for i in result.order]))
        for name in ('forces', 'energy'):
            if all(name in predicted[i] for i in result.order):
                values = [predicted[i][name] for i in result.order]
                predictions.set_array(name, np.concatenate(values) if name == 'forces' else np.array(values))
        outputs['predictions'] = predictions
    return outputs


@calcfunction
def evaluate_predictions(labelled: ConfigurationSet, selected: ConfigurationSet, predictions: orm.ArrayData) -> dict:
    """The committee's error on freshly labelled frames (out of sample by construction) and the refit calibration.

    Frames are matched through ``selection_index`` in the metadata, so frames whose labelling failed drop out.
    """
    labels = labelled.configurations
    chosen = selected.configurations
    if 'forces' not in predictions.get_arraynames():
        raise ValueError('the trajectories carried no committee forces: cannot measure the out-of-sample error')
    predicted_forces = predictions.get_array('forces')
    predicted_sigma = predictions.get_array('force_sigma')
    predicted_energy = predictions.get_array('energy') if 'energy' in predictions.get_arraynames() else None
    errors, sigmas, energy_errors, frame_errors, frame_sigmas = [], [], [], [], []
    for index, meta in enumerate(labels.metadata):
        rank = meta['selection_index']
        source = chosen.atom_slice(rank)
        error = np.linalg.norm(predicted_forces[source] - labels.forces[labels.atom_slice(index)], axis=1)
        errors.append(error)
        sigmas.append(predicted_sigma[source])
        frame_errors.append(float(error.max()))
        frame_sigmas.append(float(predicted_sigma[source].max()))
        if predicted_energy is not None:
            energy_errors.append((predicted_energy[rank] - labels.energy[index]) / labels.n_atoms[index])
    errors, sigmas = np.concatenate(errors), np.concatenate(sigmas)
    factor = fit_calibration_factor(errors, sigmas)
    result = {
        'num_frames': len(labels),
        'force_rmse': float(np.sqrt(np.mean(errors**2))),
        'force_mae': float(np.mean(errors)),
        'energy_rmse_per_atom': float(np.sqrt(np.mean(np.square(energy_errors)))) if energy_errors else None,
        'calibration': calibration_summary(errors, sigmas, factor),
    }
    pairs = orm.ArrayData()
    pairs.set_array('atom_error', errors)
    pairs.set_array('atom_sigma', sigmas)
    pairs.set_array('frame_max_error', np.array(frame_errors))
    pairs.set_array('frame_max_sigma', np.array(frame_sigmas))
    return {'metrics': orm.Dict(result), 'calibration_factor': orm.Float(factor), 'error_sigma_pairs': pairs}


@calcfunction
def score_committee(test_set: ConfigurationSet, **models) -> orm.Dict:
    """Errors of the committee mean on a labelled held-out set (energy per atom, forces), and the mean σ there.

    This loads the models where the workflow runs (the daemon machine), so keep test sets small; each file's hash is
    checked before it is loaded.
    """
    import contextlib

    from aiida_alml.engines.committee import CommitteeCalculator

    members = [models[key] for key in sorted(models)]
    with contextlib.ExitStack() as stack:
        paths = [str(stack.enter_context(model.verified_path())) for model in members]
        calculator = CommitteeCalculator(model_paths=paths, default_dtype=members[0].dtype,
                                         expected_sha256=[model.sha256 for model in members])
        configurations = test_set.configurations
        energy_errors, force_errors, sigmas = [], [], []
        for index, atoms in enumerate(test_set.to_ase()):
            reference_forces = configurations.forces[configurations.atom_slice(index)]
            atoms.calc = calculator
            energy_errors.append((atoms.get_potential_energy() - configurations.energy[index]) / len(atoms))
            force_errors.append(np.linalg.norm(atoms.get_forces() - reference_forces, axis=1))
            sigmas.append(calculator.results['force_sigma'])
    force_errors, sigmas = np.concatenate(force_errors), np.concatenate(sigmas)
    return orm.Dict({
        'num_configurations': len(test_set),
        'energy_rmse_per_atom': float(np.sqrt(np.mean(np.square(energy_errors)))),
        'force_rmse': float(np.sqrt(np.mean(force_errors**2))),
        'force_mae': float(np.mean(force_errors)),
        'mean_force_sigma': float(np.mean(sigmas)),
    })
