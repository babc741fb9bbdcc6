"""Calibrate committee σ against true errors on freshly labelled (out-of-sample) frames."""

from __future__ import annotations

import numpy as np

__all__ = ('fit_calibration_factor', 'calibration_summary')


def fit_calibration_factor(errors: np.ndarray, sigmas: np.ndarray, floor: float = 1e-6) -> float:
    """Scale factor s such that s·σ matches the observed force errors.

    ``errors`` are per-atom force-error norms |F_model − F_ref| and ``sigmas`` the per-atom committee σ. If the error
    vector is Gaussian with per-component variance (sσ)²/3, then E|ΔF|² = (sσ)², and the maximum-likelihood estimate
    is s² = mean(|ΔF|² / σ²). σ is floored so that atoms on which all members agree exactly do not dominate.
    """
    errors = np.asarray(errors, dtype=float).ravel()
    sigmas = np.asarray(sigmas, dtype=float).ravel()
    if errors.shape != sigmas.shape:
        raise ValueError(f'errors and sigmas differ in shape: {errors.shape} vs {sigmas.shape}')
    if len(errors) == 0:
        raise ValueError('calibration needs at least one (error, σ) pair')
    if not (np.isfinite(errors).all() and np.isfinite(sigmas).all()):
        raise ValueError('errors and sigmas must be finite')
    if (errors < 0).any() or (sigmas < 0).any():
        raise ValueError('errors and sigmas are norms and cannot be negative')
    return float(np.sqrt(np.mean(errors**2 / np.maximum(sigmas, floor) ** 2)))


def calibration_summary(errors: np.ndarray, sigmas: np.ndarray, factor: float) -> dict:
    """Numbers worth recording with the factor: how errors compare with (scaled) σ before and after."""
    errors = np.asarray(errors, dtype=float).ravel()
    sigmas = np.asarray(sigmas, dtype=float).ravel()
    scaled = factor * sigmas
    return {
        'factor': float(factor),
        'num_pairs': int(len(errors)),
        'rmse_force': float(np.sqrt(np.mean(errors**2))),
        'rms_sigma': float(np.sqrt(np.mean(sigmas**2))),
        'spearman': float(_spearman(errors, sigmas)) if len(errors) > 2 else None,
        # Fraction of atoms whose error lies within the scaled σ (about 0.61 for a calibrated 3-D Gaussian).
        'coverage_1sigma': float(np.mean(errors <= scaled)),
    }


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    rank_a = np.argsort(np.argsort(a)).astype(float)
    rank_b = np.argsort(np.argsort(b)).astype(float)
    if rank_a.std() == 0 or rank_b.std() == 0:
        return float('nan')
    return float(np.corrcoef(rank_a, rank_b)[0, 1])
