"""Single-model uncertainty from a model's own per-atom features: how far an environment lies from the training set.

Model. For one element, the training set gives the per-atom features ``F`` (n × d). The atomic energy of the model is
(close to) linear in its last-layer features, ``E_i = w · f_i``. With a Gaussian prior on ``w`` and unit noise per
training atom, the posterior covariance of ``w`` is ``(FᵀF + λ' I)⁻¹`` and the predictive variance of an atom is

    u_i² = f_iᵀ (G + λ I)⁻¹ f_i,   G = FᵀF / n,

up to a factor ``1/n`` that the calibration scale α absorbs. This is last-layer prediction rigidity (LLPR, Bigi et
al. 2024) per atom; on any features it is the GP posterior variance of a linear kernel. ``centred=True`` uses the
covariance of the centred training features and ``f_i − μ`` instead, i.e. a regularised Mahalanobis distance to the
training environments. Both are small for environments like the training ones and grow along feature directions the
training set never spanned.

Per element: every element gets its own matrix (elements occupy different regions of feature space, and an element's
training atoms say little about another's). λ is relative, ``λ = regularisation · tr(G) / d``, so that it is
invariant to the features' overall scale and stays well above round-off for the nearly collinear features of small
models.

Frame scores: ``frame_uncertainty`` is α · max_i u_i, the same reduction as the committee's force σ (one badly
described group is not averaged away); ``energy_uncertainty`` is the LLPR variance of the total energy,
``Σ_Z f_Zᵀ (G_Z + λ_Z I)⁻¹ f_Z`` with ``f_Z`` the summed features of the frame's atoms of element Z (element blocks
independent), square-rooted and scaled by its own α. The scales α are fitted on frames held out from training by
:meth:`FeatureSpaceUncertainty.calibrate` (pooled ratio ``sqrt(Σ err² / Σ u²)``, as for the committee).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ('FeatureSpaceUncertainty',)


class FeatureSpaceUncertainty:
    """Per-element feature-space (LLPR / Mahalanobis) uncertainty, fitted on training per-atom features."""

    def __init__(self, centred: bool = False, regularisation: float = 1e-3):
        """
        :param centred: ``False``: LLPR / linear-kernel GP variance of the uncentred features; ``True``: Mahalanobis
            distance to the mean of the training features.
        :param regularisation: λ relative to the mean eigenvalue ``tr(G)/d`` of the training second-moment matrix.
        """
        if not regularisation > 0:
            raise ValueError(f'regularisation must be positive, got {regularisation}')
        self.centred = bool(centred)
        self.regularisation = float(regularisation)
        self.dimension: int | None = None
        self.mean: dict[int, np.ndarray] = {}
        self.precision: dict[int, np.ndarray] = {}  # (G_Z + λ_Z I)⁻¹ per atomic number
        self.force_scale = 1.0  # α of the frame uncertainty
        self.energy_scale = 1.0  # α of the energy uncertainty

    # ----------------------------------------------------------------- input checks
    def _frames(self, features, species) -> tuple[list[np.ndarray], list[np.ndarray]]:
        if isinstance(features, np.ndarray) and features.ndim == 2:
            raise ValueError('features must be a sequence of per-frame (n_atoms, n_features) arrays, not one array')
        features = [np.asarray(f, dtype=float) for f in features]
        species = [np.asarray(s) for s in species]
        if len(features) != len(species):
            raise ValueError(f'got features of {len(features)} frames but species of {len(species)}')
        for index, (f, s) in enumerate(zip(features, species)):
            if f.ndim != 2:
                raise ValueError(f'frame {index}: features must have shape (n_atoms, n_features), got {f.shape}')
            if s.shape != (f.shape[0],):
                raise ValueError(f'frame {index}: species must have shape ({f.shape[0]},) to match the features, '
                                 f'got {s.shape}')
            if self.dimension is not None and f.shape[1] != self.dimension:
                raise ValueError(f'frame {index}: {f.shape[1]} features per atom, but fitted on {self.dimension}')
            if not np.isfinite(f).all():
                raise ValueError(f'frame {index}: features contain NaN or infinity')
        return features, species

    def _check_fitted(self):
        if not self.precision:
            raise RuntimeError('FeatureSpaceUncertainty is not fitted: call fit() first')

    # ----------------------------------------------------------------- fit
    def fit(self, features: Sequence[np.ndarray], species: Sequence[np.ndarray]) -> FeatureSpaceUncertainty:
        """Fit on the training frames: per frame an (n_atoms, d) feature array and the (n_atoms,) atomic numbers."""
        self.dimension = None
        features, species = self._frames(features, species)
        if not features:
            raise ValueError('fit needs at least one training frame')
        dims = {f.shape[1] for f in features}
        if len(dims) != 1:
            raise ValueError(f'training frames disagree on the number of features per atom: {sorted(dims)}')
        dimension = dims.pop()
        stacked = np.concatenate(features)
        numbers = np.concatenate(species)
        self.mean, self.precision = {}, {}
        for z in np.unique(numbers):
            rows = stacked[numbers == z]
            mean = rows.mean(axis=0) if self.centred else np.zeros(dimension)
            centred_rows = rows - mean
            moment = centred_rows.T @ centred_rows / len(rows)
            trace = float(np.trace(moment))
            if not trace > 0:
                raise ValueError(f'element Z={int(z)}: all training features are identical (zero spread); '
                                 'nothing to measure a distance against')
            lam = self.regularisation * trace / dimension
            self.mean[int(z)] = mean
            # eigh of a symmetric matrix: a stable inverse, and symmetric by construction
            values, vectors = np.linalg.eigh(moment + lam * np.eye(dimension))
            self.precision[int(z)] = (vectors / values) @ vectors.T
        self.dimension = dimension
        return self

    # ----------------------------------------------------------------- predict
    def _element(self, z: int) -> int:
        if z not in self.precision:
            raise ValueError(f'element Z={z} has no training atoms; fitted elements: Z={sorted(self.precision)}')
        return z

    def atom_uncertainty(self, features: np.ndarray, species: np.ndarray) -> np.ndarray:
        """Per-atom uncertainty ``α u_i`` of one frame ((n_atoms, d) features, (n_atoms,) atomic numbers)."""
        self._check_fitted()
        (features,), (species,) = self._frames([features], [species])
        variance = np.empty(len(species))
        for z in np.unique(species):
            mask = species == z
            shifted = features[mask] - self.mean[self._element(int(z))]
            variance[mask] = np.einsum('ij,jk,ik->i', shifted, self.precision[int(z)], shifted)
        return self.force_scale * np.sqrt(np.clip(variance, 0.0, None))

    def frame_uncertainty(self, features: Sequence[np.ndarray], species: Sequence[np.ndarray]) -> np.ndarray:
        """Per frame, the largest per-atom uncertainty (invariant to the order of the atoms)."""
        features, species = self._frames(features, species)
        return np.array([self.atom_uncertainty(f, s).max() for f, s in zip(features, species)])

    def energy_uncertainty(self, features: Sequence[np.ndarray], species: Sequence[np.ndarray]) -> np.ndarray:
        """Per frame, ``α_E sqrt(Σ_Z f_Zᵀ P_Z f_Z)`` with ``f_Z`` the summed (centred) features of element Z."""
        self._check_fitted()
        features, species = self._frames(features, species)
        out = []
        for f, s in zip(features, species):
            variance = 0.0
            for z in np.unique(s):
                summed = (f[s == z] - self.mean[self._element(int(z))]).sum(axis=0)
                variance += float(summed @ self.precision[int(z)] @ summed)
            out.append(np.sqrt(max(variance, 0.0)))
        return self.energy_scale * np.array(out)

    # ----------------------------------------------------------------- calibrate
    def calibrate(self, features: Sequence[np.ndarray], species: Sequence[np.ndarray],
                  max_force_errors: np.ndarray | None = None, energy_errors: np.ndarray | None = None) -> dict:
        """Fit α (force) and α_E (energy) on frames held out from training, from their true errors: the largest
        atomic force error and |ΔE| of each frame. Returns the scales."""
        self._check_fitted()
        features, species = self._frames(features, species)
        for name, errors, method, attribute in (
            ('max_force_errors', max_force_errors, self.frame_uncertainty, 'force_scale'),
            ('energy_errors', energy_errors, self.energy_uncertainty, 'energy_scale'),
        ):
            if errors is None:
                continue
            errors = np.asarray(errors, dtype=float)
            if errors.shape != (len(features),):
                raise ValueError(f'{name} must have one value per frame ({len(features)}), got shape {errors.shape}')
            setattr(self, attribute, 1.0)
            raw = method(features, species)
            if not np.sum(raw**2) > 0:
                raise ValueError(f'{name}: every calibration frame has zero uncertainty; cannot scale it')
            setattr(self, attribute, float(np.sqrt(np.sum(errors**2) / np.sum(raw**2))))
        return {'force_scale': self.force_scale, 'energy_scale': self.energy_scale}
