"""Structural descriptors for diversity selection: smoothed radial distribution per element pair.

Cheap, rotation/translation/permutation invariant and size-intensive (normalised per atom), which is what
farthest-point sampling and near-duplicate detection need. Uses ASE's neighbour list and numpy only.
"""

from __future__ import annotations

from itertools import combinations_with_replacement

import numpy as np

__all__ = ('radial_descriptor', 'local_descriptors', 'selection_descriptors', 'radial_count', 'local_environments',
           'widen_elements')

#: The angular orders ζ of the local descriptors (their last 2 * len(ZETAS) columns).
ZETAS = (1, 2, 4, 8)


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


def _cutoff(distances: np.ndarray, r_cut: float) -> np.ndarray:
    """Smooth cosine cutoff: 1 at r = 0, 0 with zero slope at r_cut."""
    return 0.5 * (np.cos(np.pi * np.minimum(distances, r_cut) / r_cut) + 1.0)


def local_descriptors(atoms, elements: list[int], r_cut: float = 5.0, n_radial: int = 8,
                      zetas: tuple[int, ...] = ZETAS) -> np.ndarray:
    """Per-atom environment descriptors (n_atoms, len(elements) * n_radial + 2 * len(zetas)).

    Radial part: for each neighbour element, Gaussians (width = spacing) centred between 0.5 Å and ``r_cut``, summed
    over neighbours with a smooth cutoff. Angular part: Σ_j<k f(r_ij) f(r_ik) 2^(1-ζ) (1 ± cos θ_jik)^ζ over all
    neighbour pairs (Behler-Parrinello-type symmetry functions). Invariant to rotation, translation and permutation of
    equal atoms; one displaced atom changes the rows of it and its neighbours, and leaves every other row unchanged,
    which is what selection needs to notice one new local environment (a vacancy, a step) in a big cell.
    """
    from ase.neighborlist import neighbor_list

    if r_cut <= 0 or n_radial < 2:
        raise ValueError(f'need r_cut > 0 and n_radial >= 2; got {r_cut}, {n_radial}')
    elements = sorted(elements)
    numbers = atoms.numbers
    unknown = ~np.isin(numbers, elements)
    if unknown.any():
        raise ValueError(f'element {int(numbers[unknown][0])} is not among the descriptor elements {elements}')
    centres = np.linspace(0.5, r_cut, n_radial)
    width = centres[1] - centres[0]
    n_atoms = len(atoms)
    radial = np.zeros((n_atoms, len(elements), n_radial))
    angular = np.zeros((n_atoms, 2 * len(zetas)))
    first, second, distances, vectors = neighbor_list('ijdD', atoms, r_cut)
    if len(distances):
        weights = _cutoff(distances, r_cut)
        gaussians = np.exp(-0.5 * ((distances[:, None] - centres[None, :]) / width) ** 2) * weights[:, None]
        channel = np.searchsorted(elements, numbers[second])
        np.add.at(radial, (first, channel), gaussians)
        order = np.argsort(first, kind='stable')
        bounds = np.searchsorted(first[order], np.arange(n_atoms + 1))
        for atom in range(n_atoms):
            rows = order[bounds[atom]:bounds[atom + 1]]
            if len(rows) < 2:
                continue
            unit = vectors[rows] / distances[rows, None]
            cosines = np.clip(unit @ unit.T, -1.0, 1.0)
            pair_weight = weights[rows, None] * weights[None, rows]
            upper = np.triu_indices(len(rows), 1)
            cosines, pair_weight = cosines[upper], pair_weight[upper]
            for index, zeta in enumerate(zetas):
                for sign_index, sign in enumerate((1.0, -1.0)):
                    angular[atom, 2 * index + sign_index] = np.sum(
                        pair_weight * 2.0 ** (1 - zeta) * (1.0 + sign * cosines) ** zeta)
    return np.concatenate([radial.reshape(n_atoms, -1), angular], axis=1)


def radial_count(n_bins: int) -> int:
    """Radial Gaussians per neighbour element of the local descriptors that ``n_bins`` asks for."""
    return max(2, n_bins // 4)


def local_environments(images: list, elements: list[int], r_cut: float = 5.0,
                       n_bins: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Every atomic environment of ``images``, in order: (rows of :func:`local_descriptors`, atomic numbers).

    The reference :func:`selection_descriptors` compares against; computed once per labelled configuration it can be
    kept and passed back as ``reference`` (see :func:`widen_elements` for rows made with fewer elements).
    """
    columns = len(elements) * radial_count(n_bins) + 2 * len(ZETAS)
    blocks = [local_descriptors(atoms, elements, r_cut=r_cut, n_radial=radial_count(n_bins)) for atoms in images]
    numbers = [np.asarray(atoms.numbers, dtype=np.int64) for atoms in images]
    if not blocks:
        return np.zeros((0, columns)), np.zeros(0, dtype=np.int64)
    return np.concatenate(blocks), np.concatenate(numbers)


def widen_elements(rows: np.ndarray, elements: list[int], wider: list[int], n_bins: int = 32) -> np.ndarray:
    """Rows of :func:`local_descriptors` made with ``elements``, laid out for the superset ``wider``.

    Exact: an environment without neighbours of an element has zeros in that element's radial channel, and the
    angular part does not depend on the element list; the values are the same floating-point sums either way.
    """
    elements, wider = sorted(elements), sorted(wider)
    if elements == wider:
        return rows
    absent = sorted(set(elements) - set(wider))
    if absent:
        raise ValueError(f'cannot lay out rows of elements {elements} for {wider}: {absent} missing')
    n_radial = radial_count(n_bins)
    radial_width = len(elements) * n_radial
    if rows.shape[1] != radial_width + 2 * len(ZETAS):
        raise ValueError(f'rows have {rows.shape[1]} columns, not those of elements {elements} with {n_bins} bins')
    radial = np.zeros((len(rows), len(wider), n_radial))
    radial[:, [wider.index(element) for element in elements]] = rows[:, :radial_width].reshape(
        len(rows), len(elements), n_radial)
    return np.concatenate([radial.reshape(len(rows), -1), rows[:, radial_width:]], axis=1)


def selection_descriptors(frames: list, training: list | None, atom_sigmas: list, elements: list[int],
                          kind: str = 'local', r_cut: float = 5.0, n_bins: int = 32,
                          reference: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Descriptors that farthest-point sampling and the near-copy test compare: (one row per frame, reference rows).

    ``kind='local'``: a frame is represented by the environment of its most uncertain atom (largest σ), and the
    reference is every atomic environment of the training set, so a frame counts as new when the environment the
    committee doubts is new, however big the cell around it. Columns are scaled by their spread over the
    training environments; the central element is a one-hot block far larger than that, so environments of different
    elements never match. ``kind='radial'``: one global pair-distance histogram per configuration (per atom).

    ``reference`` (``kind='local'`` only): the training environments already described, as :func:`local_environments`
    gives them for ``training`` with these ``elements``, in the same order; then ``training`` is not described again
    (it may be None) and the result is the same to the last bit.
    """
    if kind == 'radial':
        if reference is not None:
            raise ValueError("precomputed reference rows are local environments: not for descriptor kind 'radial'")

        def describe(images):
            return np.array([radial_descriptor(atoms, elements, r_cut=r_cut, n_bins=n_bins) for atoms in images])

        return describe(frames), describe(training)
    if kind != 'local':
        raise ValueError(f"descriptor kind must be 'local' or 'radial', got {kind!r}")
    n_radial = radial_count(n_bins)

    def environments(atoms):
        return local_descriptors(atoms, elements, r_cut=r_cut, n_radial=n_radial), atoms.numbers

    if reference is None:
        reference = local_environments(training, elements, r_cut=r_cut, n_bins=n_bins)
    reference_rows, reference_numbers = reference
    if len(reference_rows) != len(reference_numbers):
        raise ValueError(f'{len(reference_rows)} reference rows but {len(reference_numbers)} atomic numbers')
    if not len(reference_rows):  # no training environments: the frames set their own scale
        reference_rows = reference_numbers = None
    representatives, numbers = [], []
    for atoms, sigma in zip(frames, atom_sigmas):
        rows, atom_numbers = environments(atoms)
        top = int(np.argmax(sigma))
        representatives.append(rows[top])
        numbers.append(atom_numbers[top])
    representatives = np.array(representatives).reshape(len(frames), -1)
    pool = reference_rows if reference_rows is not None else representatives
    scale = pool.std(axis=0) if len(pool) > 1 else np.ones(pool.shape[1])
    scale = np.where(scale > 1e-12, scale, 1.0)

    def scaled(rows, atom_numbers):
        onehot = 100.0 * (np.asarray(atom_numbers)[:, None] == np.array(elements)[None, :])
        return np.concatenate([rows / scale, onehot], axis=1)

    frame_rows = scaled(representatives, numbers) if len(frames) else np.zeros((0, pool.shape[1] + len(elements)))
    return frame_rows, (scaled(reference_rows, reference_numbers) if reference_rows is not None else None)
