"""Selection building blocks (pure numpy, no AiiDA profile needed)."""

import numpy as np
import pytest
from ase.build import bulk

from aiida_alml.selection import (
    REASONS, ACCURATE, CANDIDATE, FAILED, calibration_summary, classify, distance_to_set, farthest_point_sampling,
    fit_calibration_factor, force_sigma, frame_uncertainty, radial_descriptor, select_frames,
)


def test_force_sigma_matches_definition():
    rng = np.random.default_rng(0)
    forces = rng.normal(size=(4, 7, 3))  # members, atoms, xyz
    expected = np.array([
        np.sqrt(sum(np.mean((forces[:, atom, c] - forces[:, atom, c].mean()) ** 2) for c in range(3)))
        for atom in range(7)
    ])
    np.testing.assert_allclose(force_sigma(forces), expected, rtol=1e-12)
    assert force_sigma(np.stack([forces] * 5)).shape == (5, 7)  # frames batch over the leading axis
    with pytest.raises(ValueError, match='at least two committee members'):
        force_sigma(forces[:1])


def test_frame_uncertainty_is_max_over_atoms_scaled():
    sigma = np.array([[0.01, 0.20, 0.02], [0.03, 0.01, 0.04]])
    np.testing.assert_allclose(frame_uncertainty(sigma, calibration=2.0), [0.40, 0.08])
    with pytest.raises(ValueError, match='calibration factor must be positive'):
        frame_uncertainty(sigma, calibration=0.0)


def test_classify_and_trust_window_errors():
    classes = classify([0.01, 0.05, 0.1, 0.15, 0.2, np.nan], 0.05, 0.15)
    assert classes.tolist() == [ACCURATE, CANDIDATE, CANDIDATE, CANDIDATE, FAILED, FAILED]
    with pytest.raises(ValueError, match=r'trust_lo \(0.2\) must be smaller than trust_hi \(0.1\)'):
        classify([0.1], 0.2, 0.1)
    with pytest.raises(ValueError, match='trust_lo must be positive'):
        classify([0.1], 0.0, 0.1)


def test_farthest_point_sampling_spreads_out():
    # two tight clusters and one outlier: three picks must hit all three groups
    rng = np.random.default_rng(1)
    points = np.concatenate([rng.normal(0, 0.01, (20, 2)), rng.normal(5, 0.01, (20, 2)), [[0.0, 10.0]]])
    picks = farthest_point_sampling(points, 3)
    groups = {0 if i < 20 else 1 if i < 40 else 2 for i in picks}
    assert groups == {0, 1, 2} and len(set(picks)) == 3
    # with existing data near cluster 0, the first pick is the point farthest from it
    first = farthest_point_sampling(points, 1, existing=np.zeros((1, 2)))[0]
    assert first == 40
    assert farthest_point_sampling(points, 100) and len(farthest_point_sampling(points, 100)) == len(points)


def test_distance_to_set():
    d = distance_to_set(np.array([[0.0, 0.0], [3.0, 4.0]]), np.array([[0.0, 0.0], [3.0, 0.0]]))
    np.testing.assert_allclose(d, [0.0, 4.0])
    assert np.isinf(distance_to_set(np.zeros((2, 2)), None)).all()


def test_descriptor_is_invariant_and_discriminating():
    atoms = bulk('Cu', 'fcc', a=3.6, cubic=True).repeat(2)
    base = radial_descriptor(atoms, [29])
    shuffled = atoms[np.random.default_rng(0).permutation(len(atoms))]
    shuffled.rotate(30, 'z', rotate_cell=True)
    np.testing.assert_allclose(radial_descriptor(shuffled, [29]), base, atol=1e-10)
    np.testing.assert_allclose(radial_descriptor(atoms.repeat((2, 1, 1)), [29]), base, atol=1e-10)
    compressed = atoms.copy()
    compressed.set_cell(atoms.cell * 0.95, scale_atoms=True)
    assert np.linalg.norm(radial_descriptor(compressed, [29]) - base) > 0.1 * np.linalg.norm(base)
    with pytest.raises(ValueError, match='element 29 is not among'):
        radial_descriptor(atoms, [13])


def test_select_frames_fps_caps_dedups_and_explains():
    uncertainty = np.array([0.01, 0.08, 0.09, 0.10, 0.11, 0.30, 0.07])
    descriptors = np.array([[0.5], [1.0], [1.001], [2.0], [3.0], [4.0], [0.005]])
    result = select_frames(uncertainty, descriptors, 0.05, 0.15, labels_per_iteration=2,
                           training_descriptors=np.array([[0.0]]), min_distance=0.01)
    assert result.counts() == {'accurate': 1, 'candidate': 5, 'failed': 1}
    assert result.reasons[0] == 'accurate' and result.reasons[5] == 'failed'
    assert result.reasons[6] == 'duplicate'  # closer than min_distance to the training data
    # farthest from the training data first (3.0), then the point farthest from both (1.001)
    assert result.order == [4, 2] and result.chosen.sum() == 2
    assert [result.reasons[i] for i in (1, 3)] == ['capped', 'capped']


def test_select_frames_drops_duplicates_among_picks():
    descriptors = np.array([[0.0], [0.001], [5.0]])
    result = select_frames(np.full(3, 0.1), descriptors, 0.05, 0.15, labels_per_iteration=3, min_distance=0.01)
    assert sorted(result.order) in ([0, 2], [1, 2]) and result.reasons.count('duplicate') == 1


def test_select_frames_random_baseline_same_count():
    rng = np.random.default_rng(3)
    uncertainty = rng.uniform(0, 0.2, 200)
    descriptors = rng.normal(size=(200, 4))
    fps = select_frames(uncertainty, descriptors, 0.05, 0.15, 10)
    random = select_frames(uncertainty, descriptors, 0.05, 0.15, 10, mode='random', seed=1)
    assert len(fps.order) == len(random.order) == 10
    assert random.order == select_frames(uncertainty, descriptors, 0.05, 0.15, 10, mode='random', seed=1).order
    assert set(random.reasons[i] for i in random.order) == {'random'}
    # the baseline draws from every counted frame, whatever its σ: over many draws all classes turn up
    drawn = np.concatenate([select_frames(uncertainty, descriptors, 0.05, 0.15, 10, mode='random', seed=k).order
                            for k in range(20)])
    assert set(fps.classes[drawn].tolist()) == {ACCURATE, CANDIDATE, FAILED}
    for result in (fps, random):  # every frame's reason is one the record explains
        assert set(result.reasons) <= set(REASONS)
    candidates_only = select_frames(uncertainty, descriptors, 0.05, 0.15, 10, mode='random_candidates', seed=1)
    assert set(candidates_only.reasons) <= set(REASONS)
    assert len(candidates_only.order) == 10 and (candidates_only.classes[candidates_only.order] == CANDIDATE).all()


def test_random_physical_baseline_never_draws_unphysical_frames():
    """The baseline that shares weighted's filter: uniform over physical counted frames of every class, never a frame
    whose atoms came too close, and the unphysical ones are recorded as such."""
    rng = np.random.default_rng(5)
    uncertainty = rng.uniform(0, 0.3, 120)
    descriptors = rng.normal(size=(120, 3))
    closest = np.full(120, 2.4)
    closest[::4] = 1.1  # a quarter of the frames lost their way
    step = np.tile(np.arange(6), 20)  # every sixth frame is a start
    drawn = []
    for seed in range(30):
        result = select_frames(uncertainty, descriptors, 0.05, 0.15, 8, mode='random_physical', seed=seed,
                               step=step, closest=closest, min_closest=1.6)
        assert len(result.order) == 8
        assert (closest[result.order] >= 1.6).all() and (step[result.order] != 0).all()
        assert {result.reasons[i] for i in result.order} == {'random_physical'}
        assert all(result.reasons[i] == 'unphysical' for i in np.flatnonzero((closest < 1.6) & (step != 0)))
        assert set(result.reasons) <= set(REASONS)
        drawn.extend(result.order)
    assert set(result.classes[drawn].tolist()) == {ACCURATE, CANDIDATE, FAILED}
    # the plain baseline does draw unphysical frames from the same pool
    plain = np.concatenate([select_frames(uncertainty, descriptors, 0.05, 0.15, 8, mode='random', seed=k, step=step,
                                          closest=closest, min_closest=1.6).order for k in range(30)])
    assert (closest[plain] < 1.6).any()


@pytest.mark.parametrize('kwargs, message', [
    ({'labels_per_iteration': 0}, 'labels_per_iteration must be positive'),
    ({'mode': 'best'}, 'selection mode must be one of fps, random, random_candidates, random_physical, weighted'),
    ({'min_closest': -1.0}, 'min_closest must be non-negative'),
    ({'closest': np.ones(2)}, 'closest needs one entry per frame'),
    ({'min_distance': -1.0}, 'min_distance must be non-negative'),
])
def test_select_frames_bad_input(kwargs, message):
    arguments = {'labels_per_iteration': 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        select_frames(np.full(3, 0.1), np.zeros((3, 1)), 0.05, 0.15, **arguments)


def test_weighted_mode_ranks_failed_frames_by_sigma_times_novelty_and_skips_unphysical_ones():
    # frames: 0 accurate; 1 candidate, new; 2 failed, most uncertain but two atoms 1.0 Å apart; 3 failed, uncertain
    # and new; 4 failed, as uncertain as 3 but a copy of the training environment at 0; 5 failed, uncertain, close
    # to 3 in descriptor space
    uncertainty = np.array([0.01, 0.10, 2.00, 0.60, 0.60, 0.55])
    descriptors = np.array([[1.0], [2.0], [5.0], [4.0], [0.01], [3.95]])
    closest = np.array([2.4, 2.4, 1.0, 2.3, 2.4, 2.3])
    result = select_frames(uncertainty, descriptors, 0.05, 0.15, labels_per_iteration=2, mode='weighted',
                           training_descriptors=np.array([[0.0]]), closest=closest, min_closest=1.9)
    # σ × distance: 3 → 0.6·4 = 2.4 first; then 1 → 0.1·2 = 0.2 beats 5 (0.55·0.05) and 4 (0.6·0.01)
    assert result.order == [3, 1]
    assert [result.reasons[i] for i in result.order] == ['weighted', 'weighted']
    assert result.reasons[2] == 'unphysical' and result.reasons[0] == 'accurate'
    assert {result.reasons[i] for i in (4, 5)} == {'capped'}
    assert set(result.reasons) <= set(REASONS)
    # the same frames under fps: candidates first, then the earliest failed frame, whatever its σ or contacts
    fps = select_frames(uncertainty, descriptors, 0.05, 0.15, labels_per_iteration=2,
                        training_descriptors=np.array([[0.0]]), closest=closest, min_closest=1.9)
    assert fps.order == [1, 2]


def test_weighted_mode_prefers_one_distorted_environment_over_a_shifted_copy():
    """The issue's check on real descriptors: a cell with one displaced atom beats a rigidly shifted training cell."""
    from aiida_alml.selection import selection_descriptors

    training = bulk('Cu', 'fcc', a=3.6, cubic=True).repeat(2)
    shifted = training.copy()
    shifted.positions += [0.7, 0.3, 0.2]
    distorted = training.copy()
    distorted.positions[5] += [0.35, -0.2, 0.1]
    frames = [shifted, distorted]
    sigma = [np.full(len(atoms), 0.2) for atoms in frames]  # equal σ: the choice is the descriptors'
    for index, atoms in enumerate(frames):
        sigma[index][5] = 0.3
    descriptors, reference = selection_descriptors(frames, [training], sigma, [29])
    result = select_frames(np.array([0.3, 0.3]), descriptors, 0.05, 0.15, labels_per_iteration=1, mode='weighted',
                           training_descriptors=reference)
    assert result.order == [1] and result.reasons[0] == 'known'


def test_calibration_recovers_known_scale():
    rng = np.random.default_rng(5)
    sigmas = rng.uniform(0.02, 0.2, 20000)
    true_scale = 2.5
    errors = np.linalg.norm(rng.normal(size=(20000, 3)) * (true_scale * sigmas / np.sqrt(3))[:, None], axis=1)
    factor = fit_calibration_factor(errors, sigmas)
    assert factor == pytest.approx(true_scale, rel=0.02)
    summary = calibration_summary(errors, sigmas, factor)
    assert summary['coverage_1sigma'] == pytest.approx(0.608, abs=0.02) and summary['spearman'] > 0.5
    with pytest.raises(ValueError, match='differ in shape'):
        fit_calibration_factor(errors[:3], sigmas[:2])
    with pytest.raises(ValueError, match='at least one'):
        fit_calibration_factor([], [])


def test_uncalibrated_committee_without_candidates_labels_accurate_frames():
    descriptors = np.array([[0.0], [1.0], [2.0], [3.0]])
    confident = np.full(4, 0.01)
    assert select_frames(confident, descriptors, 0.05, 0.15, 2).order == []
    result = select_frames(confident, descriptors, 0.05, 0.15, 2, calibrate_with_accurate=True)
    assert sorted(result.order) == [0, 3]  # diverse: the two ends
    assert [result.reasons[i] for i in result.order] == ['calibration', 'calibration']
    # with candidates present the fallback does nothing
    mixed = np.array([0.01, 0.1, 0.01, 0.01])
    assert select_frames(mixed, descriptors, 0.05, 0.15, 2, calibrate_with_accurate=True).order == [1]


def test_starts_and_copies_of_training_data_are_neither_counted_nor_chosen():
    # two trajectories of three frames; step-0 frames are the starting structure, frame 4 repeats a training frame
    uncertainty = np.array([0.01, 0.02, 0.10, 0.01, 0.03, 0.01])
    descriptors = np.array([[0.0, 1.0], [0.3, 1.0], [0.9, 1.0], [0.0, 1.0], [2.0, 1.0], [1.5, 1.0]])
    trajectory = np.array([0, 0, 0, 1, 1, 1])
    step = np.array([0, 10, 20, 0, 10, 20])
    result = select_frames(uncertainty, descriptors, 0.05, 0.15, 3, training_descriptors=np.array([[2.0, 1.0]]),
                           trajectory=trajectory, step=step)
    assert [result.reasons[i] for i in (0, 3, 4)] == ['start', 'start', 'known']
    assert result.counted.tolist() == [False, True, True, False, False, True]
    assert result.counts() == {'accurate': 2, 'candidate': 1, 'failed': 0}
    assert result.order == [2]
    # frames a run never sampled (an early stop) count as failed: 3 counted + 1 missing
    fractions = result.fractions(missing=1)
    assert fractions['accurate'] == pytest.approx(0.5) and fractions['failed'] == pytest.approx(0.25)
    assert result.fractions()['failed'] == 0.0


def test_rescue_labels_the_earliest_failed_frames_when_candidates_are_scarce():
    # three hot trajectories: one candidate in all, most frames failed (σ above trust_hi)
    uncertainty = np.array([0.01, 0.12, 0.40, 0.90, 0.01, 0.30, 0.60, 0.01, 0.02, 0.20])
    trajectory = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    step = np.array([0, 10, 20, 30, 0, 10, 20, 0, 10, 20])
    descriptors = np.arange(10.0)[:, None]
    result = select_frames(uncertainty, descriptors, 0.05, 0.15, 5, trajectory=trajectory, step=step)
    # the candidate first, then the first failed frame of each trajectory, then the second ones
    assert result.order[0] == 1 and result.reasons[1] == 'chosen'
    assert result.order[1:] == [2, 5, 9, 3]
    assert [result.reasons[i] for i in result.order[1:]] == ['rescue'] * 4
    assert result.reasons[6] == 'failed' and len(result.order) == 5
    # switched off, the same exploration labels just the candidate
    assert select_frames(uncertainty, descriptors, 0.05, 0.15, 5, trajectory=trajectory, step=step,
                         rescue_failed=False).order == [1]


def test_local_descriptors_see_one_distorted_environment_in_a_big_cell():
    from aiida_alml.selection import local_descriptors, selection_descriptors

    cell = bulk('Cu', 'fcc', a=3.61, cubic=True).repeat(3)  # 108 atoms
    rng = np.random.default_rng(0)
    training = cell.copy()
    training.positions += rng.normal(0, 0.02, training.positions.shape)
    shifted = training.copy()
    shifted.positions += [0.7, -0.3, 1.1]  # the training frame moved rigidly: nothing new
    distorted = training.copy()
    distorted.positions[40] += [0.45, 0.2, 0.0]  # one atom pushed towards its neighbours: one new environment
    base = local_descriptors(training, [29])
    np.testing.assert_allclose(local_descriptors(shifted, [29]), base, atol=1e-9)
    changed = np.abs(local_descriptors(distorted, [29]) - base).max(axis=1) > 1e-6
    assert changed[40] and changed.sum() < len(cell) / 2  # the displaced atom and its neighbourhood only

    # Both frames are candidates with the same σ everywhere but the atom each would blame; one label to give.
    sigma = np.full((2, len(cell)), 0.08)
    sigma[0, 40] = sigma[1, 40] = 0.1
    frames, reference = selection_descriptors([shifted, distorted], [training], list(sigma), [29])
    result = select_frames(np.array([0.1, 0.1]), frames, 0.05, 0.15, 1, training_descriptors=reference,
                           trajectory=np.array([0, 1]), step=np.array([10, 10]))
    assert result.order == [1] and result.reasons[0] == 'known'
    # the global pair-distance histogram per atom moves much less: relative to each description's own scale, the
    # distorted frame lies over 5x farther from the training data in ours (measured: 0.084 against 0.013)
    glob_frames, glob_reference = selection_descriptors([shifted, distorted], [training], list(sigma), [29],
                                                        kind='radial')
    relative_global = distance_to_set(glob_frames[1:], glob_reference)[0] / np.linalg.norm(glob_reference)
    relative_local = distance_to_set(frames[1:], reference)[0] / np.linalg.norm(reference, axis=1).mean()
    assert relative_local > 5 * relative_global
    with pytest.raises(ValueError, match="descriptor kind must be 'local' or 'radial'"):
        selection_descriptors([shifted], [training], list(sigma[:1]), [29], kind='soap')
