"""Benchmark: build, store and reload a ConfigurationSet of 10,000 configurations of 100 atoms.

Run: ``python benchmarks/configurations.py [--count 10000] [--atoms 100] [--baseline 500]``. It makes a throw-away
SQLite profile in a temporary folder. For scale it also stores ``--baseline`` configurations the AiiDA-native way (one
StructureData + one ArrayData of forces per configuration) and reports the per-configuration ratio, both measured in
this same run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _profile import throwaway_profile


def _images(count: int, atoms: int, seed: int = 0) -> list:
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    side = (atoms * 11.8) ** (1 / 3)  # about the atomic volume of copper
    images = []
    for index in range(count):
        image = Atoms('Cu' * atoms, positions=rng.uniform(0, side, (atoms, 3)), cell=[side] * 3, pbc=True)
        image.calc = SinglePointCalculator(
            image, energy=float(rng.normal()), forces=rng.normal(size=(atoms, 3)), stress=rng.normal(size=6)
        )
        image.info['iteration'] = index % 7
        images.append(image)
    return images


def _timed(label: str, function, results: dict):
    start = time.perf_counter()
    value = function()
    results[label] = time.perf_counter() - start
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--count', type=int, default=10_000)
    parser.add_argument('--atoms', type=int, default=100)
    parser.add_argument('--baseline', type=int, default=500, help='configurations stored the native way (0: skip)')
    args = parser.parse_args()

    with throwaway_profile():
        from aiida import orm

        from aiida_alml.data import ConfigurationSet

        images = _images(args.count, args.atoms)
        times: dict[str, float] = {}
        node = _timed('build (from_ase)', lambda: ConfigurationSet.from_ase(images), times)
        _timed('store', node.store, times)
        pk = node.pk

        def reload():
            loaded = orm.load_node(pk)
            return loaded.configurations

        configurations = _timed('reload (load_node + arrays)', reload, times)
        _timed('to_ase (all configurations)', configurations.to_ase, times)
        assert configurations.positions.tobytes() == node.configurations.positions.tobytes()
        total = times['build (from_ase)'] + times['store'] + times['reload (load_node + arrays)']

        print(f'ConfigurationSet of {args.count} configurations x {args.atoms} atoms '
              f'({args.count * args.atoms:,} atoms, energy + forces + stress labels)\n')
        print('| step | seconds |\n|---|---|')
        for label, seconds in times.items():
            print(f'| {label} | {seconds:.2f} |')
        print(f'| build + store + reload | {total:.2f} |')

        if args.baseline:
            subset = images[: args.baseline]

            def native_store():
                for image in subset:
                    orm.StructureData(ase=image).store()
                    forces = orm.ArrayData()
                    forces.set_array('forces', image.get_forces())
                    forces.base.attributes.set('energy', image.get_potential_energy())
                    forces.store()

            native = {}
            _timed('native', native_store, native)
            ours = {}
            _timed('ours', lambda: ConfigurationSet.from_ase(subset).store(), ours)
            per_native = native['native'] / len(subset)
            per_ours = ours['ours'] / len(subset)
            print(f'\nSide by side, {len(subset)} configurations built and stored:')
            print('| storage | ms per configuration |\n|---|---|')
            print(f'| StructureData + ArrayData per configuration | {per_native * 1e3:.2f} |')
            print(f'| one ConfigurationSet | {per_ours * 1e3:.3f} |')
            print(f'| ratio (native / ConfigurationSet) | {per_native / per_ours:.0f}x |')


if __name__ == '__main__':
    main()
