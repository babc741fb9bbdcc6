"""The trust window: below ``trust_lo`` a frame is accurate, above ``trust_hi`` it is failed, between a candidate."""

from __future__ import annotations

import numpy as np

__all__ = ('ACCURATE', 'CANDIDATE', 'FAILED', 'CLASS_NAMES', 'classify', 'validate_trust_window')

ACCURATE, CANDIDATE, FAILED = 0, 1, 2
CLASS_NAMES = ('accurate', 'candidate', 'failed')


def validate_trust_window(trust_lo: float, trust_hi: float) -> None:
    if not (np.isfinite(trust_lo) and np.isfinite(trust_hi)):
        raise ValueError(f'trust_lo and trust_hi must be finite, got {trust_lo}, {trust_hi}')
    if trust_lo <= 0:
        raise ValueError(f'trust_lo must be positive (eV/Å), got {trust_lo}')
    if trust_lo >= trust_hi:
        raise ValueError(f'trust_lo ({trust_lo}) must be smaller than trust_hi ({trust_hi})')


def classify(uncertainty: np.ndarray, trust_lo: float, trust_hi: float) -> np.ndarray:
    """Class of each frame (ACCURATE / CANDIDATE / FAILED); non-finite uncertainty counts as failed."""
    validate_trust_window(trust_lo, trust_hi)
    uncertainty = np.asarray(uncertainty, dtype=float)
    classes = np.full(uncertainty.shape, CANDIDATE, dtype=np.int8)
    classes[uncertainty < trust_lo] = ACCURATE
    classes[(uncertainty > trust_hi) | ~np.isfinite(uncertainty)] = FAILED
    return classes
