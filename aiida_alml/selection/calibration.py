"""Calibrate committee σ against true errors on freshly labelled (out-of-sample) frames, and check that it holds.

Model and notation
------------------
A committee of ``M`` members predicts forces on atom ``i``. Its per-atom spread is
``σ_i = sqrt(Σ_xyz Var_members F_i)`` with the population variance (ddof=0, as in :func:`.uncertainty.force_sigma`), the
prediction is the committee mean and the true error is ``|ΔF_i| = |F_mean,i − F_ref,i|``. Decisions are made per frame
on ``u = s · max_i σ_i`` where ``s`` is the calibration factor fitted here.

Reference model: the members and the reference are independent draws from one isotropic Gaussian per atom, variance
``τ_i²`` per Cartesian component (``τ_i`` may differ from atom to atom). Then, with ``ν = 3(M − 1)``,

* ``M σ_i² / τ_i² ~ χ²_ν`` and ``M |ΔF_i|² / ((M + 1) τ_i²) ~ χ²_3``, independent of each other, so
* ``|ΔF_i|² / σ_i² = (M + 1)/(M − 1) · F(3, ν)`` exactly (an F-distributed ratio), and
  ``E|ΔF_i|² / Eσ_i² = (M + 1)/(M − 1)``.

A committee whose spread is ``c`` times too small (its members' deviations from their mean shrunk by ``1/c``, the error
of the mean unchanged) has ``|ΔF_i|² / σ_i² = c² (M + 1)/(M − 1) · F(3, ν)``. In either case, with
``s² = E|ΔF|² / Eσ²``, the calibrated per-atom predictive is ``|ΔF_i|² / (s σ_i)² ~ F(3, ν)``: a Student-t-like law
whose heavy tail comes from σ being estimated from only ``M`` members. (If instead the members are drawn with ``τ/c``
and the reference with ``τ``, the error of the mean also shrinks and ``s² = (c² M + 1)/(M − 1)``; the predictive is the
same F law, so everything below holds with that ``s``.)

Why not the mean of ratios. ``s² = mean(|ΔF|² / σ²)`` treats each σ as exact. Because ``E[1/χ²_ν] = 1/(ν − 2)``, its
expectation is ``(M + 1)/(M − 1) · ν/(ν − 2)`` (9 instead of 3 for M = 2, i.e. s ≈ 3.0 instead of 1.73), and for
``ν ≤ 4`` (M = 2) its variance is infinite, so even the bias-corrected form ``(ν − 2)/ν · mean(|ΔF|²/σ²)`` is useless
there. The finite-committee correction of the scale factor of a calibrated committee is due to Musil et al., J. Chem.
Theory Comput. 15, 906 (2019); Imbalzano et al., J. Chem. Phys. 154, 074102 (2021) carry committee calibration over to
molecular dynamics and sampling. The expressions here are derived for the three-component force norm with ddof=0 spread.

What is fitted. The pooled ratio of means ``s = sqrt(Σ_i |ΔF_i|² / Σ_i σ_i²)`` over all atoms of all labelled frames.
It is consistent for ``sqrt(E|ΔF|²/Eσ²)`` whatever ``M`` (its relative bias is O(1/N) with N atoms) and has finite
variance for every ``M ≥ 2``. Atoms within a frame are correlated in practice, so its uncertainty interval comes from a
bootstrap over frames.

How it is judged. Per atom, ``P(|ΔF_i| ≤ s σ_i) = CDF_F(1; 3, ν)`` exactly. Per frame (where decisions are made), the
probability that the largest true error lies below ``s · max σ`` depends on the unknown ``τ_i`` of the frame's atoms;
:func:`promised_frame_coverage` computes it as a posterior predictive, with a log-normal prior for ``τ_i²`` (a frame
component plus an atom component) whose mean and variances are estimated from the σ's themselves (empirical Bayes).
:func:`frame_coverage` compares the observed fraction of frames with ``max|ΔF| ≤ s max σ`` with the mean of that
promise. The simpler promise ``Π_i CDF_F((max σ)² / σ_i²; 3, ν)`` (each atom's τ given a flat prior of its own) is
reported too, but it is far too pessimistic for small committees (≈ 0.1 promised against 0.5 observed for M = 2 and
8 equivalent atoms) and must not be used to judge the fit.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from scipy.special import betainc, digamma, gammainc, polygamma

__all__ = (
    'calibration_summary', 'expected_factor', 'f_cdf', 'fit_calibration', 'fit_calibration_factor', 'frame_coverage',
    'promised_frame_coverage', 'spearman',
)

#: σ below this (eV/Å) is raised to it, so that atoms on which all members agree exactly do not divide by zero.
SIGMA_FLOOR = 1e-6


def expected_factor(num_members: int) -> float:
    """The calibration factor √((M+1)/(M−1)) of a committee whose members and reference come from one distribution."""
    num_members = _check_members(num_members)
    return math.sqrt((num_members + 1) / (num_members - 1))


def f_cdf(x, d1: float, d2: float):
    """CDF of the F(d1, d2) distribution: ``betainc(d1/2, d2/2, d1 x / (d1 x + d2))`` (0 for x ≤ 0)."""
    x = np.clip(np.asarray(x, dtype=float), 0.0, 1e300)
    return betainc(d1 / 2, d2 / 2, d1 * x / (d1 * x + d2))


def fit_calibration(
    errors, sigmas, frame_index, num_members: int, confidence: float = 0.95, n_bootstrap: int = 1000, seed: int = 0,
    floor: float = SIGMA_FLOOR,
) -> dict:
    """Fit the calibration factor s of the frame uncertainty ``s · max_i σ_i`` on out-of-sample labels.

    :param errors: per-atom force-error norms ``|F_committee_mean − F_ref|`` (any shape, flattened).
    :param sigmas: per-atom committee σ (ddof=0 spread, see :func:`.uncertainty.force_sigma`), same shape.
    :param frame_index: per-atom frame label (integers, one per atom); atoms with one label form one frame. Frames need
        not be contiguous. To pool labels over iterations, concatenate the arrays with distinct frame labels.
    :param num_members: committee size M (≥ 2) that produced ``sigmas``.
    :param confidence: coverage of the bootstrap interval, in (0, 1).
    :param n_bootstrap: number of bootstrap resamples of whole frames (≥ 1).
    :param seed: seed of the bootstrap; the result is deterministic for a given seed.
    :param floor: σ is raised to at least this value.
    :returns: a JSON-serialisable dict with

        - ``factor``: ``s = sqrt(Σ|ΔF_i|² / Σ σ_i²)`` over all atoms (the pooled ratio of means; see the module doc),
        - ``interval``: ``[lo, hi]``, percentile bootstrap interval of ``s`` resampling frames with replacement,
        - ``confidence``, ``num_frames``, ``num_atoms``, ``num_members``,
        - ``expected_if_members_like_reference``: √((M+1)/(M−1)),
        - ``factor_over_expected``: ``s`` divided by that, the members' mis-scaling c (1 when the
          spread is right, c when it is c times too small),
        - ``coverage``: :func:`frame_coverage` evaluated with the fitted factor.
    :raises ValueError: on mismatched shapes, non-finite or negative values, no atoms, all errors zero, M < 2, a
        confidence outside (0, 1) or fewer than one bootstrap resample.
    """
    errors, sigmas, frames, num_frames = _validate(errors, sigmas, frame_index, floor)
    num_members = _check_members(num_members)
    if not (isinstance(confidence, numbers.Real) and 0 < confidence < 1):
        raise ValueError(f'confidence must lie strictly between 0 and 1, got {confidence!r}')
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, numbers.Integral) or n_bootstrap < 1:
        raise ValueError(f'n_bootstrap must be a positive integer, got {n_bootstrap!r}')
    error_sq = np.bincount(frames, errors**2, minlength=num_frames)
    sigma_sq = np.bincount(frames, sigmas**2, minlength=num_frames)
    if error_sq.sum() == 0:
        raise ValueError('all errors are zero: there is nothing to calibrate σ against')
    factor = math.sqrt(error_sq.sum() / sigma_sq.sum())

    rng = np.random.default_rng(seed)
    boot = np.empty(n_bootstrap)
    chunk = max(1, 4_000_000 // num_frames)
    for start in range(0, n_bootstrap, chunk):
        picks = rng.integers(0, num_frames, size=(min(chunk, n_bootstrap - start), num_frames))
        boot[start:start + len(picks)] = np.sqrt(error_sq[picks].sum(axis=1) / sigma_sq[picks].sum(axis=1))
    low, high = np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2])
    expected = expected_factor(num_members)
    return {
        'factor': float(factor),
        'interval': [float(low), float(high)],
        'confidence': float(confidence),
        'num_frames': int(num_frames),
        'num_atoms': int(len(errors)),
        'num_members': int(num_members),
        'expected_if_members_like_reference': float(expected),
        'factor_over_expected': float(factor / expected),
        'coverage': _coverage(errors, sigmas, frames, num_frames, factor, num_members, floor),
    }


def frame_coverage(errors, sigmas, frame_index, factor: float, num_members: int, floor: float = SIGMA_FLOOR) -> dict:
    """Does ``factor · σ`` hold? Observed against promised coverage per frame and per atom.

    Frame level (where decisions are made), for a frame with atoms i:

    - observed: the fraction of frames with ``max_i |ΔF_i| ≤ factor · max_i σ_i``;
    - promised: the mean over frames of :func:`promised_frame_coverage`, the probability of that event under the
      calibrated model ``|ΔF_i|² = factor² (M−1)/M · τ_i² χ²_3`` with ``M σ_i²/τ_i² ~ χ²_{3(M−1)}``, ``τ_i`` integrated
      over its posterior given the σ's (log-normal prior fitted to the σ's). It does not depend on ``factor``: a wrong
      factor moves only the observed coverage;
    - ``frame_promised_flat_prior``: the mean over frames of ``Π_i CDF_F((max σ)²/σ_i²; 3, 3(M−1))``, the same
      probability with an independent flat prior on each ``log τ_i``; strongly pessimistic for small M, for reference.

    Atom level: observed fraction of atoms with ``|ΔF_i| ≤ factor · σ_i`` against the exact ``CDF_F(1; 3, 3(M−1))``
    (0.500 for M = 2, 0.564 for M = 4, 0.588 for M = 8, → 0.608 for M → ∞).

    :returns: a dict of plain floats (and ints): ``factor``, ``num_frames``, ``num_atoms``, ``num_members``,
        ``frame_observed``, ``frame_promised``, ``frame_gap`` (observed − promised), ``frame_observed_stderr``
        (binomial standard error of the observed fraction, √(p(1−p)/num_frames) with p the promise),
        ``frame_promised_flat_prior``, ``atom_observed_1sigma``, ``atom_promised_1sigma``, ``spearman_frame``
        (Spearman rank correlation of frame max σ with frame max error; None with fewer than 3 frames or constant
        input), and the fitted prior of ``log τ²``: ``prior_log_tau2_mean``, ``prior_log_tau2_var_frame``,
        ``prior_log_tau2_var_atom``.
    """
    errors, sigmas, frames, num_frames = _validate(errors, sigmas, frame_index, floor)
    num_members = _check_members(num_members)
    if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not (math.isfinite(factor) and factor > 0):
        raise ValueError(f'calibration factor must be a positive finite number, got {factor!r}')
    return _coverage(errors, sigmas, frames, num_frames, float(factor), num_members, floor)


def promised_frame_coverage(sigmas, frame_index, num_members: int, floor: float = SIGMA_FLOOR) -> np.ndarray:
    """Per frame (ordered by sorted frame label), the calibrated model's probability that ``max|ΔF| ≤ s · max σ``.

    Under the calibrated model (see the module doc) and given ``τ_i``, the atoms are independent and
    ``P(|ΔF_i| ≤ s σ_max | τ_i) = P(χ²_3 ≤ M σ_max² / ((M−1) τ_i²))`` (``s`` cancels). ``τ_i`` is unknown: write
    ``λ = log τ² = a_f + b_i`` with a frame part ``a_f ~ N(μ, v_F)`` and an atom part ``b_i ~ N(0, v_A)``; ``μ``,
    ``v_F``, ``v_A`` are estimated by the method of moments from ``log σ²`` (whose noise ``log(χ²_ν/M)`` has known mean
    ``ψ(ν/2) + log(2/M)`` and variance ``ψ'(ν/2)``), and the probability is integrated over the posterior of ``(a_f,
    b_i)`` given the frame's σ's on a grid in λ. Averaged over frames it matches the true frequency when τ follows
    such a prior (up to the error of the estimated prior), also when τ varies strongly between atoms or frames.
    """
    sigmas = np.asarray(sigmas, dtype=float).ravel()
    _, sigmas, frames, num_frames = _validate(np.zeros_like(sigmas), sigmas, frame_index, floor)
    promised, _ = _promised_frames(sigmas, frames, num_frames, _check_members(num_members), floor)
    return promised


def fit_calibration_factor(errors: np.ndarray, sigmas: np.ndarray, floor: float = SIGMA_FLOOR) -> float:
    """Scale factor s such that s·σ matches the observed force errors: ``s = sqrt(Σ|ΔF|² / Σσ²)``.

    The pooled ratio of means (see the module doc); kept for callers without frame labels. Prefer
    :func:`fit_calibration`, which adds the bootstrap interval over frames and the coverage check.
    """
    errors, sigmas, _, _ = _validate(errors, sigmas, None, floor)
    if not (errors > 0).any():
        raise ValueError('all errors are zero: there is nothing to calibrate σ against')
    return float(np.sqrt(np.sum(errors**2) / np.sum(sigmas**2)))


def calibration_summary(errors: np.ndarray, sigmas: np.ndarray, factor: float, num_members: int | None = None) -> dict:
    """Numbers worth recording with the factor: how errors compare with (scaled) σ.

    ``coverage_1sigma`` is the fraction of atoms whose error lies within ``factor · σ``; with ``num_members`` given,
    ``promised_coverage_1sigma`` = ``CDF_F(1; 3, 3(M−1))`` is added, the value it should have (0.608 only for M → ∞).
    """
    errors = np.asarray(errors, dtype=float).ravel()
    sigmas = np.asarray(sigmas, dtype=float).ravel()
    scaled = factor * sigmas
    summary = {
        'factor': float(factor),
        'num_pairs': int(len(errors)),
        'rmse_force': float(np.sqrt(np.mean(errors**2))),
        'rms_sigma': float(np.sqrt(np.mean(sigmas**2))),
        'spearman': spearman(errors, sigmas) if len(errors) > 2 else None,
        'coverage_1sigma': float(np.mean(errors <= scaled)),
    }
    if num_members is not None:
        summary['promised_coverage_1sigma'] = float(f_cdf(1.0, 3, 3 * (_check_members(num_members) - 1)))
    return summary


# ------------------------------------------------------------------------------------------------------------ helpers


def _check_members(num_members) -> int:
    if isinstance(num_members, bool) or not isinstance(num_members, numbers.Integral):
        raise ValueError(f'num_members must be an integer, got {num_members!r}')
    if num_members < 2:
        raise ValueError(f'num_members must be at least 2 (σ needs two committee members), got {num_members}')
    return int(num_members)


def _validate(errors, sigmas, frame_index, floor):
    """Flatten and check; returns (errors, floored sigmas, frame codes 0..F−1, F)."""
    errors = np.asarray(errors, dtype=float)
    sigmas = np.asarray(sigmas, dtype=float)
    if errors.shape != sigmas.shape:
        raise ValueError(f'errors and sigmas differ in shape: {errors.shape} vs {sigmas.shape}')
    errors, sigmas = errors.ravel(), sigmas.ravel()
    if len(errors) == 0:
        raise ValueError('calibration needs at least one (error, σ) pair, i.e. at least one frame')
    if not (np.isfinite(errors).all() and np.isfinite(sigmas).all()):
        raise ValueError('errors and sigmas must be finite')
    if (errors < 0).any() or (sigmas < 0).any():
        raise ValueError('errors and sigmas are norms and cannot be negative')
    if not (isinstance(floor, numbers.Real) and floor > 0):
        raise ValueError(f'the σ floor must be positive, got {floor!r}')
    sigmas = np.maximum(sigmas, floor)
    if frame_index is None:
        return errors, sigmas, None, None
    frame_index = np.asarray(frame_index)
    if frame_index.size != errors.size:
        raise ValueError(f'frame_index must have one entry per atom: {frame_index.size} for {errors.size} atoms')
    frame_index = frame_index.ravel()
    if frame_index.dtype.kind not in 'iu':
        if frame_index.dtype.kind != 'f' or not np.isfinite(frame_index).all() \
                or (frame_index != np.round(frame_index)).any():
            raise ValueError(f'frame_index must hold integer frame labels, got {frame_index.dtype} values')
        frame_index = frame_index.astype(np.int64)
    labels, frames = np.unique(frame_index, return_inverse=True)
    return errors, sigmas, frames.ravel(), len(labels)


def _coverage(errors, sigmas, frames, num_frames, factor, num_members, floor) -> dict:
    nu = 3 * (num_members - 1)
    max_sigma = np.full(num_frames, -np.inf)
    np.maximum.at(max_sigma, frames, sigmas)
    max_error = np.full(num_frames, -np.inf)
    np.maximum.at(max_error, frames, errors)
    observed = float(np.mean(max_error <= factor * max_sigma))
    promised_frames, prior = _promised_frames(sigmas, frames, num_frames, num_members, floor)
    promised = float(promised_frames.mean())
    # Flat, independent prior per atom: Π_i CDF_F((max σ)² / σ_i²), in logs to stay finite for big frames.
    log_cdf = np.log(np.maximum(f_cdf(max_sigma[frames] ** 2 / sigmas**2, 3, nu), 1e-300))
    flat = float(np.mean(np.exp(np.bincount(frames, log_cdf, minlength=num_frames))))
    return {
        'factor': float(factor),
        'num_frames': int(num_frames),
        'num_atoms': int(len(errors)),
        'num_members': int(num_members),
        'frame_observed': observed,
        'frame_promised': promised,
        'frame_gap': observed - promised,
        'frame_observed_stderr': float(math.sqrt(max(promised * (1 - promised), 0.0) / num_frames)),
        'frame_promised_flat_prior': flat,
        'atom_observed_1sigma': float(np.mean(errors <= factor * sigmas)),
        'atom_promised_1sigma': float(f_cdf(1.0, 3, nu)),
        'spearman_frame': spearman(max_sigma, max_error) if num_frames >= 3 else None,
        'prior_log_tau2_mean': prior['mean'],
        'prior_log_tau2_var_frame': prior['var_frame'],
        'prior_log_tau2_var_atom': prior['var_atom'],
    }


def _promised_frames(sigmas, frames, num_frames, num_members, floor, points_per_width: float = 2, max_grid: int = 320,
                     chunk_atoms: int = 20_000):
    """Posterior-predictive frame coverage (see :func:`promised_frame_coverage`) and the fitted prior."""
    nu = 3 * (num_members - 1)
    sigma_sq = sigmas**2
    # log σ² = λ + log(χ²_ν / M): remove the noise mean, then split the variance into frame and atom parts (one-way
    # ANOVA by moments), subtracting the known noise variance ψ'(ν/2).
    noise_mean = float(digamma(nu / 2) + math.log(2 / num_members))
    noise_var = float(polygamma(1, nu / 2))
    lam = np.log(sigma_sq) - noise_mean
    # Atoms at the σ floor (members in exact agreement) say nothing about τ and would drag the prior down.
    informative = sigmas > floor
    if not informative.any():
        informative = np.ones_like(informative)
    lam_used, frames_used = lam[informative], frames[informative]
    counts_used = np.bincount(frames_used, minlength=num_frames)
    present = counts_used > 0
    num_used, num_present = len(lam_used), int(present.sum())
    mean = float(lam_used.mean())
    frame_mean = np.bincount(frames_used, lam_used, minlength=num_frames)[present] / counts_used[present]
    if num_used > num_present:
        within = float(((lam_used - (np.bincount(frames_used, lam_used, minlength=num_frames)
                                     / np.maximum(counts_used, 1))[frames_used]) ** 2).sum() / (num_used - num_present))
    else:
        within = noise_var
    var_atom = max(within - noise_var, 0.0)
    var_frame = max(float(frame_mean.var(ddof=1)) - within * float(np.mean(1 / counts_used[present])), 0.0) \
        if num_present > 1 else 0.0

    # A grid in λ fine enough for the likelihood (width ~ √ψ'(ν/2)) and wide enough for prior and likelihood.
    noise_sd = math.sqrt(noise_var)
    prior_sd = math.sqrt(var_atom + var_frame)
    half_width = 6 * prior_sd + 4 * noise_sd
    step = min(noise_sd, max(prior_sd, noise_sd / 4)) / points_per_width
    half = min(max_grid // 2, int(math.ceil(half_width / step)))
    step = half_width / half
    grid = mean + step * np.arange(-half, half + 1)  # centred, so that a point-mass prior sits on a grid point
    # Discretised Gaussians; a variance far below the grid step becomes a point mass on the grid.
    tiny = 1e-9 * step**2
    kernel = np.exp(-0.5 * (grid[None, :] - grid[:, None]) ** 2 / max(var_atom, tiny))
    kernel /= kernel.sum(axis=1, keepdims=True)  # kernel[a, λ] = p(λ | a)
    log_prior = -0.5 * (grid - mean) ** 2 / max(var_frame, tiny)
    max_sigma_sq = np.zeros(num_frames)
    np.maximum.at(max_sigma_sq, frames, sigma_sq)

    order = np.argsort(frames, kind='stable')
    starts = np.concatenate([[0], np.cumsum(np.bincount(frames, minlength=num_frames))])
    promised = np.empty(num_frames)
    first = 0
    while first < num_frames:  # chunks of whole frames bound the memory (atoms × grid)
        last = int(np.searchsorted(starts, starts[first] + chunk_atoms, side='right')) - 1
        last = min(max(last, first + 1), num_frames)
        atoms = order[starts[first]:starts[last]]
        # P(|ΔF_i| ≤ s σ_max | λ) = P(χ²_3 ≤ M σ_max² / ((M−1) e^λ)), the same for all atoms of a frame.
        inside_frames = gammainc(1.5, num_members * max_sigma_sq[first:last, None] / (2 * (num_members - 1))
                                 * np.exp(-grid[None, :]))
        # log p(σ_i² | λ) up to a constant: −(ν/2) λ − (M σ_i² / 2) e^{−λ}.
        loglik = -(nu / 2) * grid[None, :] - (num_members * sigma_sq[atoms, None] / 2) * np.exp(-grid[None, :])
        likelihood = np.exp(loglik - loglik.max(axis=1, keepdims=True))
        inside = inside_frames[frames[atoms] - first]
        marginal = likelihood @ kernel.T  # p(σ_i | a), atoms × grid of a
        joint = (likelihood * inside) @ kernel.T  # p(σ_i, atom inside | a)
        log_marginal = np.log(np.maximum(marginal, 1e-300))
        log_ratio = np.log(np.maximum(joint, 1e-300)) - log_marginal
        bounds = starts[first:last] - starts[first]
        log_weight = np.add.reduceat(log_marginal, bounds, axis=0) + log_prior[None, :]
        log_weight -= log_weight.max(axis=1, keepdims=True)
        weight = np.exp(log_weight)
        weight /= weight.sum(axis=1, keepdims=True)
        promised[first:last] = (weight * np.exp(np.add.reduceat(log_ratio, bounds, axis=0))).sum(axis=1)
        first = last
    prior = {'mean': mean, 'var_frame': var_frame, 'var_atom': var_atom}
    return np.clip(promised, 0.0, 1.0), prior


def _rank(values: np.ndarray) -> np.ndarray:
    """Ranks with ties given their average rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - (counts - 1) / 2.0) - 1)[inverse.ravel()]


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation (ties share their average rank); None when either input is constant."""
    rank_a, rank_b = _rank(np.asarray(a, dtype=float)), _rank(np.asarray(b, dtype=float))
    if rank_a.std() == 0 or rank_b.std() == 0:
        return None
    return float(np.corrcoef(rank_a, rank_b)[0, 1])
