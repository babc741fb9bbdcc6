"""Is a trained committee's MD stable? Blow-ups, σ excursions and NVE energy drift of one validation run."""

from __future__ import annotations

import numpy as np

__all__ = ('STABILITY_DEFAULTS', 'assess_run', 'nve_drift_per_ps')

# Boltzmann constant in eV/K (ASE's units.kB).
_KB = 8.617330337217213e-05

#: Criteria of a validation run: frames whose calibrated σ exceeds trust_hi may make up at most
#: ``max_excursion_fraction``; total energy in NVE may drift by at most ``max_nve_drift`` eV/atom/ps.
STABILITY_DEFAULTS = {'max_excursion_fraction': 0.05, 'max_nve_drift': 0.005}


def nve_drift_per_ps(time_fs: np.ndarray, potential_energy: np.ndarray, temperature: np.ndarray,
                     n_atoms: int) -> float:
    """Slope (eV/atom/ps) of the total energy per atom by a least-squares line through the sampled frames.

    The kinetic energy is rebuilt from the recorded temperature as 3/2 N k_B T (ASE's definition with 3N degrees
    of freedom), so the engine need not store it.
    """
    time_ps = np.asarray(time_fs, dtype=float) / 1000.0
    total = (np.asarray(potential_energy, dtype=float) + 1.5 * n_atoms * _KB * np.asarray(temperature)) / n_atoms
    if len(time_ps) < 3 or np.ptp(time_ps) == 0:
        raise ValueError('an energy drift needs at least three frames at different times')
    return float(np.polyfit(time_ps, total, 1)[0])


def assess_run(summary: dict, arrays: dict, trust_hi: float, calibration: float = 1.0,
               criteria: dict | None = None) -> dict:
    """Verdict on one validation MD run from its summary (``stop_kind``, ``steps_done``, ``steps_requested``,
    ``parameters``) and its arrays (``time``, ``energy``, ``temperature``, ``max_force_sigma``)."""
    criteria = {**STABILITY_DEFAULTS, **(criteria or {})}
    ensemble = summary['parameters']['ensemble']
    uncertainty = calibration * np.asarray(arrays['max_force_sigma'], dtype=float)
    result = {
        'ensemble': ensemble,
        'steps_done': summary['steps_done'],
        'steps_requested': summary['steps_requested'],
        'stop_kind': summary.get('stop_kind'),
        'stop_reason': summary['stop_reason'],
        'blew_up': summary.get('stop_kind') in ('close_contact', 'non_finite'),
        'max_uncertainty': float(uncertainty.max()) if len(uncertainty) else None,
        'excursion_fraction': float(np.mean(uncertainty > trust_hi)) if len(uncertainty) else None,
        'nve_drift_per_ps': None,
    }
    problems = []
    if result['blew_up']:
        problems.append(f'{ensemble}: {summary["stop_reason"]}')
    elif summary['stop_reason'] != 'completed':
        problems.append(f'{ensemble}: stopped early ({summary["stop_reason"]})')
    if result['excursion_fraction'] is not None and result['excursion_fraction'] > criteria['max_excursion_fraction']:
        problems.append(f'{ensemble}: {result["excursion_fraction"]:.1%} of frames with calibrated σ above trust_hi '
                        f'{trust_hi} eV/Å (allowed {criteria["max_excursion_fraction"]:.1%})')
    if ensemble == 'nve' and len(uncertainty) >= 3:
        drift = nve_drift_per_ps(arrays['time'], arrays['energy'], arrays['temperature'], int(summary['n_atoms']))
        result['nve_drift_per_ps'] = drift
        if abs(drift) > criteria['max_nve_drift']:
            problems.append(f'nve: total energy drifts by {drift:.2g} eV/atom/ps (allowed {criteria["max_nve_drift"]})')
    result['problems'] = problems
    result['stable'] = not problems
    return result
