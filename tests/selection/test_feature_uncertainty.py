"""Feature-space (LLPR / Mahalanobis) uncertainty: behaviour on synthetic per-atom features."""

from __future__ import annotations

import numpy as np
import pytest

from aiida_alml.selection.feature_uncertainty import FeatureSpaceUncertainty

DIM = 6


def _training(seed=0, frames=10, atoms=8):
    """Frames of two elements whose features lie near a 3-dimensional subspace (as real features do: correlated)."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(3, DIM))
    features, species = [], []
    for _ in range(frames):
        f = rng.normal(size=(atoms, 3)) @ basis + 0.01 * rng.normal(size=(atoms, DIM))
        s = np.array([8, 1] * (atoms // 2))
        f[s == 8] += 3.0  # the elements sit in different regions
        features.append(f)
        species.append(s)
    return features, species, basis


@pytest.mark.parametrize('centred', [False, True])
def test_far_environment_is_more_uncertain_than_a_training_one(centred):
    features, species, _ = _training()
    estimator = FeatureSpaceUncertainty(centred=centred).fit(features, species)
    inside = estimator.atom_uncertainty(features[0], species[0])
    # the same frame with one atom pushed along a direction the training set never spanned
    rng = np.random.default_rng(5)
    far = features[0].copy()
    far[2] += 2.0 * rng.normal(size=DIM)
    outside = estimator.atom_uncertainty(far, species[0])
    assert outside[2] > 4 * inside.max()
    np.testing.assert_allclose(np.delete(outside, 2), np.delete(inside, 2))
    frames = estimator.frame_uncertainty([features[0], far], [species[0], species[0]])
    assert frames[1] > 4 * frames[0]
    energies = estimator.energy_uncertainty([features[0], far], [species[0], species[0]])
    assert energies[1] > energies[0]


def test_new_frames_from_the_training_distribution_look_like_the_training_frames():
    features, species, basis = _training(seed=0, frames=20)
    estimator = FeatureSpaceUncertainty(centred=True).fit(features, species)
    fresh, fresh_species, _ = _training(seed=1, frames=5)  # other draws, other basis: off the training subspace
    rng = np.random.default_rng(2)
    same = [rng.normal(size=(8, 3)) @ basis + 0.01 * rng.normal(size=(8, DIM)) for _ in range(5)]
    for f, s in zip(same, fresh_species):
        f[s == 8] += 3.0
    in_distribution = estimator.frame_uncertainty(same, fresh_species)
    training = estimator.frame_uncertainty(features, species)
    off_subspace = estimator.frame_uncertainty(fresh, fresh_species)
    assert in_distribution.max() < 3 * training.max()
    assert off_subspace.min() > 3 * in_distribution.max()


def test_invariant_to_atom_order_and_frame_scores_follow_atoms():
    features, species, _ = _training()
    estimator = FeatureSpaceUncertainty().fit(features, species)
    order = np.random.default_rng(3).permutation(len(species[0]))
    atoms = estimator.atom_uncertainty(features[0], species[0])
    permuted = estimator.atom_uncertainty(features[0][order], species[0][order])
    np.testing.assert_allclose(permuted, atoms[order])
    np.testing.assert_allclose(estimator.frame_uncertainty([features[0][order]], [species[0][order]]),
                               estimator.frame_uncertainty([features[0]], [species[0]]))
    np.testing.assert_allclose(estimator.energy_uncertainty([features[0][order]], [species[0][order]]),
                               estimator.energy_uncertainty([features[0]], [species[0]]))
    # the fit does not depend on the order of the training atoms either
    shuffled = FeatureSpaceUncertainty().fit([f[order] for f in features], [s[order] for s in species])
    np.testing.assert_allclose(shuffled.atom_uncertainty(features[1], species[1]),
                               estimator.atom_uncertainty(features[1], species[1]))


def test_uncentred_variance_is_the_linear_model_posterior_variance():
    """u² = fᵀ (FᵀF/n + λI)⁻¹ f with λ = regularisation · tr(FᵀF/n)/d, computed the direct way."""
    features, species, _ = _training()
    estimator = FeatureSpaceUncertainty(regularisation=1e-2).fit(features, species)
    rows = np.concatenate(features)[np.concatenate(species) == 1]
    moment = rows.T @ rows / len(rows)
    posterior = np.linalg.inv(moment + 1e-2 * np.trace(moment) / DIM * np.eye(DIM))
    hydrogen = features[3][species[3] == 1]
    expected = np.sqrt(np.einsum('ij,jk,ik->i', hydrogen, posterior, hydrogen))
    np.testing.assert_allclose(estimator.atom_uncertainty(features[3], species[3])[species[3] == 1], expected)


def test_scale_free_and_calibration_matches_errors():
    features, species, _ = _training()
    plain = FeatureSpaceUncertainty().fit(features, species)
    scaled = FeatureSpaceUncertainty().fit([100 * f for f in features], species)
    np.testing.assert_allclose(scaled.frame_uncertainty([100 * features[0]], [species[0]]),
                               plain.frame_uncertainty([features[0]], [species[0]]))
    raw = plain.frame_uncertainty(features, species)
    scales = plain.calibrate(features, species, max_force_errors=0.3 * raw)
    assert scales['force_scale'] == pytest.approx(0.3)
    np.testing.assert_allclose(plain.frame_uncertainty(features, species), 0.3 * raw)
    assert scales['energy_scale'] == 1.0  # not given, not changed


def test_bad_inputs_are_refused_with_clear_messages():
    features, species, _ = _training()
    estimator = FeatureSpaceUncertainty()
    with pytest.raises(RuntimeError, match='not fitted'):
        estimator.frame_uncertainty(features, species)
    with pytest.raises(ValueError, match='sequence of per-frame'):
        estimator.fit(features[0], species[0])
    with pytest.raises(ValueError, match=r'frame 1: features must have shape \(n_atoms, n_features\)'):
        estimator.fit([features[0], features[1][0]], species[:2])
    with pytest.raises(ValueError, match=r'frame 0: species must have shape \(8,\)'):
        estimator.fit([features[0]], [species[0][:3]])
    with pytest.raises(ValueError, match='features of 2 frames but species of 1'):
        estimator.fit(features[:2], species[:1])
    with pytest.raises(ValueError, match='NaN'):
        estimator.fit([np.full((8, DIM), np.nan)], species[:1])
    with pytest.raises(ValueError, match='zero spread'):
        FeatureSpaceUncertainty(centred=True).fit([np.ones((8, DIM))], species[:1])
    with pytest.raises(ValueError, match='regularisation must be positive'):
        FeatureSpaceUncertainty(regularisation=0)
    estimator.fit(features, species)
    with pytest.raises(ValueError, match='5 features per atom, but fitted on 6'):
        estimator.frame_uncertainty([features[0][:, :5]], species[:1])
    with pytest.raises(ValueError, match=r'element Z=6 has no training atoms; fitted elements: Z=\[1, 8\]'):
        estimator.atom_uncertainty(features[0], np.full(8, 6))
    with pytest.raises(ValueError, match='one value per frame'):
        estimator.calibrate(features, species, max_force_errors=np.ones(3))
