"""Calibration of committee σ on synthetic committees whose statistics are known exactly (pure numpy, fixed seeds)."""

import functools
import math
import warnings

import numpy as np
import pytest

from aiida_alml.selection import (
    calibration_summary, expected_factor, f_cdf, fit_calibration, fit_calibration_factor, frame_coverage,
    promised_frame_coverage,
)

FRAMES, ATOMS = 2000, 8


@functools.lru_cache(maxsize=None)
def committee(num_members, frames=FRAMES, atoms=ATOMS, seed=0, shrink=1.0, member_scale=1.0, atom_sd=0.5,
              frame_sd=0.0):
    """Per-atom (error, σ, frame index), each of shape (frames, atoms), of a synthetic committee.

    Every atom has its own scale τ_i (log-normal across atoms with ``atom_sd``, plus a per-frame log-normal part with
    ``frame_sd``). Members are drawn N(0, (member_scale τ_i)²) per component and the reference N(0, τ_i²); with both
    scales 1 the reference is 'one more member'. ``shrink`` then pulls the members towards their mean by that factor,
    so the spread is ``shrink`` times too small while the error of the mean is unchanged.
    """
    rng = np.random.default_rng(seed)
    tau = 0.1 * np.exp(rng.normal(0.0, atom_sd, (frames, atoms)) + rng.normal(0.0, frame_sd, (frames, 1)))
    members = rng.normal(size=(frames, num_members, atoms, 3)) * (member_scale * tau)[:, None, :, None]
    reference = rng.normal(size=(frames, atoms, 3)) * tau[..., None]
    mean = members.mean(axis=1)
    members = mean[:, None] + (members - mean[:, None]) / shrink
    sigma = np.sqrt(members.var(axis=1).sum(axis=-1))  # ddof=0, as force_sigma
    error = np.linalg.norm(mean - reference, axis=-1)
    frame_index = np.repeat(np.arange(frames), atoms).reshape(frames, atoms)
    for array in (error, sigma, frame_index):
        array.setflags(write=False)
    return error, sigma, frame_index


@functools.lru_cache(maxsize=None)
def fitted(num_members, **kwargs):
    return fit_calibration(*committee(num_members, **kwargs), num_members=num_members, n_bootstrap=400)


def assert_coverage_holds(coverage):
    assert abs(coverage['frame_observed'] - coverage['frame_promised']) <= 0.05, coverage
    assert abs(coverage['atom_observed_1sigma'] - coverage['atom_promised_1sigma']) <= 0.02, coverage


def test_f_cdf_and_expected_factor():
    assert f_cdf(1.0, 3, 3) == pytest.approx(0.5)  # F(d, d) has median 1
    assert f_cdf(1.0, 3, 1e9) == pytest.approx(0.6084, abs=1e-4)  # → P(χ²_3 ≤ 3)
    assert f_cdf(0.0, 3, 6) == 0.0 and f_cdf(-1.0, 3, 6) == 0.0
    assert expected_factor(2) == pytest.approx(math.sqrt(3)) and expected_factor(4) == pytest.approx(math.sqrt(5 / 3))
    # The model claim itself: |ΔF|²/σ² = (M+1)/(M−1) · F(3, 3(M−1)), checked on the empirical CDF.
    for num_members in (2, 4, 8):
        error, sigma, _ = committee(num_members)
        ratio = (error**2 / sigma**2).ravel() / ((num_members + 1) / (num_members - 1))
        for x in (0.2, 0.5, 1.0, 2.0, 5.0):
            assert np.mean(ratio <= x) == pytest.approx(f_cdf(x, 3, 3 * (num_members - 1)), abs=0.015)


@pytest.mark.parametrize('num_members', [2, 4, 8])
def test_factor_for_members_like_reference(num_members):
    result = fitted(num_members)
    expected = math.sqrt((num_members + 1) / (num_members - 1))
    assert result['expected_if_members_like_reference'] == pytest.approx(expected)
    assert result['factor'] == pytest.approx(expected, rel=0.10)
    assert result['factor_over_expected'] == pytest.approx(1.0, abs=0.10)
    low, high = result['interval']
    assert low < expected < high
    assert (result['num_frames'], result['num_atoms'], result['num_members']) == (FRAMES, FRAMES * ATOMS, num_members)
    assert result['confidence'] == 0.95
    assert_coverage_holds(result['coverage'])
    assert result['coverage']['factor'] == result['factor']
    assert result['coverage']['spearman_frame'] > 0.3


@pytest.mark.parametrize('num_members', [2, 4, 8])
def test_factor_when_spread_is_three_times_too_small(num_members):
    result = fitted(num_members, shrink=3.0, seed=1)
    assert result['factor'] == pytest.approx(3 * expected_factor(num_members), rel=0.10)
    assert result['interval'][0] < 3 * expected_factor(num_members) < result['interval'][1]
    assert_coverage_holds(result['coverage'])


@pytest.mark.parametrize('num_members', [2, 4, 8])
def test_factor_when_members_are_drawn_too_narrow(num_members):
    """Members drawn with τ/3 and the reference with τ: the mean's error shrinks too, so s² = (9M + 1)/(M − 1).

    That is not 3·√((M+1)/(M−1)) (−16 % for M = 2); the fitted factor follows the true ratio and coverage still holds.
    """
    result = fitted(num_members, member_scale=1 / 3)
    assert result['factor'] == pytest.approx(math.sqrt((9 * num_members + 1) / (num_members - 1)), rel=0.05)
    assert_coverage_holds(result['coverage'])


def test_mean_of_ratios_is_biased_for_two_members():
    error, sigma, _ = committee(2)
    target = expected_factor(2)
    old = math.sqrt(np.mean(error**2 / sigma**2))  # the former estimator: each σ taken as exact
    assert old > 1.5 * target  # ≈ 3.0 instead of 1.73: E[1/χ²_3] = 1, not 1/3
    assert fitted(2)['factor'] == pytest.approx(target, rel=0.10)
    assert fit_calibration_factor(error, sigma) == pytest.approx(fitted(2)['factor'])


@pytest.mark.parametrize('num_members', [2, 4, 8])
def test_coverage_with_scales_varying_between_frames(num_members):
    """Frame coverage is judged at the true factor, where τ varies mostly from frame to frame."""
    error, sigma, frames = committee(num_members, frame_sd=1.0, atom_sd=0.3, seed=3)
    coverage = frame_coverage(error, sigma, frames, expected_factor(num_members), num_members)
    assert_coverage_holds(coverage)
    assert coverage['prior_log_tau2_var_frame'] == pytest.approx(4.0, rel=0.2)  # (2 · frame_sd)²
    assert coverage['prior_log_tau2_var_atom'] == pytest.approx(0.36, abs=0.1)  # (2 · atom_sd)²


def test_flat_prior_promise_is_too_pessimistic_for_small_committees():
    coverage = fitted(2)['coverage']
    assert coverage['frame_promised_flat_prior'] < coverage['frame_observed'] - 0.2


def test_miscalibrated_factor_fails_the_coverage_check():
    error, sigma, frames = committee(4)
    factor = fitted(4)['factor']
    too_small = frame_coverage(error, sigma, frames, factor / 2, 4)
    assert too_small['frame_observed'] < too_small['frame_promised'] - 0.2
    assert too_small['frame_gap'] < -10 * too_small['frame_observed_stderr']
    assert too_small['atom_observed_1sigma'] < too_small['atom_promised_1sigma'] - 0.2
    too_large = frame_coverage(error, sigma, frames, factor * 2, 4)
    assert too_large['frame_observed'] > too_large['frame_promised'] + 0.2
    # the promise does not depend on the factor under test
    assert too_small['frame_promised'] == pytest.approx(too_large['frame_promised'])


def test_bootstrap_interval_contains_truth_narrows_and_is_reproducible():
    truth = expected_factor(4)
    small = fit_calibration(*committee(4, frames=250, seed=7), num_members=4, n_bootstrap=400)
    large = fitted(4)  # 2000 frames
    for result in (small, large):
        assert result['interval'][0] < result['factor'] < result['interval'][1]
        assert result['interval'][0] < truth < result['interval'][1]
    width = lambda result: result['interval'][1] - result['interval'][0]  # noqa: E731
    assert width(large) < 0.5 * width(small)  # ~ 1/√8
    again = fit_calibration(*committee(4, frames=250, seed=7), num_members=4, n_bootstrap=400)
    assert again == small
    other = fit_calibration(*committee(4, frames=250, seed=7), num_members=4, n_bootstrap=400, seed=1)
    assert other['factor'] == small['factor'] and other['interval'] != small['interval']
    narrow = fit_calibration(*committee(4, frames=250, seed=7), num_members=4, n_bootstrap=400, confidence=0.5)
    assert width(narrow) < width(small)


def test_frame_labels_need_not_be_sorted_or_contiguous():
    error, sigma, frames = committee(4, frames=300)
    order = np.random.default_rng(1).permutation(error.size)
    labels = (10 * frames + 7).ravel()[order]
    shuffled = fit_calibration(error.ravel()[order], sigma.ravel()[order], labels, 4, n_bootstrap=200)
    reference = fit_calibration(error, sigma, frames, 4, n_bootstrap=200)
    assert shuffled['factor'] == pytest.approx(reference['factor'])
    assert shuffled['coverage'] == pytest.approx(reference['coverage'])
    promised = promised_frame_coverage(sigma, frames, 4)
    assert promised.shape == (300,) and ((promised >= 0) & (promised <= 1)).all()
    assert promised.mean() == pytest.approx(reference['coverage']['frame_promised'])


def test_frames_of_different_sizes():
    error, sigma, frames = committee(4)
    keep = ~((frames % 2 == 1) & (np.arange(ATOMS)[None, :] % 2 == 0))  # odd frames keep 4 atoms of 8
    ragged = frame_coverage(error[keep], sigma[keep], frames[keep], expected_factor(4), 4)
    assert ragged['num_frames'] == FRAMES and ragged['num_atoms'] == keep.sum()
    assert_coverage_holds(ragged)


def test_atoms_where_members_agree_exactly():
    """Frozen atoms (σ = 0, error 0) are floored, do not distort the prior and raise no warnings."""
    error, sigma, frames = committee(4)
    frozen = np.zeros((FRAMES, 2))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        result = fit_calibration(np.hstack([error, frozen]), np.hstack([sigma, frozen]),
                                 np.hstack([frames, frames[:, :2]]), 4, n_bootstrap=200)
    assert result['factor'] == pytest.approx(fitted(4)['factor'], rel=1e-6)
    coverage = result['coverage']
    assert coverage['frame_promised'] == pytest.approx(fitted(4)['coverage']['frame_promised'], abs=0.01)
    assert abs(coverage['frame_observed'] - coverage['frame_promised']) <= 0.05


def test_one_and_two_frames():
    error, sigma, frames = committee(2, frames=2)
    single = fit_calibration(error[:1], sigma[:1], frames[:1], 2, n_bootstrap=50)
    assert single['num_frames'] == 1 and single['interval'] == [single['factor'], single['factor']]
    assert single['coverage']['spearman_frame'] is None
    assert 0 <= single['coverage']['frame_promised'] <= 1
    assert fit_calibration(error, sigma, frames, 2, n_bootstrap=50)['coverage']['spearman_frame'] is None


def test_legacy_functions_stay_compatible():
    error, sigma, frames = committee(8)
    factor = fit_calibration_factor(error, sigma)
    assert factor == pytest.approx(fitted(8)['factor'])
    summary = calibration_summary(error, sigma, factor, num_members=8)
    assert {'factor', 'num_pairs', 'rmse_force', 'rms_sigma', 'spearman', 'coverage_1sigma'} < set(summary)
    assert summary['coverage_1sigma'] == pytest.approx(summary['promised_coverage_1sigma'], abs=0.02)
    assert 'promised_coverage_1sigma' not in calibration_summary(error, sigma, factor)


GOOD = (np.array([0.1, 0.2, 0.3]), np.array([0.1, 0.1, 0.2]), np.array([0, 0, 1]))


@pytest.mark.parametrize('change, message', [
    ({'errors': np.array([0.1, 0.2])}, 'differ in shape'),
    ({'frame_index': np.array([0, 1])}, 'one entry per atom'),
    ({'frame_index': np.array([0.0, 0.5, 1.0])}, 'integer frame labels'),
    ({'frame_index': np.array(['a', 'b', 'c'])}, 'integer frame labels'),
    ({'errors': np.array([0.1, np.nan, 0.3])}, 'must be finite'),
    ({'sigmas': np.array([0.1, np.inf, 0.3])}, 'must be finite'),
    ({'sigmas': np.array([0.1, -0.1, 0.3])}, 'cannot be negative'),
    ({'errors': np.array([]), 'sigmas': np.array([]), 'frame_index': np.array([], dtype=int)}, 'at least one'),
    ({'errors': np.zeros(3)}, 'all errors are zero'),
    ({'num_members': 1}, 'at least 2'),
    ({'num_members': 2.5}, 'must be an integer'),
    ({'confidence': 1.0}, 'strictly between 0 and 1'),
    ({'n_bootstrap': 0}, 'positive integer'),
    ({'floor': 0.0}, 'floor must be positive'),
])
def test_fit_calibration_bad_input(change, message):
    arguments = {'errors': GOOD[0], 'sigmas': GOOD[1], 'frame_index': GOOD[2], 'num_members': 4, **change}
    with pytest.raises(ValueError, match=message):
        fit_calibration(**arguments)


@pytest.mark.parametrize('factor', [0.0, -1.0, float('nan'), float('inf')])
def test_frame_coverage_bad_factor(factor):
    with pytest.raises(ValueError, match='positive finite'):
        frame_coverage(*GOOD, factor=factor, num_members=4)
    with pytest.raises(ValueError, match='at least 2'):
        frame_coverage(*GOOD, factor=1.0, num_members=1)
