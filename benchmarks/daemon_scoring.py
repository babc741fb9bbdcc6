"""Benchmark: CPU seconds the daemon's process spends scoring a committee on a held-out test set, before and after
scoring moved into a job (issue 23: the machine running the daemon never loads a model).

Run: ``python benchmarks/daemon_scoring.py [--frames 12 100] [--channels 16] [--members 2]``. In a throw-away SQLite
profile it trains a small committee once (``alml.committee``, EMT-labelled copper cells; the demo's model size by
default), makes held-out sets of 32-atom copper cells labelled with EMT, and measures, side by side on the same
committee and sets, the CPU seconds of *this* process (the one that plays the daemon; jobs run as separate processes
through the ``core.direct`` scheduler, so their CPU is not counted):

- ``former``: what the calcfunction ``score_committee`` did in the daemon worker until this change: load the members
  (hash-checked) and evaluate the committee on every frame, then the errors;
- ``job``: what the daemon does now: run the ``alml.score.base`` work chain (prepare, upload, poll, retrieve, parse
  the ``alml.score`` job) and the calcfunction ``score_predictions`` on its predictions.

The ratio former/job is the daemon's saving per scoring (one per loop iteration, and one for the final committee).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import sys
import time

import numpy as np
from _profile import throwaway_profile


def former_scoring(test_set, models: dict) -> dict:
    """The former in-daemon scoring, as ``score_committee`` did it (load, evaluate every frame, errors)."""
    from aiida_alml.engines.committee import CommitteeCalculator
    from aiida_alml.workflows.functions import force_errors

    members = [models[key] for key in sorted(models)]
    with contextlib.ExitStack() as stack:
        paths = [str(stack.enter_context(model.verified_path())) for model in members]
        calculator = CommitteeCalculator(model_paths=paths, default_dtype=members[0].dtype,
                                         expected_sha256=[model.sha256 for model in members])
        configurations = test_set.configurations
        energy_errors, differences = [], []
        for index, atoms in enumerate(test_set.to_ase()):
            atoms.calc = calculator
            energy_errors.append((atoms.get_potential_energy() - configurations.energy[index]) / len(atoms))
            differences.append(atoms.get_forces() - configurations.forces[configurations.atom_slice(index)])
    return {'energy_rmse_per_atom': float(np.sqrt(np.mean(np.square(energy_errors)))),
            **force_errors(np.concatenate(differences))}


def held_out(count: int, seed: int):
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    from aiida_alml.data import ConfigurationSet

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        atoms = bulk('Cu', 'fcc', a=3.61, cubic=True).repeat((2, 2, 2))
        atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    return ConfigurationSet.from_ase(frames).store()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--frames', nargs='+', type=int, default=[12, 100])
    parser.add_argument('--channels', type=int, default=16)
    parser.add_argument('--members', type=int, default=2)
    parser.add_argument('--out', type=pathlib.Path, default=None)
    args = parser.parse_args(argv)

    with throwaway_profile('daemon-scoring') as folder:
        from aiida import engine, orm

        from aiida_alml.data import ConfigurationSet
        from aiida_alml.workflows.base import base_inputs
        from aiida_alml.workflows.committee import CommitteeWorkChain
        from aiida_alml.workflows.functions import score_predictions
        from aiida_alml.workflows.score_base import ScoreBaseWorkChain

        computer = orm.Computer(label='bench', hostname='localhost', transport_type='core.local',
                                scheduler_type='core.direct', workdir=str(pathlib.Path(folder) / 'scratch')).store()
        computer.configure(safe_interval=0.0)
        computer.set_minimum_job_poll_interval(0.0)
        computer.set_default_mpiprocs_per_machine(1)
        bindir = pathlib.Path(sys.executable).parent
        codes = {name: orm.InstalledCode(label=executable, computer=computer, default_calc_job_plugin=plugin,
                                         filepath_executable=str(bindir / executable)).store()
                 for name, executable, plugin in (('train', 'alml-train', 'alml.mace.train'), ('md', 'alml-md', 'alml.md'))}
        options = {'resources': {'num_machines': 1}, 'withmpi': False,
                   'environment_variables': {'OMP_NUM_THREADS': '1'}}
        training = ConfigurationSet.from_ase(held_out(24, seed=1).to_ase()).store()
        parameters = {'model': 'ScaleShiftMACE', 'num_channels': args.channels, 'max_L': 0, 'r_max': 4.5,
                      'num_interactions': 2, 'correlation': 2, 'batch_size': 4, 'max_num_epochs': 3,
                      'default_dtype': 'float64', 'device': 'cpu'}
        _, committee = engine.run_get_node(CommitteeWorkChain, num_members=orm.Int(args.members), train={
            'code': codes['train'], 'training_set': training, 'parameters': orm.Dict(parameters),
            'e0s': orm.Str('average'), 'metadata': {'options': options}})
        assert committee.is_finished_ok, committee.exit_message
        models = dict(committee.outputs.models.items())

        rows = []
        for count in args.frames:
            test_set = held_out(count, seed=100 + count)
            start_cpu, start_wall = time.process_time(), time.perf_counter()
            former = former_scoring(test_set, models)
            former_cpu, former_wall = time.process_time() - start_cpu, time.perf_counter() - start_wall

            start_cpu, start_wall = time.process_time(), time.perf_counter()
            job = {'code': codes['md'], 'frames': test_set, 'models': models, 'metadata': {'options': options}}
            _, scoring = engine.run_get_node(ScoreBaseWorkChain, **base_inputs('score', job, orm.Int(0), 'score'))
            assert scoring.is_finished_ok, scoring.exit_message
            scores = score_predictions(test_set, scoring.outputs.predictions).get_dict()
            job_cpu, job_wall = time.process_time() - start_cpu, time.perf_counter() - start_wall
            # Same committee, same frames: the same errors either way.
            assert abs(scores['force_rmse'] - former['force_rmse']) < 1e-8 * max(1.0, former['force_rmse'])
            rows.append({'frames': count, 'atoms': count * 32, 'former_cpu_s': former_cpu, 'job_cpu_s': job_cpu,
                         'former_wall_s': former_wall, 'job_wall_s': job_wall, 'force_rmse': scores['force_rmse']})
            print(json.dumps(rows[-1]), flush=True)

    lines = ['| test frames (32 atoms) | daemon CPU s, former (model in the daemon) | daemon CPU s, now (job) | ratio | '
             'wall s, former / now |', '|---|---|---|---|---|']
    for row in rows:
        lines.append(f'| {row["frames"]} | {row["former_cpu_s"]:.2f} | {row["job_cpu_s"]:.2f} | '
                     f'{row["former_cpu_s"] / row["job_cpu_s"]:.1f}x | {row["former_wall_s"]:.1f} / '
                     f'{row["job_wall_s"]:.1f} |')
    print('\n'.join(lines))
    if args.out:
        args.out.write_text(json.dumps({'settings': vars(args) | {'out': str(args.out)}, 'rows': rows}, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
