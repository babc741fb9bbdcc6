"""``alml-md`` with ``"task": "score"``: the committee's predictions on given frames, for scores on a held-out set.

Runs on the compute node (no AiiDA import), in the MD code's job, so that the machine running the daemon never loads
a model. Input: the JSON of ``alml-md`` with ``frames`` (extxyz) instead of a structure. Output: ``scores.npz`` with,
per frame, the committee mean's ``energy`` (eV) and ``energy_sigma_per_atom``, and per atom, concatenated over the
frames in their order, the mean ``forces`` (eV/Å) and ``force_sigma``; ``n_atoms`` gives each frame's length.
The errors against the reference labels are computed where the labels are, by the workflow.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

import numpy as np

__all__ = ('SCORES_FILE', 'main', 'score_frames')

SCORES_FILE = 'scores.npz'


def score_frames(frames: list, calculator) -> dict[str, np.ndarray]:
    """The committee's mean energy, forces and spread on every frame (ASE Atoms), as arrays (see the module doc)."""
    from aiida_alml.engines.md import committee_uncertainty

    energies, energy_sigmas, forces, force_sigmas, sizes = [], [], [], [], []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = calculator
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
        frame = committee_uncertainty(atoms.calc.results, len(atoms))
        energy_sigmas.append(frame['energy_sigma_per_atom'])
        force_sigmas.append(frame['force_sigma'])
        sizes.append(len(atoms))
    return {
        'energy': np.asarray(energies, dtype=np.float64),
        'energy_sigma_per_atom': np.asarray(energy_sigmas, dtype=np.float64),
        'forces': np.concatenate(forces).astype(np.float64) if forces else np.zeros((0, 3)),
        'force_sigma': np.concatenate(force_sigmas).astype(np.float64) if force_sigmas else np.zeros(0),
        'n_atoms': np.asarray(sizes, dtype=np.int64),
    }


def main(spec: dict) -> int:
    """Score ``spec['frames']`` with the committee ``spec['models']`` (hashes checked before loading)."""
    from ase.io import read

    from aiida_alml.engines.disk import exit_disk_full, is_disk_full
    from aiida_alml.engines.md import load_calculator

    device = spec.get('device', 'cpu')
    if device != 'cpu' and not str(device).startswith('cuda'):
        print(f'alml-md: device {device!r}: must be cpu, cuda or cuda:N', file=sys.stderr)
        return 2
    started = time.perf_counter()
    frames = read(spec['frames'], ':', format='extxyz')
    calculator = load_calculator(spec['models'], device, spec.get('dtype', 'float64'))
    arrays = score_frames(frames, calculator)
    try:
        np.savez(SCORES_FILE, **arrays)
    except OSError as error:
        if not is_disk_full(error):
            raise
        return exit_disk_full('alml-md', error, [SCORES_FILE])
    print(f'alml-md: scored {len(frames)} frames with {len(spec["models"])} members in '
          f'{time.perf_counter() - started:.1f} s')
    return 0


if __name__ == '__main__':  # for a manual run: python -m aiida_alml.engines.score input.json
    sys.exit(main(json.loads(pathlib.Path(sys.argv[1]).read_text())))
