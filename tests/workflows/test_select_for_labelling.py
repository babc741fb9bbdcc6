"""``select_for_labelling`` in ``weighted`` and ``random_physical`` modes on hand-made trajectories: σ-ranked picks,
unphysical frames refused, and the contact test recorded beside every other decision."""

import numpy as np
from aiida import orm
from ase.build import bulk

from aiida_alml.workflows.active_learning_inputs import SELECTION_DEFAULTS
from aiida_alml.workflows.functions import select_for_labelling


def _trajectory(frames, sigmas):
    trajectory = orm.TrajectoryData()
    trajectory.set_trajectory(
        symbols=frames[0].get_chemical_symbols(),
        positions=np.array([atoms.positions for atoms in frames]),
        cells=np.array([atoms.cell.array for atoms in frames]),
        stepids=np.arange(len(frames)) * 10,
        pbc=[True, True, True],
    )
    trajectory.set_array('force_sigma', np.array(sigmas))
    return trajectory


def _frames_with_a_crushed_one():
    cell = bulk('Cu', 'fcc', a=3.6, cubic=True).repeat(2)
    rng = np.random.default_rng(0)
    frames, sigmas = [cell.copy()], [np.full(len(cell), 0.01)]  # step 0: the start, never counted
    for sigma in (0.02, 0.3, 0.6, 0.9):  # accurate, then ever more uncertain
        atoms = cell.copy()
        atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
        frames.append(atoms)
        sigmas.append(np.full(len(atoms), sigma / 2))
        sigmas[-1][3] = sigma
    crushed = frames[-1].copy()  # the most uncertain frame of all, but with two atoms 1.2 Å apart
    crushed.positions[1] = crushed.positions[0] + [1.2, 0.0, 0.0]
    frames.append(crushed)
    sigmas.append(np.full(len(crushed), 2.0))
    return frames, sigmas


def _select(training, frames, sigmas, **settings):
    """Run the calcfunction on one trajectory with σ already calibrated (factor 1)."""
    return select_for_labelling(
        orm.Dict({**SELECTION_DEFAULTS, **settings}), orm.Float(1.0), orm.Int(0), training, orm.Bool(True),
        orm.Dict({}), t0=_trajectory(frames, sigmas))


def test_weighted_selection_ranks_by_sigma_and_refuses_unphysical_frames(emt_labelled):
    from aiida_alml.data import ConfigurationSet

    training = ConfigurationSet.from_ase(emt_labelled)
    frames, sigmas = _frames_with_a_crushed_one()
    outputs = _select(training, frames, sigmas, mode='weighted', labels_per_iteration=2)
    record = outputs['record']
    reasons = record.get_array('reason').tolist()
    assert reasons[0] == 'start' and reasons[1] == 'accurate'
    assert reasons[5] == 'unphysical' and record.get_array('closest')[5] < record.base.attributes.get('min_closest')
    assert record.base.attributes.get('pick_order') == [4, 3]  # largest σ first: novelty is alike
    assert [reasons[i] for i in (4, 3)] == ['weighted', 'weighted'] and reasons[2] == 'capped'
    assert outputs['summary']['num_chosen'] == 2
    assert [m['selection_reason'] for m in outputs['selected'].configurations.metadata] == ['weighted'] * 2


def test_random_physical_baseline_draws_every_physical_frame_but_never_the_crushed_one(emt_labelled):
    from aiida_alml.data import ConfigurationSet

    training = ConfigurationSet.from_ase(emt_labelled)
    frames, sigmas = _frames_with_a_crushed_one()
    drawn = set()
    for seed in range(6):
        record = _select(training, frames, sigmas, mode='random_physical', labels_per_iteration=2, seed=seed)['record']
        reasons = record.get_array('reason').tolist()
        assert reasons[0] == 'start' and reasons[5] == 'unphysical'
        picks = record.base.attributes.get('pick_order')
        assert len(picks) == 2 and {reasons[i] for i in picks} == {'random_physical'}
        drawn.update(picks)
    # whatever σ says: the accurate frame is drawn as readily as the uncertain ones
    assert drawn == {1, 2, 3, 4}


def test_evaluate_predictions_flags_a_label_that_jumps_in_energy(cu_images):
    """Through the real calcfunction: of six freshly labelled frames, the one whose reference energy sits 0.3 eV/atom
    away from what the committee predicted (while the others agree within a few meV/atom) is listed by its
    selection_index in `energy_jumps`."""
    from ase.calculators.emt import EMT

    from aiida_alml.data import ConfigurationSet
    from aiida_alml.workflows.functions import evaluate_predictions

    images = [atoms.copy() for atoms in cu_images[:6]]
    selected = ConfigurationSet.from_ase(images, metadata=[{'selection_index': k} for k in range(6)])
    energies, forces = [], []
    for atoms in images:
        atoms.calc = EMT()
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
    labelled = ConfigurationSet.from_ase(images, metadata=[{'selection_index': k} for k in range(6)])
    rng = np.random.default_rng(0)
    predicted = np.array(energies) + rng.normal(0.0, 0.003, 6) * [len(a) for a in images]
    predicted[4] += 0.3 * len(images[4])
    predictions = orm.ArrayData()
    predictions.set_array('forces', np.concatenate(forces) + 0.01)
    predictions.set_array('force_sigma', np.full(sum(len(a) for a in images), 0.02))
    predictions.set_array('energy', predicted)
    metrics = evaluate_predictions(labelled, selected, predictions)['metrics'].get_dict()
    assert metrics['energy_jumps'] == [4]
