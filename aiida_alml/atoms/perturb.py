"""Perturbed copies of structures (rattle + strain) to seed a first training set. Pure ASE/numpy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ('perturbed_copies',)


def perturbed_copies(
    structures: Sequence,
    count: int,
    rattle_std: float = 0.05,
    max_strain: float = 0.03,
    seed: int = 0,
) -> list:
    """``count`` copies cycling through ``structures``, each strained and rattled at random.

    :param rattle_std: standard deviation (Å) of the Gaussian displacement of every atom.
    :param max_strain: each component of the symmetric strain tensor is drawn uniformly in ±max_strain; only
        periodic structures are strained.
    """
    if count < 1:
        raise ValueError(f'count must be positive, got {count}')
    if not structures:
        raise ValueError('structures is empty: give at least one structure to perturb')
    if rattle_std < 0 or max_strain < 0:
        raise ValueError(f'rattle_std and max_strain must be non-negative, got {rattle_std}, {max_strain}')
    rng = np.random.default_rng(seed)
    copies = []
    for index in range(count):
        atoms = structures[index % len(structures)].copy()
        atoms.calc = None
        if atoms.pbc.all():
            strain = rng.uniform(-max_strain, max_strain, (3, 3))
            atoms.set_cell(atoms.cell.array @ (np.eye(3) + (strain + strain.T) / 2), scale_atoms=True)
        atoms.positions += rng.normal(0.0, rattle_std, atoms.positions.shape)
        copies.append(atoms)
    return copies
