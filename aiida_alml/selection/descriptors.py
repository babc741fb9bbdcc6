"""Structural descriptors for diversity selection: smoothed radial distribution per element pair.

Cheap, rotation/translation/permutation invariant and size-intensive (normalised per atom), which is what
farthest-point sampling and near-duplicate detection need. Uses ASE's neighbour list and numpy only.
"""

from __future__ import annotations

from itertools import combinations_with_replacement

import numpy as np

__all__ = ('radial_descriptor',)


def radial_descriptor(atoms, elements: list[int], r_cut: float = 5.0, n_bins: int = 32, width: float = 0.15):
    """Gaussian-smeared pair-distance histogram for each element pair, divided by the number of atoms.

    :param elements: atomic numbers that define the pair channels (the same list for every frame compared).
    """
    from ase.neighborlist import neighbor_list

    if r_cut <= 0 or n_bins < 2 or width <= 0:
        raise ValueError(f'need r_cut > 0, n_bins >= 2, width > 0; got {r_cut}, {n_bins}, {width}')
    pairs = list(combinations_with_replacement(sorted(elements), 2))
    channel = {pair: index for index, pair in enumerate(pairs)}
    centres = np.linspace(0.0, r_cut, n_bins)
    out = np.zeros((len(pairs), n_bins))
    first, second, distances = neighbor_list('ijd', atoms, r_cut)
    if len(distances):
        numbers = atoms.numbers
        keys = np.sort(np.stack([numbers[first], numbers[second]], axis=1), axis=1)
        weights = np.exp(-0.5 * ((distances[:, None] - centres[None, :]) / width) ** 2)
        for pair, index in channel.items():
            mask = (keys[:, 0] == pair[0]) & (keys[:, 1] == pair[1])
            if mask.any():
                out[index] = weights[mask].sum(axis=0)
        unknown = ~np.isin(numbers, elements)
        if unknown.any():
            raise ValueError(f'element {int(numbers[unknown][0])} is not among the descriptor elements {elements}')
    return out.reshape(-1) / len(atoms)
