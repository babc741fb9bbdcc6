"""Training environments described once and passed back as ``reference``: the same descriptors to the last bit."""

import numpy as np
import pytest
from ase.build import bulk

from aiida_alml.selection import select_frames
from aiida_alml.selection.descriptors import (
    local_descriptors, local_environments, radial_count, selection_descriptors, widen_elements,
)


def _rattled_copper(count, seed, repeat=2, rattle=0.08):
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        atoms = bulk('Cu', 'fcc', a=3.61, cubic=True).repeat(repeat)
        atoms.positions += rng.normal(0.0, rattle, atoms.positions.shape)
        images.append(atoms)
    return images


def test_rows_widened_to_more_elements_equal_rows_described_with_them():
    (atoms,) = _rattled_copper(1, seed=0)
    for wider in ([13, 29], [29, 47, 79], [1, 29]):
        narrow = local_descriptors(atoms, [29], n_radial=radial_count(32))
        assert np.array_equal(widen_elements(narrow, [29], wider, n_bins=32),
                              local_descriptors(atoms, wider, n_radial=radial_count(32)))
    with pytest.raises(ValueError, match='missing'):
        widen_elements(narrow, [29], [13], n_bins=32)


def test_precomputed_reference_gives_the_same_descriptors_and_picks():
    training = _rattled_copper(6, seed=1)
    frames = _rattled_copper(12, seed=2, rattle=0.15)
    rng = np.random.default_rng(3)
    sigmas = [rng.uniform(0.01, 0.3, len(atoms)) for atoms in frames]
    elements = [29]
    fresh = selection_descriptors(frames, training, sigmas, elements)
    reference = local_environments(training, elements)
    assert reference[0].shape == (sum(len(a) for a in training), len(elements) * radial_count(32) + 8)
    cached = selection_descriptors(frames, None, sigmas, elements, reference=reference)
    assert np.array_equal(fresh[0], cached[0]) and np.array_equal(fresh[1], cached[1])

    uncertainty = np.array([sigma.max() for sigma in sigmas])
    uncertainty[0] = 0.0  # the start
    picks = [select_frames(uncertainty, rows, 0.05, 0.25, 4, training_descriptors=reference_rows, min_distance=1.0,
                           mode='fps', seed=0).order for rows, reference_rows in (fresh, cached)]
    assert picks[0] == picks[1] and len(picks[0]) == 4


def test_radial_descriptors_take_no_local_reference():
    frames = _rattled_copper(2, seed=4)
    with pytest.raises(ValueError, match='radial'):
        selection_descriptors(frames, frames, [np.ones(len(a)) for a in frames], [29], kind='radial',
                              reference=local_environments(frames, [29]))
