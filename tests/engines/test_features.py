"""``aiida_alml.engines.features``: per-atom invariant features of a tiny trained MACE model (no AiiDA needed)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

pytest.importorskip('mace')
pytestmark = [
    pytest.mark.slow,  # the module fixture trains one tiny MACE member
    pytest.mark.filterwarnings('ignore:`torch.jit.:DeprecationWarning'),
    pytest.mark.filterwarnings('ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD:UserWarning'),
]

from helpers.mace import TINY, cu_cell, make_cu_dataset, train_committee  # noqa: E402

from aiida_alml.engines.committee import CommitteeCalculator  # noqa: E402
from aiida_alml.engines.features import atomic_features, load_feature_model  # noqa: E402
from aiida_alml.selection.feature_uncertainty import FeatureSpaceUncertainty  # noqa: E402


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    (path,) = train_committee(tmp_path_factory.mktemp('features'), seeds=[1], epochs=2)
    return load_feature_model(path)


def _rattled(seed, repeat=(2, 2, 1)):
    atoms = cu_cell(repeat)
    atoms.rattle(stdev=0.1, seed=seed)
    return atoms


def test_node_features_are_the_scalar_channels_of_every_layer(model):
    frames = [_rattled(1), _rattled(2, (2, 1, 1))]
    features = atomic_features(model, frames, kind='node')
    assert [f.shape for f in features] == [(16, 2 * TINY['num_channels']), (8, 2 * TINY['num_channels'])]
    # batched and one-by-one evaluation agree
    np.testing.assert_allclose(atomic_features(model, frames[1:], kind='node')[0], features[1], atol=1e-12)


def test_atomic_energy_is_linear_in_the_last_layer_features(model):
    """The definition LLPR needs: the model's atomic energies are an affine function of these features."""
    frames = [_rattled(seed) for seed in range(4)]
    features = np.concatenate(atomic_features(model, frames, kind='last_layer'))
    calculator = CommitteeCalculator(models=[model])
    energies = np.concatenate([calculator.evaluate(a, compute_stress=False)['node_energies'][0] for a in frames])
    design = np.hstack([features, np.ones((len(features), 1))])
    assert len(features) > design.shape[1]
    coefficients, *_ = np.linalg.lstsq(design, energies, rcond=None)
    np.testing.assert_allclose(design @ coefficients, energies, atol=1e-8)
    # the node features alone do not give it (the final readout is non-linear): the check above has teeth
    nodes = np.concatenate(atomic_features(model, frames, kind='node'))
    design = np.hstack([nodes, np.ones((len(nodes), 1))])
    coefficients, *_ = np.linalg.lstsq(design, energies, rcond=None)
    assert np.abs(design @ coefficients - energies).max() > 1e-6


@pytest.mark.parametrize('kind', ['node', 'last_layer'])
def test_features_follow_atoms_and_ignore_rotations(model, kind):
    atoms = _rattled(3)
    reference = atomic_features(model, [atoms], kind=kind)[0]
    order = np.random.default_rng(0).permutation(len(atoms))
    np.testing.assert_allclose(atomic_features(model, [atoms[order]], kind=kind)[0], reference[order], atol=1e-10)
    rotated = atoms.copy()
    rotated.rotate(37, 'x', rotate_cell=True)
    rotated.rotate(-71, (1, 1, 0), rotate_cell=True)
    rotated.translate([0.3, -1.1, 2.0])
    np.testing.assert_allclose(atomic_features(model, [rotated], kind=kind)[0], reference, atol=1e-8)


def test_compressed_copper_is_farther_from_training_than_training_like_cells(model):
    training = make_cu_dataset()
    estimator = FeatureSpaceUncertainty(centred=True).fit(atomic_features(model, training, kind='node'),
                                                          [a.numbers for a in training])
    alike = make_cu_dataset(n_configs=4, seed=1)
    compressed = bulk('Cu', 'fcc', a=3.2, cubic=True)
    compressed.rattle(stdev=0.05, seed=1)
    frames = alike + [compressed]
    scores = estimator.frame_uncertainty(atomic_features(model, frames, kind='node'), [a.numbers for a in frames])
    assert scores[-1] > 3 * scores[:-1].max()


def test_unknown_elements_and_kinds_are_refused(model):
    gold = bulk('Au', 'fcc', a=4.08, cubic=True)
    with pytest.raises(ValueError, match=r'frame 0 has elements the model was not trained on: Z=\[79\]'):
        atomic_features(model, [gold])
    with pytest.raises(ValueError, match="kind must be one of"):
        atomic_features(model, [cu_cell()], kind='gradient')
    assert atomic_features(model, []) == []
