"""Benchmark: what one loop iteration costs the daemon and the database as the training set grows (issue 26).

Run: ``python benchmarks/scale.py [--sizes 200 1000 3000] [--per-iteration 100] [--frames 96]``. In a throw-away
SQLite profile, for each dataset size N it builds the state of a campaign that labels ``per-iteration``
configurations per iteration (108-atom copper cells: fcc with 0.08 Å random displacements; energies and forces are
random numbers of the right shapes, since neither the selection nor the storage looks at their values), and times
one iteration at that size instead of running every iteration up to it:

- ``merge_training_sets`` of the previous N - per-iteration labels and the new ones (what the loop does after each
  labelling), side by side: ``merge_before``, a calcfunction that writes the concatenation of both as one flat set
  (what ``merge_training_sets`` did until issue 26's storage change; the previous set flat too), and ``merge``, the
  composed set that ``merge_training_sets`` now returns (the previous set composed of the earlier iterations' label
  sets, as in a campaign). CPU and wall seconds, database rows (nodes, links), repository bytes and attribute bytes
  (JSON of the new node's attributes) each adds;
- ``select_for_labelling`` on the merged set of N and an exploration of ``frames`` frames (108 atoms), side by
  side: ``before``, describing every training environment (no ``environments`` input: what the loop did until this
  change), and ``after``, given the blocks of environments that earlier iterations described (one per iteration,
  emulated by cutting the ``before`` run's block; the same rows bit for bit) and describing only the new labels.
  CPU seconds of this process (where the calcfunction runs, as in a daemon worker), wall seconds, the rows and
  bytes each adds, and a check that both pick the same frames.

``--merge-only`` skips the selection (minutes per size) to measure the merges at larger N.

Results go to ``benchmarks/results/scale/`` (``--out``). The CLI commands ``status``, ``lineage`` and ``export``
need a whole ``alml.active_learning`` record (models, learning curve, ...), which this benchmark does not fake;
``benchmarks/provenance.py`` times the provenance queries behind ``lineage`` at 10^4 labels.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np
from _profile import throwaway_profile

CELL_REPEAT = 3  # 108 atoms
LATTICE = 3.61


def copper_cells(count: int, rng, rattle: float = 0.08):
    """``count`` 108-atom copper cells with random displacements and random labels, as Configurations."""
    from ase.build import bulk

    from aiida_alml.atoms.configurations import Configurations

    lattice = bulk('Cu', 'fcc', a=LATTICE, cubic=True).repeat(CELL_REPEAT)
    n_atoms = len(lattice)
    positions = np.tile(lattice.positions, (count, 1)) + rng.normal(0.0, rattle, (count * n_atoms, 3))
    return Configurations(
        numbers=np.tile(lattice.numbers, count), positions=positions, n_atoms=np.full(count, n_atoms),
        cells=np.tile(lattice.cell.array, (count, 1, 1)), pbc=np.ones((count, 3), dtype=bool),
        energy=rng.normal(-3.5 * n_atoms, 1.0, count), forces=rng.normal(0.0, 0.5, (count * n_atoms, 3)),
        metadata=[{'iteration': 0} for _ in range(count)],
    )


def exploration(frames: int, rng, per_trajectory: int = 24) -> dict:
    """Trajectories of 108-atom frames with a σ spread over the trust window (step 0 certain)."""
    from aiida import orm
    from ase.build import bulk

    lattice = bulk('Cu', 'fcc', a=LATTICE, cubic=True).repeat(CELL_REPEAT)
    trajectories = {}
    for index in range(-(-frames // per_trajectory)):
        count = min(per_trajectory, frames - index * per_trajectory)
        positions = lattice.positions[None] + rng.normal(0.0, 0.12, (count, len(lattice), 3))
        trajectory = orm.TrajectoryData()
        trajectory.set_trajectory(symbols=lattice.get_chemical_symbols(), positions=positions,
                                  cells=np.tile(lattice.cell.array, (count, 1, 1)), stepids=np.arange(count) * 10,
                                  pbc=[True, True, True])
        sigma = rng.uniform(0.01, 0.2, (count, len(lattice)))
        sigma[0] = 0.01
        trajectory.set_array('force_sigma', sigma)
        trajectories[f's{index}_c0'] = trajectory.store()
    return trajectories


def database_rows() -> dict:
    from aiida import orm

    links = orm.QueryBuilder().append(orm.Node, tag='source').append(orm.Node, with_incoming='source')
    return {'nodes': orm.QueryBuilder().append(orm.Node).count(), 'links': links.count()}


def repository_bytes(nodes) -> int:
    return sum(len(node.base.repository.get_object_content(name, mode='rb'))
               for node in nodes for name in node.base.repository.list_object_names())


def attribute_bytes(node) -> int:
    """Size of the node's attributes as JSON (what the database row holds besides the repository)."""
    return len(json.dumps(node.base.attributes.all, sort_keys=True))


def _flat_merge(**sets):
    """What ``merge_training_sets`` did until the storage change of issue 26: one flat copy of every configuration."""
    from aiida_alml.atoms.configurations import Configurations
    from aiida_alml.data import ConfigurationSet

    return ConfigurationSet(Configurations.concatenate([sets[key].configurations for key in sorted(sets)]))


def flat_merge():
    from aiida.engine import calcfunction

    return calcfunction(_flat_merge)


def merge_figures(result, cpu: float, wall: float, rows: dict) -> dict:
    return {'cpu_s': cpu, 'wall_s': wall, 'rows_added': rows, 'repository_bytes_added': repository_bytes([result]),
            'attribute_bytes_added': attribute_bytes(result)}


def cut_block(block, start: int, stop: int):
    """The part of a block of environments that describes its configurations start..stop (stored)."""
    from aiida import orm

    n_atoms = block.get_array('n_atoms')
    offsets = np.concatenate([[0], np.cumsum(n_atoms)])
    atoms = slice(int(offsets[start]), int(offsets[stop]))
    part = orm.ArrayData()
    for name in ('fingerprint', 'n_atoms', 'closest'):
        part.set_array(name, block.get_array(name)[start:stop])
    for name in ('numbers', 'rows'):
        part.set_array(name, block.get_array(name)[atoms])
    part.base.attributes.set_many(block.base.attributes.all)
    return part.store()


def measured(function, *args, **kwargs):
    """(result, node, CPU s of this process, wall s, database rows added)."""
    rows = database_rows()
    cpu, wall = time.process_time(), time.perf_counter()
    result, node = function.run_get_node(*args, **kwargs)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    after = database_rows()
    return result, node, cpu, wall, {key: after[key] - rows[key] for key in rows}


def one_iteration(size: int, per_iteration: int, frames: int, seed: int, merge_only: bool = False) -> dict:
    from aiida import orm

    from aiida_alml.atoms.configurations import Configurations
    from aiida_alml.data import ConfigurationSet
    from aiida_alml.workflows.active_learning_inputs import SELECTION_DEFAULTS
    from aiida_alml.workflows.functions import merge_training_sets, select_for_labelling

    rng = np.random.default_rng(seed)
    # The label sets of the earlier iterations, then the previous training set as each design holds it.
    earlier = [ConfigurationSet(copper_cells(per_iteration, rng)).store() for _ in range(size // per_iteration - 1)]
    new = ConfigurationSet(copper_cells(per_iteration, rng)).store()
    previous_flat = ConfigurationSet(Configurations.concatenate([part.configurations for part in earlier])).store()
    previous = ConfigurationSet.compose(earlier).store() if len(earlier) > 1 else earlier[0]
    flat, _, flat_cpu, flat_wall, flat_rows = measured(flat_merge(), a_previous=previous_flat, b_new=new)
    dataset, merge_node, merge_cpu, merge_wall, merge_rows = measured(merge_training_sets, a_previous=previous,
                                                                      b_new=new)
    same_content = dataset.flat_content_hash() == flat.content_hash
    row = {
        'labels': size, 'new_labels': per_iteration, 'frames': frames, 'atoms_per_cell': 4 * CELL_REPEAT ** 3,
        'merge_before': merge_figures(flat, flat_cpu, flat_wall, flat_rows),
        'merge': {**merge_figures(dataset, merge_cpu, merge_wall, merge_rows), 'parts': len(dataset.parts)},
        'merge_same_content': bool(same_content),
    }
    if merge_only:
        return row

    trajectories = exploration(frames, rng)
    settings = orm.Dict({**SELECTION_DEFAULTS, 'mode': 'fps', 'labels_per_iteration': 20}).store()
    fixed = (settings, orm.Float(1.0).store(), orm.Int(size // per_iteration).store(), dataset,
             orm.Bool(True).store(), orm.Dict({}).store())

    before, before_node, before_cpu, before_wall, before_rows = measured(select_for_labelling, *fixed,
                                                                         **trajectories)
    whole = before['training_environments']
    blocks = {f'iteration_{i:05d}': cut_block(whole, i * per_iteration, (i + 1) * per_iteration)
              for i in range((size - per_iteration) // per_iteration)}
    after, after_node, after_cpu, after_wall, after_rows = measured(select_for_labelling, *fixed,
                                                                    environments=blocks, **trajectories)
    same = (before['record'].base.attributes.get('pick_order') == after['record'].base.attributes.get('pick_order')
            and np.array_equal(before['record'].get_array('reason'), after['record'].get_array('reason')))
    described = len(after['training_environments'].get_array('fingerprint'))
    return {
        **row,
        'select_before': {'cpu_s': before_cpu, 'wall_s': before_wall, 'rows_added': before_rows,
                          'configurations_described': size},
        'select_after': {'cpu_s': after_cpu, 'wall_s': after_wall, 'rows_added': after_rows,
                         'configurations_described': described, 'environment_inputs': len(blocks),
                         'repository_bytes_added': repository_bytes([after['training_environments']])},
        'same_picks': bool(same),
        'num_chosen': len(after['record'].base.attributes.get('pick_order')),
    }


def fit(sizes, values) -> tuple[float, float]:
    """Least-squares a + b N."""
    slope, intercept = np.polyfit(np.asarray(sizes, dtype=float), np.asarray(values, dtype=float), 1)
    return float(intercept), float(slope)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', nargs='+', type=int, default=[200, 1000, 3000],
                        help='training-set sizes (labels) at which one iteration is timed')
    parser.add_argument('--per-iteration', type=int, default=100, help='labels added per iteration')
    parser.add_argument('--frames', type=int, default=96, help='explored frames offered to the selection')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--merge-only', action='store_true', help='measure the merges only, not the selection')
    parser.add_argument('--out', type=pathlib.Path,
                        default=pathlib.Path(__file__).parent / 'results' / 'scale' / 'scale.json')
    args = parser.parse_args(argv)
    if any(size <= args.per_iteration or size % args.per_iteration for size in args.sizes):
        parser.error('each size must be a multiple of --per-iteration above it')

    rows = []
    with throwaway_profile('scale'):
        for size in args.sizes:
            rows.append(one_iteration(size, args.per_iteration, args.frames, args.seed + size, args.merge_only))
            print(json.dumps(rows[-1]), flush=True)

    sizes = [row['labels'] for row in rows]
    models = {}
    if len(rows) > 1:
        if not args.merge_only:
            for key in ('select_before', 'select_after'):
                models[key] = fit(sizes, [row[key]['cpu_s'] for row in rows])
        for key in ('merge_before', 'merge'):
            models[f'{key}_bytes'] = fit(sizes, [row[key]['repository_bytes_added'] + row[key]['attribute_bytes_added']
                                                 for row in rows])
            models[f'{key}_cpu'] = fit(sizes, [row[key]['cpu_s'] for row in rows])
    lines = ['| labels N | parts | merge before: MB added (repository + attributes) | merge after: kB added '
             '(repository + attributes) | merge CPU s, before / after | merge: nodes / links added, before / after | '
             'same content |', '|---|---|---|---|---|---|---|']
    for row in rows:
        before, after = row['merge_before'], row['merge']
        lines.append(
            f'| {row["labels"]} | {after["parts"]} | '
            f'{(before["repository_bytes_added"] + before["attribute_bytes_added"]) / 1e6:.2f} | '
            f'{after["repository_bytes_added"] / 1e3:.1f} + {after["attribute_bytes_added"] / 1e3:.1f} | '
            f'{before["cpu_s"]:.2f} / {after["cpu_s"]:.2f} | '
            f'{before["rows_added"]["nodes"]} / {before["rows_added"]["links"]}, '
            f'{after["rows_added"]["nodes"]} / {after["rows_added"]["links"]} | {row["merge_same_content"]} |')
    if not args.merge_only:
        lines += ['', '| labels N | select CPU s, before | select CPU s, after | configurations described, before / '
                  'after | environment inputs | select: nodes / links added, after | same picks |',
                  '|---|---|---|---|---|---|---|']
        for row in rows:
            before, after = row['select_before'], row['select_after']
            lines.append(
                f'| {row["labels"]} | {before["cpu_s"]:.1f} | {after["cpu_s"]:.1f} | '
                f'{before["configurations_described"]} / {after["configurations_described"]} | '
                f'{after["environment_inputs"]} | {after["rows_added"]["nodes"]} / {after["rows_added"]["links"]} | '
                f'{row["same_picks"]} |')
    print('\n'.join(lines))
    for key, (intercept, slope) in models.items():
        print(f'{key}: {intercept:.3g} + {slope:.3g} N; at 1e4: {intercept + slope * 1e4:.4g}, '
              f'at 1e5: {intercept + slope * 1e5:.4g}')
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({'settings': {**vars(args), 'out': str(args.out)}, 'rows': rows,
                                    'linear_models': {key: {'intercept': a, 'slope': b}
                                                      for key, (a, b) in models.items()}}, indent=1))
    return 0 if all(row.get('same_picks', True) and row['merge_same_content'] for row in rows) else 1


if __name__ == '__main__':
    sys.exit(main())
