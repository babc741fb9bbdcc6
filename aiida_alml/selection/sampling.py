"""Farthest-point sampling and near-duplicate detection in descriptor space."""

from __future__ import annotations

import numpy as np

__all__ = ('farthest_point_sampling', 'distance_to_set')


def distance_to_set(points: np.ndarray, reference: np.ndarray | None) -> np.ndarray:
    """Euclidean distance of each point to its nearest reference point (inf when there is no reference)."""
    points = np.atleast_2d(np.asarray(points, dtype=float))
    if reference is None or len(reference) == 0:
        return np.full(len(points), np.inf)
    reference = np.atleast_2d(np.asarray(reference, dtype=float))
    if reference.shape[1] != points.shape[1]:
        raise ValueError(f'descriptor lengths differ: {points.shape[1]} vs {reference.shape[1]}')
    # |a-b|^2 = |a|^2 + |b|^2 - 2ab, in blocks to bound memory for large training sets
    best = np.full(len(points), np.inf)
    sq_points = (points**2).sum(axis=1)
    for start in range(0, len(reference), 4096):
        block = reference[start:start + 4096]
        d2 = sq_points[:, None] + (block**2).sum(axis=1)[None, :] - 2.0 * points @ block.T
        best = np.minimum(best, d2.min(axis=1))
    return np.sqrt(np.maximum(best, 0.0))


def farthest_point_sampling(
    points: np.ndarray, count: int, existing: np.ndarray | None = None, first: int | None = None
) -> list[int]:
    """Greedily pick ``count`` indices, each the point farthest from everything picked (and ``existing``) so far.

    With ``existing`` (e.g. the training set's descriptors) the first pick is the point farthest from it; without,
    the first pick is ``first`` (default: the point farthest from the centroid, which makes the result deterministic).
    """
    points = np.atleast_2d(np.asarray(points, dtype=float))
    count = min(int(count), len(points))
    if count <= 0:
        return []
    distance = distance_to_set(points, existing)
    picked: list[int] = []
    if not np.isfinite(distance).any():
        if first is None:
            first = int(np.argmax(((points - points.mean(axis=0)) ** 2).sum(axis=1)))
        picked.append(first)
        distance = distance_to_set(points, points[[first]])
    while len(picked) < count:
        candidate = int(np.argmax(distance))
        picked.append(candidate)
        distance = np.minimum(distance, np.sqrt(((points - points[candidate]) ** 2).sum(axis=1)))
        distance[picked] = -np.inf
    return picked
