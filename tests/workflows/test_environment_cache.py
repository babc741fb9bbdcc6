"""``select_for_labelling`` describes each training configuration once in a campaign: the environments it described
come back as ``training_environments`` and, passed to the next selection, spare it describing them again, with the
same picks as describing the whole training set every time."""

import numpy as np
import pytest
from aiida import orm
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from aiida_alml.selection import descriptors as environment_descriptors
from aiida_alml.workflows.active_learning_inputs import SELECTION_DEFAULTS
from aiida_alml.workflows.functions import gather_environments, merge_training_sets, select_for_labelling


def _copper(count, seed, rattle=0.08, labelled=True):
    """Rattled 32-atom copper cells, labelled with EMT."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        atoms = bulk('Cu', 'fcc', a=3.61, cubic=True).repeat(2)
        atoms.positions += rng.normal(0.0, rattle, atoms.positions.shape)
        if labelled:
            atoms.calc = EMT()
            atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        images.append(atoms)
    return images


def _trajectory(frames, seed):
    rng = np.random.default_rng(seed)
    trajectory = orm.TrajectoryData()
    trajectory.set_trajectory(symbols=frames[0].get_chemical_symbols(),
                              positions=np.array([atoms.positions for atoms in frames]),
                              cells=np.array([atoms.cell.array for atoms in frames]),
                              stepids=np.arange(len(frames)) * 10, pbc=[True, True, True])
    sigmas = rng.uniform(0.01, 0.12, (len(frames), len(frames[0])))
    sigmas[0] = 0.01
    trajectory.set_array('force_sigma', sigmas)
    return trajectory.store()


@pytest.fixture
def described(monkeypatch):
    """Counts the configurations whose local descriptors are computed (by their number of atoms: frames and training
    cells are told apart by size)."""
    counted = []
    original = environment_descriptors.local_descriptors

    def counting(atoms, *args, **kwargs):
        counted.append(len(atoms))
        return original(atoms, *args, **kwargs)

    monkeypatch.setattr(environment_descriptors, 'local_descriptors', counting)
    return counted


def _select(settings, iteration, training, trajectories, environments=None):
    inputs = dict(trajectories)
    if environments:
        inputs['environments'] = environments
    return select_for_labelling(orm.Dict(settings), orm.Float(1.0), orm.Int(iteration), training, orm.Bool(True),
                                orm.Dict({}), **inputs)


def _picks(outputs):
    record = outputs['record']
    return (record.base.attributes.get('pick_order'), record.get_array('reason').tolist(),
            record.get_array('closest').tolist() if 'closest' in record.get_arraynames() else None)


@pytest.mark.parametrize('mode', ['fps', 'weighted'])
def test_a_growing_training_set_is_described_once_with_the_same_picks(described, mode):
    from aiida_alml.data import ConfigurationSet

    settings = {**SELECTION_DEFAULTS, 'mode': mode, 'labels_per_iteration': 3, 'min_distance': 0.5}
    training = ConfigurationSet.from_ase(_copper(5, seed=0)).store()
    environments = {}
    for iteration, new_labels in enumerate((0, 3, 2)):
        if new_labels:
            added = ConfigurationSet.from_ase(_copper(new_labels, seed=10 + iteration)).store()
            training = merge_training_sets(a_previous=training, b_new=added)
        # a 3-atom-larger cell tells frames apart from training configurations in the count
        frames = [atoms.repeat((2, 1, 1)) for atoms in _copper(6, seed=20 + iteration, rattle=0.12, labelled=False)]
        trajectories = {'s0_c0': _trajectory(frames, seed=iteration)}

        described.clear()
        without = _select(settings, iteration, training, trajectories)
        assert described.count(32) == len(training)  # without blocks: the whole training set, every iteration

        described.clear()
        outputs = _select(settings, iteration, training, trajectories, environments=dict(environments))
        expected = len(training) if iteration == 0 else new_labels
        assert described.count(32) == expected  # with them: only what the last iteration added
        assert described.count(64) == len(frames)
        block = outputs['training_environments']
        assert len(block.get_array('fingerprint')) == expected and block.get_array('rows').shape[0] == 32 * expected
        assert _picks(outputs) == _picks(without)
        environments[f'iteration_{iteration}'] = block

    # everything known: nothing described but the frames, and no new block
    described.clear()
    outputs = _select(settings, 3, training, trajectories, environments=dict(environments))
    assert described.count(32) == 0 and 'training_environments' not in outputs
    assert _picks(outputs) == _picks(_select(settings, 3, training, trajectories))
    incoming = {link.link_label for link in outputs['record'].creator.base.links.get_incoming().all()}
    assert {f'environments__iteration_{i}' for i in range(3)} <= incoming  # the rows used are on record


def test_blocks_of_other_settings_or_fewer_elements(described):
    from aiida_alml.data import ConfigurationSet

    training = ConfigurationSet.from_ase(_copper(4, seed=5)).store()
    configurations = training.configurations
    (reference, closest, block) = gather_environments(configurations, {}, [29], 5.0, 32)
    assert block is not None and len(described) == 4
    block.store()

    described.clear()
    # laid out for a wider element list (a frame brought gold): the rows of describing with it
    (rows, numbers), again, none = gather_environments(configurations, {'a': block}, [29, 79], 5.0, 32)
    assert none is None and not described
    fresh = environment_descriptors.local_environments(training.to_ase(), [29, 79], 5.0, 32)
    assert np.array_equal(rows, fresh[0]) and np.array_equal(numbers, fresh[1]) and np.array_equal(closest, again)

    # another cutoff: the block does not describe these environments, they are described anew
    described.clear()
    (rows, _), _, other = gather_environments(configurations, {'a': block}, [29], 4.0, 32)
    assert other is not None and len(described) == 4
    assert np.array_equal(rows, environment_descriptors.local_environments(training.to_ase(), [29], 4.0, 32)[0])


def test_closest_within_finds_what_the_wide_search_finds():
    from ase import Atoms

    from aiida_alml.engines.md import closest_distance
    from aiida_alml.workflows.functions.descriptors import closest_within

    bulk_cells = [atoms.repeat((1, 1, 2)) for atoms in _copper(3, seed=8, labelled=False)]
    far_dimer = Atoms('Cu2', positions=[[0, 0, 0], [4.5, 0, 0]], cell=[15, 15, 15], pbc=True)  # only the 6 Å search
    lone = Atoms('Cu', positions=[[0, 0, 0]], cell=[15, 15, 15], pbc=True)  # nothing within reach
    for atoms in [*bulk_cells, far_dimer, lone]:
        assert closest_within(atoms, 6.0) == closest_distance(atoms, 6.0)
    assert closest_within(far_dimer, 6.0) == pytest.approx(4.5) and closest_within(lone, 6.0) is None
