"""Choose which explored frames to label: trust window → dedup against training data → diverse, capped batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .sampling import distance_to_set, farthest_point_sampling
from .trust import ACCURATE, CANDIDATE, CLASS_NAMES, FAILED, classify

__all__ = ('SelectionResult', 'select_frames', 'REASONS')

#: Why a frame was or was not chosen (stored per frame in the selection record).
REASONS = {
    'chosen': 'candidate chosen for labelling',
    'accurate': 'σ below trust_lo: the committee is already accurate here',
    'failed': 'σ above trust_hi: outside the trusted region (likely unphysical)',
    'duplicate': 'candidate closer than min_distance to the training data or to a chosen frame',
    'capped': 'candidate not picked: labels_per_iteration reached',
    'calibration': 'accurate frame labelled to calibrate σ (no calibration yet and no candidates)',
}


@dataclass(frozen=True)
class SelectionResult:
    """Per-frame outcome of one selection: class, whether chosen, why, and the indices chosen (in pick order)."""

    classes: np.ndarray
    chosen: np.ndarray
    reasons: list[str]
    order: list[int]

    def counts(self) -> dict[str, int]:
        return {name: int((self.classes == code).sum()) for code, name in enumerate(CLASS_NAMES)}

    def fractions(self) -> dict[str, float]:
        total = max(len(self.classes), 1)
        return {name: count / total for name, count in self.counts().items()}


def select_frames(
    uncertainty: np.ndarray,
    descriptors: np.ndarray,
    trust_lo: float,
    trust_hi: float,
    labels_per_iteration: int,
    training_descriptors: np.ndarray | None = None,
    min_distance: float = 0.0,
    mode: str = 'fps',
    seed: int = 0,
    calibrate_with_accurate: bool = False,
) -> SelectionResult:
    """Select at most ``labels_per_iteration`` candidate frames.

    ``mode='fps'`` thins candidates by farthest-point sampling in descriptor space after dropping near-duplicates of
    the training data; ``mode='random'`` picks the same number uniformly from the candidates (the paired baseline).
    With ``calibrate_with_accurate`` and no candidate at all, a diverse batch of *accurate* frames is chosen instead:
    an uncalibrated committee can look confident everywhere, and only labels tell whether it is.
    """
    uncertainty = np.asarray(uncertainty, dtype=float)
    descriptors = np.atleast_2d(np.asarray(descriptors, dtype=float))
    if uncertainty.ndim != 1 or len(descriptors) != len(uncertainty):
        raise ValueError(f'need one descriptor per frame: {len(descriptors)} descriptors, {uncertainty.shape} σ')
    if int(labels_per_iteration) < 1:
        raise ValueError(f'labels_per_iteration must be positive, got {labels_per_iteration}')
    if min_distance < 0:
        raise ValueError(f'min_distance must be non-negative, got {min_distance}')
    if mode not in ('fps', 'random'):
        raise ValueError(f"selection mode must be 'fps' or 'random', got {mode!r}")

    classes = classify(uncertainty, trust_lo, trust_hi)
    reasons = np.array(['accurate'] * len(classes), dtype=object)
    reasons[classes == FAILED] = 'failed'
    candidates = np.flatnonzero(classes == CANDIDATE)

    if mode == 'random':
        rng = np.random.default_rng(seed)
        count = min(int(labels_per_iteration), len(candidates))
        order = [int(i) for i in rng.choice(candidates, size=count, replace=False)] if count else []
        reasons[candidates] = 'capped'
    else:
        order = []
        if len(candidates):
            near = distance_to_set(descriptors[candidates], training_descriptors) < min_distance if min_distance else \
                np.zeros(len(candidates), bool)
            reasons[candidates[near]] = 'duplicate'
            fresh = candidates[~near]
            picks = farthest_point_sampling(descriptors[fresh], labels_per_iteration, existing=training_descriptors)
            reasons[fresh] = 'capped'
            for local in picks:
                index = int(fresh[local])
                if min_distance and order and distance_to_set(descriptors[[index]], descriptors[order])[0] < min_distance:
                    reasons[index] = 'duplicate'
                    continue
                order.append(index)
    if not order and not len(candidates) and calibrate_with_accurate:
        accurate = np.flatnonzero(classes == ACCURATE)
        picks = farthest_point_sampling(descriptors[accurate], labels_per_iteration, existing=training_descriptors)
        order = [int(accurate[i]) for i in picks]
        for index in order:
            reasons[index] = 'calibration'
    chosen = np.zeros(len(classes), dtype=bool)
    chosen[order] = True
    reasons[chosen & (classes == CANDIDATE)] = 'chosen'
    return SelectionResult(classes=classes, chosen=chosen, reasons=reasons.tolist(), order=order)
