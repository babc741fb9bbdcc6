"""Committee uncertainty of forces, per atom and per frame."""

from __future__ import annotations

import numpy as np

__all__ = ('force_sigma', 'frame_uncertainty')


def force_sigma(forces_comm: np.ndarray, allow_single_member: bool = False) -> np.ndarray:
    """Per-atom force σ from member forces of shape (..., n_members, n_atoms, 3).

    σ_i = sqrt(Σ_xyz Var_members F_i,xyz), the variance taken over members with ddof=0 (as MACE's committee
    calculator does), so σ_i is the root-mean-square distance of the members' force vectors from their mean.
    The one definition used by the MD engine (``alml-md``) and the selection. A single member is refused unless
    ``allow_single_member`` (then σ = 0: the MD engine driving one model, as the benchmarks do).
    """
    forces_comm = np.asarray(forces_comm, dtype=float)
    if forces_comm.ndim < 3 or forces_comm.shape[-1] != 3:
        raise ValueError(f'forces_comm must have shape (..., members, atoms, 3), got {forces_comm.shape}')
    if forces_comm.shape[-3] < (1 if allow_single_member else 2):
        raise ValueError('force σ needs at least two committee members')
    return np.sqrt(forces_comm.var(axis=-3).sum(axis=-1))


def frame_uncertainty(atom_sigma: np.ndarray, calibration: float = 1.0) -> np.ndarray | float:
    """Frame uncertainty: the largest per-atom force σ, scaled by the calibration factor.

    The maximum (not the mean) over atoms is used so that one badly described group in a big cell is not averaged
    away by the many well-described atoms around it.
    """
    if not calibration > 0:
        raise ValueError(f'calibration factor must be positive, got {calibration}')
    atom_sigma = np.asarray(atom_sigma, dtype=float)
    return calibration * atom_sigma.max(axis=-1)
