"""Calcfunctions of the active-learning loop: every data transformation between processes is on record."""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import calcfunction

from aiida_alml.atoms.configurations import Configurations
from aiida_alml.data import ConfigurationSet
from aiida_alml.selection import (
    CLASS_NAMES, CONTACT_FILTERED_MODES, REASONS, energy_jumps, fit_calibration, frame_uncertainty, select_frames,
    selection_descriptors,
)

__all__ = (
    'isolated_atoms', 'isolated_atom_e0s', 'score_predictions',
    'perturb_structures', 'split_structures', 'merge_training_sets', 'select_for_labelling', 'evaluate_predictions',
    'calibrate_committee', 'exploration_accounting', 'record_iteration', 'assemble_learning_curve',
)


@calcfunction
def perturb_structures(structures: ConfigurationSet, parameters: orm.Dict) -> ConfigurationSet:
    """Rattled and strained copies of ``structures`` (``count``, ``rattle_std`` Å, ``max_strain``, ``seed``)."""
    from aiida_alml.atoms.perturb import perturbed_copies

    settings = parameters.get_dict()
    images = perturbed_copies(structures.to_ase(), **settings)
    metadata = [{'perturbed_from': index % len(structures), 'iteration': 0} for index in range(len(images))]
    return ConfigurationSet(Configurations.from_ase(images, metadata=metadata, include_info=False))


@calcfunction
def isolated_atoms(elements: orm.List, box: orm.Float) -> ConfigurationSet:
    """One atom of each element alone in a cubic box of edge ``box`` Å, not periodic: the configurations whose
    reference energies are the E0s (MACE's ``config_type: IsolatedAtom``)."""
    from ase import Atoms

    from aiida_alml.calculations.mace_train import ISOLATED_ATOM

    edge = box.value
    images = [Atoms(element, positions=[[edge / 2] * 3], cell=[edge] * 3, pbc=False) for element in elements.get_list()]
    metadata = [{'config_type': ISOLATED_ATOM} for _ in images]
    return ConfigurationSet(Configurations.from_ase(images, metadata=metadata, include_info=False))


@calcfunction
def isolated_atom_e0s(labelled: ConfigurationSet, elements: orm.List) -> orm.Dict:
    """E0 per element ({symbol: eV}) from the reference energies of its isolated atom: the E0s of every training of a
    campaign. Raises when an element has no energy (its calculation failed)."""
    from aiida_alml.calculations.mace_train import isolated_atom_energies

    e0s = isolated_atom_energies(labelled.configurations)  # labelling keeps the IsolatedAtom metadata of its inputs
    missing = sorted(set(elements.get_list()) - set(e0s))
    if missing:
        raise ValueError(f'no isolated-atom energy for {missing}')
    return orm.Dict({element: e0s[element] for element in sorted(e0s)})


@calcfunction
def split_structures(structures: ConfigurationSet) -> dict:
    """One StructureData per configuration (starting points of the MD runs), named ``s0``, ``s1``, ..."""
    return {f's{index}': structures.get_structure(index) for index in range(len(structures))}


@calcfunction
def merge_training_sets(**sets: ConfigurationSet) -> ConfigurationSet:
    """Concatenate labelled sets in the order of their (sorted) keys; every configuration keeps its metadata.

    Refuses sets whose labels were computed with different settings (see :mod:`aiida_alml.label_settings`).
    """
    from aiida_alml.label_settings import labels_mismatch

    keys = sorted(sets)
    for key in keys[1:]:
        problem = labels_mismatch(sets[keys[0]].configurations.metadata, sets[key].configurations.metadata)
        if problem:
            raise ValueError(f'refusing to merge {keys[0]} and {key}: {problem}')
    return ConfigurationSet(Configurations.concatenate([sets[key].configurations for key in keys]))


def exploration_accounting(overview: dict) -> dict:
    """Runs that stopped early or crashed, and the frames they never sampled (which count as failed frames).

    A run of ``steps`` steps sampled every ``sample_interval`` steps should give ceil(steps / sample_interval) + 1
    frames (step 0 included); whatever an early stop or a crash left unsampled is ``frames_missing``.
    """
    from aiida_alml.engines.md import validate_parameters

    runs = {'runs': len(overview), 'runs_stopped_early': 0, 'runs_crashed': 0, 'frames_missing': 0, 'stops': {}}
    for label, entry in sorted(overview.items()):
        parameters = validate_parameters(dict(entry['parameters']))
        expected = -(-parameters['steps'] // parameters['sample_interval']) + 1
        if entry.get('failed'):
            runs['runs_crashed'] += 1
            runs['frames_missing'] += expected
            runs['stops'][label] = f'crashed (exit status {entry.get("exit_status")})'
            continue
        done = entry['steps_done']
        sampled = -(-done // parameters['sample_interval']) + 1
        if entry['stop_reason'] != 'completed':
            runs['runs_stopped_early'] += 1
            # the frame that triggered a close-contact or non-finite stop was not kept
            kept = sampled if (entry.get('stop_kind') or 'force_sigma') == 'force_sigma' else sampled - 1
            runs['frames_missing'] += expected - kept
            runs['stops'][label] = entry['stop_reason']
    return runs


def physical_contacts(frames: list, training: list, contact_fraction: float) -> tuple[np.ndarray, float]:
    """Per frame its closest interatomic distance (inf: none closer than the training data's), and the threshold
    below which a frame is unphysical: ``contact_fraction`` × the closest distance in any training configuration."""
    from aiida_alml.engines.md import closest_distance

    reference = [closest_distance(atoms, 6.0) for atoms in training]
    reference = min((d for d in reference if d is not None), default=None)
    if reference is None:
        return np.full(len(frames), np.inf), 0.0
    found = [closest_distance(atoms, reference) for atoms in frames]
    return np.array([np.inf if d is None else d for d in found]), contact_fraction * reference


@calcfunction
def select_for_labelling(
    settings: orm.Dict,
    calibration: orm.Float,
    iteration: orm.Int,
    training_set: ConfigurationSet,
    calibrated: orm.Bool,
    exploration_overview: orm.Dict,
    **trajectories,
) -> dict:
    """Classify every explored frame by its calibrated uncertainty and pick a diverse, capped batch to label.

    Outputs: ``record`` (ArrayData: per frame its trajectory, frame index, MD step, σ, class, counted, chosen,
    reason), ``summary`` (Dict: counts and fractions, early stops and crashes of the exploration), and when anything
    was chosen ``selected`` (the frames, unlabelled, with their origin in the metadata) and ``predictions``
    (ArrayData: the committee's mean forces, energies and per-atom σ at the chosen frames, to measure its
    out-of-sample error once they are labelled).
    """
    from ase import Atoms

    settings = settings.get_dict()
    keys = sorted(trajectories)
    # Each trajectory's arrays are read once; per frame we keep what selection and evaluation need.
    frames, origin, steps, sigma_atoms, predicted = [], [], [], [], []
    for trajectory_index, key in enumerate(keys):
        trajectory = trajectories[key]
        positions, cells = trajectory.get_positions(), trajectory.get_cells()
        steps.extend(int(step) for step in trajectory.get_stepids())
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
    training = training_set.to_ase()
    descriptors, training_descriptors = selection_descriptors(
        frames, training, sigma_atoms, elements, kind=settings['descriptor'],
        r_cut=settings['descriptor_r_cut'], n_bins=settings['descriptor_bins'],
    )
    trajectory_index = np.array([o[0] for o in origin], dtype=np.int64)
    steps = np.array(steps, dtype=np.int64)
    closest, min_closest = None, 0.0
    if settings['mode'] in CONTACT_FILTERED_MODES:
        closest, min_closest = physical_contacts(frames, training, settings['contact_fraction'])
    result = select_frames(
        uncertainty, descriptors, settings['trust_lo'], settings['trust_hi'], settings['labels_per_iteration'],
        training_descriptors=training_descriptors, min_distance=settings['min_distance'], mode=settings['mode'],
        seed=settings['seed'] + iteration.value, calibrate_with_accurate=not calibrated.value,
        trajectory=trajectory_index, step=steps, rescue_failed=settings['rescue_failed'],
        closest=closest, min_closest=min_closest,
    )
    runs = exploration_accounting(exploration_overview.get_dict())

    record = orm.ArrayData()
    record.set_array('trajectory_index', trajectory_index)
    record.set_array('frame', np.array([o[1] for o in origin], dtype=np.int64))
    record.set_array('step', steps)
    record.set_array('uncertainty', uncertainty)
    record.set_array('class', result.classes.astype(np.int64))
    record.set_array('counted', result.counted)
    record.set_array('chosen', result.chosen)
    record.set_array('reason', np.array(result.reasons, dtype='U16'))
    if closest is not None:
        record.set_array('closest', closest)
    record.base.attributes.set_many({
        'trajectories': {str(i): {'key': key, 'uuid': trajectories[key].uuid} for i, key in enumerate(keys)},
        'class_names': list(CLASS_NAMES),
        'pick_order': [int(i) for i in result.order],
        'iteration': iteration.value,
        'calibration': calibration.value,
        'min_closest': min_closest,
        'settings': settings,
        'reasons': {reason: REASONS[reason] for reason in sorted(set(result.reasons))},
    })
    counts = result.counts()
    summary = {
        'iteration': iteration.value,
        'frames': len(uncertainty),
        'frames_counted': int(result.counted.sum()),
        'num_starts': result.reasons.count('start'),
        'num_known': result.reasons.count('known'),
        **{f'num_{name}': count for name, count in counts.items()},
        **{f'{name}_fraction': fraction for name, fraction in result.fractions(runs['frames_missing']).items()},
        **{key: runs[key] for key in ('runs', 'runs_stopped_early', 'runs_crashed', 'frames_missing')},
        'early_stops': runs['stops'],
        'num_chosen': len(result.order),
        'num_chosen_for_calibration': result.reasons.count('calibration'),
        'num_rescued': result.reasons.count('rescue'),
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
                'selection_reason': result.reasons[i],
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
