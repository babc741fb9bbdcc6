"""The calcfunction that chooses the frames to label (:func:`select_for_labelling`: its record, summary and picks),
and the plain helpers it uses: the exploration's accounting and the physical-contact filter. The selection rules
themselves are in :mod:`aiida_alml.selection` (pure numpy)."""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import calcfunction

from aiida_alml.atoms.configurations import Configurations
from aiida_alml.data import ConfigurationSet
from aiida_alml.selection import (
    CLASS_NAMES, CONTACT_FILTERED_MODES, REASONS, frame_uncertainty, select_frames, selection_descriptors,
)
from aiida_alml.workflows.functions.descriptors import CONTACT_REACH, closest_within, gather_environments

__all__ = ('select_for_labelling', 'exploration_accounting', 'physical_contacts')


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


def physical_contacts(frames: list, training: list | None, contact_fraction: float,
                      training_closest: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Per frame its closest interatomic distance (inf: none closer than the training data's), and the threshold
    below which a frame is unphysical: ``contact_fraction`` × the closest distance in any training configuration.

    ``training_closest``: those distances of the training configurations already known (inf: none within
    :data:`~aiida_alml.workflows.functions.descriptors.CONTACT_REACH`), instead of ``training``.
    """
    from aiida_alml.engines.md import closest_distance

    if training_closest is None:
        reference = [closest_within(atoms, CONTACT_REACH) for atoms in training]
    else:
        reference = [float(d) if np.isfinite(d) else None for d in training_closest]
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
    **inputs,
) -> dict:
    """Classify every explored frame by its calibrated uncertainty and pick a diverse, capped batch to label.

    Outputs: ``record`` (ArrayData: per frame its trajectory, frame index, MD step, σ, class, counted, chosen,
    reason), ``summary`` (Dict: counts and fractions, early stops and crashes of the exploration), and when anything
    was chosen ``selected`` (the frames, unlabelled, with their origin in the metadata) and ``predictions``
    (ArrayData: the committee's mean forces, energies and per-atom σ at the chosen frames, to measure its
    out-of-sample error once they are labelled).

    ``environments`` (optional namespace): blocks of training environments described by earlier selections (their
    ``training_environments`` outputs); with ``descriptor='local'`` only the training configurations that none of
    them covers are described, and those are returned as ``training_environments``. The picks are the same with or
    without them. Every other keyword input is a trajectory of the exploration.
    """
    from ase import Atoms

    trajectories = dict(inputs)
    environments = dict(trajectories.pop('environments', None) or {})
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

    configurations = training_set.configurations
    elements = sorted(set(configurations.numbers.tolist()).union(*(set(a.numbers) for a in frames)))
    r_cut, n_bins = settings['descriptor_r_cut'], settings['descriptor_bins']
    training, training_closest, new_environments = None, None, None
    if settings['descriptor'] == 'local':
        # each training configuration is described once in a campaign: here only those no earlier block covers
        reference, training_closest, new_environments = gather_environments(
            configurations, environments, elements, r_cut, n_bins)
    else:
        reference, training = None, training_set.to_ase()
    descriptors, training_descriptors = selection_descriptors(
        frames, training, sigma_atoms, elements, kind=settings['descriptor'], r_cut=r_cut, n_bins=n_bins,
        reference=reference,
    )
    trajectory_index = np.array([o[0] for o in origin], dtype=np.int64)
    steps = np.array(steps, dtype=np.int64)
    closest, min_closest = None, 0.0
    if settings['mode'] in CONTACT_FILTERED_MODES:
        closest, min_closest = physical_contacts(frames, training, settings['contact_fraction'],
                                                 training_closest=training_closest)
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
    if new_environments is not None:
        outputs['training_environments'] = new_environments
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
