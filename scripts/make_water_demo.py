#!/usr/bin/env python
"""Make the structure files of the water demo (aiida_alml/protocols/demo/water_*.xyz) with GFN2-xTB itself.

Eight water molecules in a periodic cube at 1 g/cm³ (6.21 Å), started on a lattice with random orientations and
equilibrated by GFN2-xTB Langevin MD at 300 K (tblite, the demo's reference). From that run:

- ``water_start.xyz``: its last frame, where the demo's exploration MD starts;
- ``water_initial.xyz``: three frames of it, which the campaign perturbs and labels first;
- ``water_test.xyz``: held-out labels the loop never chooses: 12 frames of an independent GFN2-xTB MD run (another
  lattice and seed) at 450 K, 1.5x the demo's hottest exploration, one every 10 steps after 200 steps of
  equilibration, each with its GFN2-xTB energy and forces (REF_energy, REF_forces).

Usage: ``python scripts/make_water_demo.py [--out DIR]``. Takes a few minutes on one core (~1 s per xTB step).
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

#: MD timestep, fs: hydrogen vibrates with a period of ~9 fs.
TIMESTEP = 0.5


def water_lattice(n_side: int = 2, density: float = 1.0, seed: int = 0):
    """``n_side``³ water molecules on a cubic lattice, each turned at random, at ``density`` g/cm³."""
    from ase import Atoms
    from ase.build import molecule

    rng = np.random.default_rng(seed)
    count = n_side**3
    edge = (count * 18.015 / (0.602214 * density)) ** (1 / 3)  # Å: N x 18.015 g/mol over N_A x density
    box = Atoms(cell=[edge] * 3, pbc=True)
    spacing = edge / n_side
    for index in np.ndindex(n_side, n_side, n_side):
        water = molecule('H2O')
        water.rotate(rng.uniform(0, 360), rng.normal(size=3), center='COM')
        water.translate((np.array(index) + 0.5) * spacing - water.get_center_of_mass())
        box += water
    return box


def xtb_md(atoms, temperature: float, steps: int, seed: int, every: int = 0):
    """GFN2-xTB Langevin MD; every ``every`` steps a labelled copy is kept (returned with the final atoms)."""
    from ase import units
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from aiida_alml.engines.calculators import build_calculator

    atoms = atoms.copy()
    atoms.calc = build_calculator({'name': 'gfn2-xtb'}, ['energy', 'forces'])
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    dynamics = Langevin(atoms, TIMESTEP * units.fs, temperature_K=temperature, friction=0.02, rng=rng)
    frames = []
    for _ in range(steps // every if every else 1):
        dynamics.run(every or steps)
        if every:
            frame = atoms.copy()
            frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
            frames.append(frame)
    return atoms, frames


def _plain(atoms):
    """Symbols, positions and cell only (no calculator, no momenta)."""
    from ase import Atoms

    return Atoms(atoms.get_chemical_symbols(), positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)


def main() -> None:
    import ase.io

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = pathlib.Path(__file__).resolve().parents[1] / 'aiida_alml' / 'protocols' / 'demo'
    parser.add_argument('--out', type=pathlib.Path, default=default)
    args = parser.parse_args()

    equilibrated, frames = xtb_md(water_lattice(seed=1), 300.0, 300, seed=1, every=100)
    start = _plain(equilibrated)
    ase.io.write(args.out / 'water_start.xyz', start, format='extxyz')
    initial = [_plain(frame) for frame in frames]
    ase.io.write(args.out / 'water_initial.xyz', initial, format='extxyz')

    hot, _ = xtb_md(water_lattice(seed=2), 450.0, 200, seed=2)
    _, test = xtb_md(hot, 450.0, 120, seed=3, every=10)
    labelled = []
    for frame in test:
        plain = _plain(frame)
        plain.info['REF_energy'] = frame.get_potential_energy()
        plain.arrays['REF_forces'] = frame.get_forces()
        labelled.append(plain)
    test = labelled
    ase.io.write(args.out / 'water_test.xyz', test, format='extxyz')
    print(f'wrote {args.out}/water_start.xyz, water_initial.xyz ({len(initial)}), water_test.xyz ({len(test)})')


if __name__ == '__main__':
    main()
