"""Choose which explored frames to label: trust window → drop starts and copies of training data → diverse, capped batch.

The accounting and the choice are separate questions:

* **Counted** frames are what exploration tells about the committee. A trajectory's first frame (the unchanged
  starting structure) and near-copies of training configurations are not counted: the committee has seen them, so they
  say nothing about where it is unsure, and re-sampling them every iteration would inflate the accurate fraction.
* **Chosen** frames are labelled. Candidates (σ inside the trust window) go first, thinned by farthest-point sampling.
  When they do not fill ``labels_per_iteration`` and some frames failed (σ above ``trust_hi``), the earliest failed
  frame of each trajectory is labelled (``rescue``): it lies just before the committee lost its way, is still
  physical, and teaches the model exactly what it is missing. Without this a hot campaign starves: most frames are
  failed, few are candidates, and the loop labels 2-5 frames per iteration where the model is worst.
* ``weighted`` mode drops the hard line at ``trust_hi``: every counted frame above ``trust_lo`` whose atoms keep a
  physical distance (``closest`` ≥ ``min_closest``) may be chosen, greedily by σ × descriptor distance to the
  training data and the frames already chosen. A weak committee's trust window puts nearly every hot frame above
  ``trust_hi``; then only σ can tell the frames where the committee is most wrong from those where it is merely
  unsure, and the distance keeps the batch from piling onto one environment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .sampling import distance_to_set, farthest_point_sampling
from .trust import ACCURATE, CANDIDATE, CLASS_NAMES, FAILED, classify

__all__ = ('SelectionResult', 'select_frames', 'REASONS', 'MODES', 'RANDOM_BASELINES', 'CONTACT_FILTERED_MODES',
           'DUPLICATE_RELATIVE_DISTANCE')

#: Why a frame was or was not chosen (stored per frame in the selection record).
REASONS = {
    'chosen': 'candidate chosen for labelling',
    'accurate': 'σ below trust_lo: the committee is already accurate here',
    'failed': 'σ above trust_hi: outside the trusted region, and not the earliest such frame of its trajectory',
    'rescue': 'earliest failed frame of its trajectory, labelled because candidates did not fill the batch',
    'start': 'first frame of a trajectory (the starting structure): not counted, not chosen',
    'known': 'a near-copy of a training configuration: not counted, not chosen',
    'duplicate': 'candidate closer than min_distance to the training data or to a chosen frame',
    'capped': 'not picked: labels_per_iteration reached',
    'calibration': 'accurate frame labelled to calibrate σ (no calibration yet and no candidates)',
    'random': 'drawn uniformly from all counted frames (random baseline)',
    'random_physical': 'drawn uniformly from the counted frames whose atoms keep a physical distance (random baseline '
                       'without the frames of MD that lost its way)',
    'weighted': 'chosen by σ-weighted farthest-point sampling among physical frames above trust_lo',
    'unphysical': 'two atoms closer than min_closest: a frame of MD that lost its way, not chosen',
}
#: ``fps``: candidates by farthest-point sampling, then rescue. ``random``: the baseline users compare against, as many
#: frames drawn uniformly from every counted frame whatever its σ. ``random_candidates``: uniform among candidates
#: only (an ablation of farthest-point sampling). ``weighted``: σ × distance among physical frames above trust_lo.
#: ``random_physical``: uniform among the physical counted frames, the baseline that shares ``weighted``'s filter, so
#: that a comparison measures the choice by σ and distance and not the dropping of blown-up frames.
MODES = ('fps', 'random', 'random_candidates', 'random_physical', 'weighted')
#: The baselines active learning is compared against: picks that ignore σ (and never calibrate with accurate frames).
RANDOM_BASELINES = ('random', 'random_physical')
#: Modes that never choose a frame whose atoms came closer than ``min_closest`` (so they need ``closest`` per frame).
CONTACT_FILTERED_MODES = ('random_physical', 'weighted')
#: A frame whose descriptor lies closer than this fraction of its own norm to a training configuration is a near-copy.
DUPLICATE_RELATIVE_DISTANCE = 1e-3


@dataclass(frozen=True)
class SelectionResult:
    """Per-frame outcome of one selection: class, whether counted and chosen, why, and the chosen indices in order."""

    classes: np.ndarray
    counted: np.ndarray
    chosen: np.ndarray
    reasons: list[str]
    order: list[int]

    def counts(self) -> dict[str, int]:
        """Counted frames per class (starts and near-copies of the training data left out)."""
        return {name: int(((self.classes == code) & self.counted).sum()) for code, name in enumerate(CLASS_NAMES)}

    def fractions(self, missing: int = 0) -> dict[str, float]:
        """Fractions of the frames exploration should have produced: ``missing`` frames (never sampled because a run
        stopped early or crashed) count as failed, so that a run that blew up cannot look accurate."""
        counts = self.counts()
        total = sum(counts.values()) + int(missing)
        if total == 0:
            return {name: 0.0 for name in CLASS_NAMES}
        fractions = {name: count / total for name, count in counts.items()}
        fractions['failed'] = (counts['failed'] + int(missing)) / total
        return fractions


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
    trajectory: np.ndarray | None = None,
    step: np.ndarray | None = None,
    rescue_failed: bool = True,
    closest: np.ndarray | None = None,
    min_closest: float = 0.0,
) -> SelectionResult:
    """Select at most ``labels_per_iteration`` frames to label.

    :param uncertainty: calibrated frame uncertainty (max over atoms of s·σ), eV/Å.
    :param trajectory: per frame, the index of its trajectory (default: all frames in one trajectory).
    :param step: per frame, its MD step; frames at step 0 are starting structures (default: no frame is a start).
    :param min_distance: candidates closer than this (descriptor units) to the training data or to a chosen frame are
        skipped as duplicates. Independently of it, near-copies of training configurations (closer than
        ``DUPLICATE_RELATIVE_DISTANCE`` of their descriptor norm) are neither counted nor chosen.
    :param calibrate_with_accurate: with no candidate at all, label a diverse batch of accurate frames instead: an
        uncalibrated committee can look confident everywhere, and only labels tell whether it is.
    :param rescue_failed: fill the batch with the earliest failed frame of each trajectory (see the module docstring).
    :param closest: per frame, its smallest interatomic distance (Å; default: every frame physical).
    :param min_closest: ``weighted`` and ``random_physical`` modes skip frames whose ``closest`` is below this (Å).
    """
    uncertainty = np.asarray(uncertainty, dtype=float)
    descriptors = np.atleast_2d(np.asarray(descriptors, dtype=float))
    count = len(uncertainty)
    if uncertainty.ndim != 1 or len(descriptors) != count:
        raise ValueError(f'need one descriptor per frame: {len(descriptors)} descriptors, {uncertainty.shape} σ')
    if int(labels_per_iteration) < 1:
        raise ValueError(f'labels_per_iteration must be positive, got {labels_per_iteration}')
    cap = int(labels_per_iteration)
    if min_distance < 0:
        raise ValueError(f'min_distance must be non-negative, got {min_distance}')
    if mode not in MODES:
        raise ValueError(f'selection mode must be one of {", ".join(MODES)}, got {mode!r}')
    trajectory = np.zeros(count, dtype=int) if trajectory is None else np.asarray(trajectory, dtype=int)
    step = np.ones(count, dtype=int) if step is None else np.asarray(step, dtype=int)
    if trajectory.shape != (count,) or step.shape != (count,):
        raise ValueError(f'trajectory and step need one entry per frame ({count})')
    closest = np.full(count, np.inf) if closest is None else np.asarray(closest, dtype=float)
    if closest.shape != (count,):
        raise ValueError(f'closest needs one entry per frame ({count}), got shape {closest.shape}')
    if not min_closest >= 0:
        raise ValueError(f'min_closest must be non-negative, got {min_closest}')

    classes = classify(uncertainty, trust_lo, trust_hi)
    reasons = np.array([CLASS_NAMES[c] for c in classes], dtype=object)
    counted = step != 0
    reasons[~counted] = 'start'
    if training_descriptors is not None and len(training_descriptors) and count:
        tolerance = DUPLICATE_RELATIVE_DISTANCE * np.linalg.norm(descriptors, axis=1)
        known = counted & (distance_to_set(descriptors, training_descriptors) <= tolerance)
        reasons[known] = 'known'
        counted &= ~known
    candidates = np.flatnonzero(counted & (classes == CANDIDATE))
    rng = np.random.default_rng(seed)
    order: list[int] = []

    if mode in RANDOM_BASELINES:
        unphysical = counted & (closest < min_closest) if mode in CONTACT_FILTERED_MODES else np.zeros(count, bool)
        reasons[unphysical] = 'unphysical'
        reasons[candidates[~unphysical[candidates]]] = 'capped'
        pool = np.flatnonzero(counted & ~unphysical)
        order = [int(i) for i in rng.choice(pool, size=min(cap, len(pool)), replace=False)]
        for index in order:
            reasons[index] = mode
    elif mode == 'weighted':
        order = _weighted_picks(uncertainty, descriptors, classes, counted, closest, min_closest, cap,
                                training_descriptors, min_distance, reasons)
    elif mode == 'random_candidates':
        order = [int(i) for i in rng.choice(candidates, size=min(cap, len(candidates)), replace=False)]
        reasons[candidates] = 'capped'
    elif len(candidates):
        near = distance_to_set(descriptors[candidates], training_descriptors) < min_distance if min_distance else \
            np.zeros(len(candidates), bool)
        reasons[candidates[near]] = 'duplicate'
        fresh = candidates[~near]
        reasons[fresh] = 'capped'
        for local in farthest_point_sampling(descriptors[fresh], cap, existing=training_descriptors):
            index = int(fresh[local])
            if min_distance and order and distance_to_set(descriptors[[index]], descriptors[order])[0] < min_distance:
                reasons[index] = 'duplicate'
                continue
            order.append(index)

    if mode == 'fps' and rescue_failed and len(order) < cap:
        for index in _earliest_failed(classes, counted, trajectory, step)[:cap - len(order)]:
            order.append(index)
            reasons[index] = 'rescue'
    if mode not in RANDOM_BASELINES and not order and not len(candidates) and calibrate_with_accurate:
        accurate = np.flatnonzero(counted & (classes == ACCURATE))
        picks = farthest_point_sampling(descriptors[accurate], cap, existing=training_descriptors)
        order = [int(accurate[i]) for i in picks]
        for index in order:
            reasons[index] = 'calibration'
    chosen = np.zeros(count, dtype=bool)
    chosen[order] = True
    reasons[chosen & (classes == CANDIDATE) & (reasons == 'capped')] = 'chosen'
    return SelectionResult(classes=classes, counted=counted, chosen=chosen, reasons=reasons.tolist(), order=order)


def _weighted_picks(uncertainty, descriptors, classes, counted, closest, min_closest, cap, training_descriptors,
                    min_distance, reasons) -> list[int]:
    """Greedy picks maximising σ × (distance to the training data and the picks so far) among physical frames."""
    uncertain = counted & (classes != ACCURATE)
    unphysical = uncertain & (closest < min_closest)
    reasons[unphysical] = 'unphysical'
    pool = np.flatnonzero(uncertain & ~unphysical)
    if not len(pool):
        return []
    reasons[pool] = 'capped'
    points = descriptors[pool]
    distance = distance_to_set(points, training_descriptors)
    if not np.isfinite(distance).any():  # nothing to compare with: σ alone decides the first pick
        distance = np.ones(len(pool))
    weight = np.where(np.isfinite(uncertainty[pool]), uncertainty[pool], 0.0)
    order: list[int] = []
    available = np.ones(len(pool), dtype=bool)
    while len(order) < cap and available.any():
        local = int(np.argmax(np.where(available, weight * distance, -np.inf)))
        available[local] = False
        if min_distance and distance[local] < min_distance:
            reasons[pool[local]] = 'duplicate'
            continue
        order.append(int(pool[local]))
        reasons[pool[local]] = 'weighted'
        distance = np.minimum(distance, np.sqrt(((points - points[local]) ** 2).sum(axis=1)))
    return order


def _earliest_failed(classes, counted, trajectory, step) -> list[int]:
    """Failed frames in rescue order: the first failed frame of every trajectory, then the second, and so on."""
    failed = np.flatnonzero(counted & (classes == FAILED))
    by_trajectory: dict[int, list[int]] = {}
    for index in sorted(failed, key=lambda i: (trajectory[i], step[i])):
        by_trajectory.setdefault(int(trajectory[index]), []).append(int(index))
    ranked = []
    for rank in range(max((len(v) for v in by_trajectory.values()), default=0)):
        ranked.extend(frames[rank] for _, frames in sorted(by_trajectory.items()) if rank < len(frames))
    return ranked
