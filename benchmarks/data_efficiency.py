"""Benchmark: does active learning need fewer reference labels than random picks for the same held-out error?

Run: ``python benchmarks/data_efficiency.py [--systems cu_vacancy cuau_alloy] [--seeds 0 1 2] [--modes weighted
random] [--iterations 4] [--labels-per-iteration 6] [--out results.json]``. Campaigns are independent, so a grid can
be split over processes (``--modes weighted`` in one, ``--modes random`` in another, each with its ``--out``) and the
tables made from all files at once: ``python benchmarks/data_efficiency.py --merge a.json b.json``.

For every system it makes one held-out test set from independent molecular dynamics of the reference (EMT for the
copper systems), hotter than any exploration (`--test-temperature-factor` × the top exploration temperature); the water
system (GFN2-xTB, too slow to redo the reference MD each run) uses the water demo's held-out set, independent GFN2-xTB
MD at 450 K made by scripts/make_water_demo.py. Then it runs, in a throw-away SQLite
profile, ``alml.active_learning`` campaigns that differ only in ``selection.mode``: ``weighted`` (σ-weighted
farthest-point sampling among physical frames above trust_lo), ``fps`` (candidates by farthest-point sampling, then
the earliest failed frames) and ``random`` (as many frames drawn uniformly from every explored frame, the baseline a
user would pick), each with every campaign seed. Same
initial labels, same committee settings, same exploration schedule, same budget; every iteration's committee is
scored on the test set (force RMSE per Cartesian component).

Reported per system: the held-out force RMSE against the labels used, the labels each mode needs to reach the
error the random campaigns end with (linear interpolation on the learning curve; ``never`` when never reached), the
ratio random/active with its spread over seeds, counted both in all labels and in the labels the loop chose (the
initial labels are the same for every campaign), and a stability check of each final committee (NVT MD at the test
temperature, in-process: blow-ups, closest distance, largest σ).

With 12 initial labels and 4 iterations of 6, neither ratio can exceed 3 in all labels, whatever the selection: the
active campaign would have to reach random's final error with no label of its own. To measure larger ratios, give the
random campaigns a larger budget (``--random-label-factor 3``: 18 labels per iteration); the report then also gives,
per paired seed, the labels random needs to reach the error the active campaign ends with.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

import numpy as np
from _profile import throwaway_profile

from aiida_alml.comparison import labels_to_reach
from aiida_alml.selection import RANDOM_BASELINES

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO = ROOT / 'aiida_alml' / 'protocols' / 'demo'
MODEL = {
    'model': 'ScaleShiftMACE', 'num_channels': 16, 'max_L': 0, 'r_max': 4.5, 'num_interactions': 2, 'correlation': 2,
    'batch_size': 4, 'valid_batch_size': 8, 'valid_fraction': 0.15, 'max_num_epochs': 25, 'default_dtype': 'float64',
    'device': 'cpu',
}  # fmt: skip
OPTIONS = {'resources': {'num_machines': 1}, 'withmpi': False, 'environment_variables': {'OMP_NUM_THREADS': '1'}}


# ---------------------------------------------------------------------- systems
def _copper_vacancy():
    from ase.io import read

    return read(DEMO / 'copper_initial.xyz', ':'), read(DEMO / 'copper_vacancy.xyz')


def _cuau_alloy():
    """A random Cu3Au-like fcc alloy (32 atoms) with one vacancy, and small cells of both elements to start from."""
    from ase.build import bulk

    rng = np.random.default_rng(3)
    alloy = bulk('Cu', 'fcc', a=3.75, cubic=True).repeat(2)
    symbols = np.array(['Cu'] * len(alloy))
    symbols[rng.choice(len(alloy), size=8, replace=False)] = 'Au'
    alloy.set_chemical_symbols(symbols.tolist())
    del alloy[0]
    small = bulk('Cu', 'fcc', a=3.75, cubic=True)
    small.set_chemical_symbols(['Cu', 'Au', 'Cu', 'Cu'])
    return [small, bulk('Au', 'fcc', a=4.08, cubic=True), bulk('Cu', 'fcc', a=3.61, cubic=True), alloy.copy()], alloy


def _copper_vacancy_small():
    """The workflow tests' hot cell: 15 copper atoms with a vacancy, from cells of 4, 8 and 7 atoms. Explored at
    900 K, a weak first committee fails on most of its frames: where ``fps`` and ``weighted`` choose differently."""
    from ase.build import bulk

    cubic = bulk('Cu', 'fcc', a=3.61, cubic=True)
    pair = cubic.repeat((2, 1, 1))
    vacancy = pair.copy()
    del vacancy[3]
    start = cubic.repeat((2, 2, 1))
    del start[5]
    return [cubic, pair, vacancy], start


def _water():
    """The water demo: eight molecules in a periodic 6.21 Å cube, three frames of GFN2-xTB MD at 300 K to start from."""
    from ase.io import read

    return read(DEMO / 'water_initial.xyz', ':'), read(DEMO / 'water_start.xyz')


SYSTEMS = {'cu_vacancy': _copper_vacancy, 'cuau_alloy': _cuau_alloy, 'cu_vacancy_small': _copper_vacancy_small,
           'water_xtb': _water}
#: What differs between systems besides their structures: the reference, the MD timestep, the closest distance that
#: counts as a blow-up, and defaults for the options a user did not give. Copper's are the benchmark's historical
#: settings; water's are the water demo's (docs/campaign.md): 0.5 fs for O-H vibrations, 300-400 K, the trust window
#: from the tiny committee's measured held-out errors, r_max 4 Å.
EMT_SYSTEM = {'calculator': {'name': 'emt'}, 'timestep': 2.0, 'closest': 1.0, 'temperatures': [400.0, 700.0, 1000.0],
              'trust_lo': 0.05, 'trust_hi': 0.15, 'md_steps': 300, 'sample_interval': 5, 'model': {}}
SYSTEM_SETTINGS = {
    'water_xtb': {'calculator': {'name': 'gfn2-xtb'}, 'timestep': 0.5, 'closest': 0.6,
                  'temperatures': [300.0, 350.0, 400.0], 'trust_lo': 1.0, 'trust_hi': 3.0, 'md_steps': 400,
                  'sample_interval': 20, 'model': {'r_max': 4.0}, 'test_set': 'water_test.xyz'},
}
#: Options whose default depends on the system (None on the command line: the system's value).
PER_SYSTEM_OPTIONS = ('temperatures', 'trust_lo', 'trust_hi', 'md_steps', 'sample_interval')


def system_settings(system: str, args) -> dict:
    """The system's settings, with every option the user gave on the command line taking precedence."""
    settings = {**EMT_SYSTEM, **SYSTEM_SETTINGS.get(system, {})}
    for name in PER_SYSTEM_OPTIONS:
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    return settings


def reference_md(atoms, temperature: float, frames: int, interval: int, seed: int, calculator: dict | None = None,
                 timestep: float = 2.0) -> list:
    """Frames of Langevin MD with the reference itself (EMT unless ``calculator`` names another, as the labeller's
    spec), each with the reference's energy and forces."""
    from ase import units
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from aiida_alml.engines.calculators import build_calculator

    atoms = atoms.copy()
    atoms.calc = build_calculator(calculator or {'name': 'emt'}, ['energy', 'forces'])
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    dynamics = Langevin(atoms, timestep * units.fs, temperature_K=temperature, friction=0.02, rng=rng)
    dynamics.run(200)  # equilibrate
    images = []
    for _ in range(frames):
        dynamics.run(interval)
        image = atoms.copy()
        image.calc = SinglePointCalculator(image, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        images.append(image)
    return images


# ---------------------------------------------------------------------- campaigns
def campaign_inputs(codes, initial, start, test_set, args, mode: str, seed: int, system: dict | None = None) -> dict:
    from aiida import orm

    from aiida_alml.data import ConfigurationSet

    system = system or system_settings('cu_vacancy', args)
    temperatures = system['temperatures']

    def run(temperature, seed):
        return {'ensemble': 'nvt_langevin', 'temperature': temperature, 'steps': system['md_steps'],
                'timestep': system['timestep'], 'sample_interval': system['sample_interval'], 'seed': seed,
                **({'uncertainty_bias': args.uncertainty_bias} if getattr(args, 'uncertainty_bias', None) else {})}

    if args.exploration == 'schedule':  # two runs per iteration, one temperature per iteration, rising
        exploration = {'explore': {'md': {'code': codes['md'], 'metadata': {'options': OPTIONS}},
                                   'conditions': orm.List([run(temperatures[0], k) for k in (1, 2)])},
                       'explore_schedule': orm.List([{'temperature': t} for t in temperatures])}
    else:  # one run per temperature in every iteration: a pool where most frames are easier than the hardest
        exploration = {'explore': {'md': {'code': codes['md'], 'metadata': {'options': OPTIONS}},
                                   'conditions': orm.List([run(t, k + 1) for k, t in enumerate(temperatures)])}}
    return {
        'initial_structures': ConfigurationSet.from_ase(initial),
        'initial_perturbation': orm.Dict({'count': args.initial_labels, 'rattle_std': 0.04, 'max_strain': 0.02,
                                          'seed': 1}),
        'exploration_structures': ConfigurationSet.from_ase([start]),
        'test_set': test_set,
        'label': {'labeller': orm.Str('ase'),
                  'ase': {'code': codes['label'], 'calculator': orm.Dict(system['calculator']),
                          'properties': orm.List(['energy', 'forces'])}},
        'train': {'num_members': orm.Int(args.members),
                  'train': {'code': codes['train'], 'parameters': orm.Dict({**MODEL, **system['model']}),
                            'metadata': {'options': OPTIONS}}},
        **exploration,
        'selection': orm.Dict({'trust_lo': system['trust_lo'], 'trust_hi': system['trust_hi'],
                               'labels_per_iteration': labels_per_iteration(args, mode), 'mode': mode}),
        'warm_start': orm.Bool(True),
        'warm_start_parameters': orm.Dict({'max_num_epochs': 10}),
        # The benchmark compares learning curves at equal budgets: no campaign may stop early by converging.
        'target_accurate_fraction': orm.Float(1.0),
        'patience': orm.Int(args.iterations + 1),
        'max_iterations': orm.Int(args.iterations),
        'max_labels': orm.Int(10_000),
        'seed': orm.Int(seed),
    }


def labels_per_iteration(args, mode: str) -> int:
    """Random campaigns may be given a larger budget (``--random-label-factor``), so that the labels random needs to
    match active learning's final error can be measured rather than only bounded."""
    return args.labels_per_iteration * (1 if is_active(mode) else args.random_label_factor)


def energy_curve(node) -> list[tuple[int, float | None]]:
    """(labels in the training set, held-out energy RMSE per atom, eV) of every committee the campaign trained."""
    curve = node.outputs.learning_curve.get_dict()
    rows = [*curve['iterations'], *([curve['final_training']] if curve.get('final_training') else [])]
    return [(row['labels_total'], row.get('test_energy_rmse_per_atom')) for row in rows if 'test_force_rmse' in row]


def learning_curve(node) -> list[tuple[int, float]]:
    """(labels in the training set, held-out force RMSE) of every committee the campaign trained."""
    curve = node.outputs.learning_curve.get_dict()
    points = [(row['labels_total'], row['test_force_rmse']) for row in curve['iterations']]
    final = curve.get('final_training') or {}
    if 'test_force_rmse' in final:
        points.append((final['labels_total'], final['test_force_rmse']))
    return points


def stability(models, start, temperature: float, steps: int, seed: int, timestep: float = 2.0,
              blow_up_distance: float = 1.0) -> dict:
    """NVT MD of the final committee at ``temperature``: did it blow up (atoms closer than ``blow_up_distance``, Å),
    how close did atoms come, largest σ."""
    import contextlib

    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.neighborlist import neighbor_list

    from aiida_alml.engines.committee import CommitteeCalculator

    members = [models[key] for key in sorted(models)]
    with contextlib.ExitStack() as stack:
        paths = [str(stack.enter_context(model.verified_path())) for model in members]
        calculator = CommitteeCalculator(model_paths=paths, expected_sha256=[m.sha256 for m in members])
        atoms = start.copy()
        atoms.calc = calculator
        rng = np.random.default_rng(seed)
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
        dynamics = Langevin(atoms, timestep * units.fs, temperature_K=temperature, friction=0.02, rng=rng)
        closest, max_sigma, done = np.inf, 0.0, 0
        for done in range(0, steps, 10):
            dynamics.run(10)
            if not np.isfinite(atoms.positions).all():
                return {'steps': done, 'blew_up': True, 'closest': None, 'max_sigma': None}
            distances = neighbor_list('d', atoms, 3.0)
            closest = min(closest, float(distances.min()) if len(distances) else np.inf)
            max_sigma = max(max_sigma, float(calculator.results['force_sigma'].max()))
            if closest < blow_up_distance:
                return {'steps': done + 10, 'blew_up': True, 'closest': closest, 'max_sigma': max_sigma}
    return {'steps': steps, 'blew_up': False, 'closest': closest, 'max_sigma': max_sigma}


def selection_diagnostics(node, calculator: dict | None = None) -> list[dict]:
    """Per iteration, what the loop's choice was worth, from the reference itself (EMT is cheap enough to label
    every explored frame, GFN2-xTB about a second a frame): Spearman(σ, true error) over the counted frames, and the
    committee's true force RMSE (per component) on the chosen frames against all counted frames. A random pick scores
    the pool's mean."""
    from aiida import orm
    from ase import Atoms

    from ase.calculators.calculator import CalculationFailed

    from aiida_alml.engines.calculators import build_calculator
    from aiida_alml.selection.calibration import spearman
    from aiida_alml.workflows.functions import force_errors

    rows = []
    for key in sorted(node.outputs.selection_records, key=lambda k: int(k.rsplit('_', 1)[1])):
        record = node.outputs.selection_records[key]
        trajectories = {}  # index -> (symbols, positions, cells, committee-mean forces), each read once
        for index, entry in record.base.attributes.get('trajectories').items():
            trajectory = orm.load_node(entry['uuid'])
            trajectories[int(index)] = (trajectory.symbols, trajectory.get_positions(), trajectory.get_cells(),
                                        trajectory.get_array('forces'))
        counted, chosen = record.get_array('counted'), record.get_array('chosen')
        errors = np.full(len(counted), np.nan)
        unlabelled = 0
        for row, (index, frame) in enumerate(zip(record.get_array('trajectory_index'), record.get_array('frame'))):
            if not counted[row]:
                continue
            symbols, positions, cells, forces = trajectories[int(index)]
            atoms = Atoms(symbols=symbols, positions=positions[frame], cell=cells[frame], pbc=True)
            atoms.calc = build_calculator(calculator or {'name': 'emt'}, ['energy', 'forces'])
            try:
                errors[row] = force_errors(atoms.get_forces() - forces[frame])['force_rmse']
            except CalculationFailed:  # an SCF that does not converge (xTB on a distorted frame): no true error
                unlabelled += 1
        uncertainty = record.get_array('uncertainty')
        mask = counted & np.isfinite(errors) & np.isfinite(uncertainty)
        rows.append({
            'iteration': int(key.rsplit('_', 1)[1]),
            'counted': int(mask.sum()),
            'reference_failed': unlabelled,
            'spearman_sigma_error': spearman(uncertainty[mask], errors[mask]) if mask.sum() > 2 else None,
            'pool_force_rmse': float(np.sqrt(np.mean(errors[mask] ** 2))) if mask.any() else None,
            'chosen_force_rmse': float(np.sqrt(np.mean(errors[chosen & mask] ** 2))) if (chosen & mask).any() else None,
        })
    return rows


# ---------------------------------------------------------------------- report
def is_active(mode: str) -> bool:
    """Random baselines are what the other modes, the active-learning rules, are compared against."""
    return mode not in RANDOM_BASELINES


def summarise(system: str, runs: list[dict], initial_labels: int, baseline: str = 'random') -> dict:
    """Labels each mode needs to reach the baseline campaigns' median final error, and the paired ratios."""
    runs = [run for run in runs if is_active(run['mode']) or run['mode'] == baseline]
    random_final = [run['curve'][-1][1] for run in runs if run['mode'] == baseline]
    target = statistics.median(random_final)
    modes = sorted({run['mode'] for run in runs})
    needed = {mode: {run['seed']: labels_to_reach(run['curve'], target) for run in runs if run['mode'] == mode}
              for mode in modes}
    ratios = {}
    for mode in modes:
        if mode == baseline:
            continue
        pairs = [(needed[baseline][seed], needed[mode][seed]) for seed in sorted(needed[mode])
                 if seed in needed[baseline]]
        finite = [(r, a) for r, a in pairs if np.isfinite(r) and np.isfinite(a)]
        total = [r / a for r, a in finite if a > 0]
        chosen = [(r - initial_labels) / (a - initial_labels) for r, a in finite if a > initial_labels]
        ratios[mode] = {'all_labels': total, 'chosen_labels': chosen, 'pairs': len(pairs),
                        'never_reached': sum(1 for _, a in pairs if not np.isfinite(a))}
    return {'system': system, 'baseline': baseline, 'target_force_rmse': target, 'labels_needed': needed,
            'ratios': ratios, 'random_to_match': random_to_match(runs, initial_labels, baseline)}


def random_to_match(runs: list[dict], initial_labels: int, baseline: str = 'random') -> dict:
    """Per active mode and paired seed: the labels the random campaign needs to reach the error the active campaign
    ends with, and the ratio to the labels the active campaign used. A random campaign that never gets there gives a
    lower bound (its own final label count), flagged ``bound``."""
    random_runs = {}
    for run in runs:
        if run['mode'] == baseline:
            if run['seed'] in random_runs:
                raise ValueError(f'two {baseline} campaigns with seed {run["seed"]}: merge one of them at a time')
            random_runs[run['seed']] = run
    matched = {}
    for run in runs:
        if not is_active(run['mode']) or run['seed'] not in random_runs:
            continue
        active_labels, active_error = run['curve'][-1]
        random_curve = random_runs[run['seed']]['curve']
        needed = labels_to_reach(random_curve, active_error)
        bound = not np.isfinite(needed)
        used = random_curve[-1][0] if bound else needed
        # Point k of either curve is the committee after k rounds of (warm-started) training, so comparing points of
        # equal index compares the same training schedule on different data; interpolating between the random
        # campaign's points compares a committee trained k times with one trained k - 1 times.
        rounds = [{'round': k, 'active_labels': a[0], 'active_force_rmse': a[1], 'random_labels': r[0],
                   'random_force_rmse': r[1]} for k, (a, r) in enumerate(zip(run['curve'], random_curve)) if k]
        matched.setdefault(run['mode'], []).append({
            'rounds': rounds,
            'seed': run['seed'], 'active_labels': active_labels, 'active_force_rmse': active_error,
            'random_labels': used, 'bound': bound, 'all_labels': used / active_labels,
            'chosen_labels': (used - initial_labels) / (active_labels - initial_labels)
            if active_labels > initial_labels else None,
        })
    return matched


def _spread(values: list[float]) -> str:
    if not values:
        return 'undefined'
    return (f'median {statistics.median(values):.2f} (range {min(values):.2f}–{max(values):.2f}, '
            f'{len(values)} paired seeds)')


def table(summary: dict, runs: list[dict]) -> str:
    baseline = summary['baseline']
    runs = [run for run in runs if is_active(run['mode']) or run['mode'] == baseline]
    lines = [f'### {summary["system"]} (baseline: {baseline})', '',
             '| mode | seed | labels per iteration | labels → held-out force RMSE (eV/Å, per component) | held-out '
             'energy RMSE (meV/atom) | final committee, NVT MD |', '|---|---|---|---|---|---|']
    for run in sorted(runs, key=lambda r: (r['mode'], r['seed'])):
        curve = ', '.join(f'{n} → {e:.3f}' for n, e in run['curve'])
        # Results stored before energies were recorded have no energy curve.
        energies = ', '.join('-' if e is None else f'{e * 1000:.1f}' for _, e in run.get('energy_curve', [])) or '-'
        stable = run['stability']
        state = 'blew up' if stable['blew_up'] else 'stable'
        closest = f'{stable["closest"]:.2f} Å' if stable['closest'] is not None else '-'
        sigma = f'{stable["max_sigma"]:.2f}' if stable['max_sigma'] is not None else '-'
        per_iteration = run.get('labels_per_iteration', '-')
        lines.append(f'| {run["mode"]} | {run["seed"]} | {per_iteration} | {curve} | {energies} | {state} after {stable["steps"]} steps; closest '
                     f'{closest}; max σ {sigma} eV/Å |')
    diagnostics = [(run['mode'], run['seed'], row) for run in sorted(runs, key=lambda r: (r['mode'], r['seed']))
                   for row in run.get('selection', [])]
    if diagnostics:
        lines += ['', '| mode | seed | iteration | counted frames | Spearman(σ, true error) | true force RMSE: pool → '
                      'chosen (eV/Å) |', '|---|---|---|---|---|---|']
        for mode, seed, row in diagnostics:
            rho = '-' if row['spearman_sigma_error'] is None else f'{row["spearman_sigma_error"]:.2f}'
            pool = '-' if row['pool_force_rmse'] is None else f'{row["pool_force_rmse"]:.3f}'
            chosen = '-' if row['chosen_force_rmse'] is None else f'{row["chosen_force_rmse"]:.3f}'
            lines.append(f'| {mode} | {seed} | {row["iteration"]} | {row["counted"]} | {rho} | {pool} → {chosen} |')

    def fmt(values):
        return ', '.join('never' if not np.isfinite(v) else f'{v:.1f}' for _, v in sorted(values.items()))

    lines += ['', f'Target: the median final held-out force RMSE of the {baseline} campaigns, '
                  f'{summary["target_force_rmse"]:.3f} eV/Å. Labels needed to reach it (by seed): '
              + '; '.join(f'{mode} {fmt(values)}' for mode, values in sorted(summary['labels_needed'].items())) + '.']
    for mode, pairs in sorted(summary['random_to_match'].items()):
        cells = []
        for pair in pairs:
            sign = '>' if pair['bound'] else ''
            chosen = '-' if pair['chosen_labels'] is None else f'{sign}{pair["chosen_labels"]:.2f}'
            cells.append(f'seed {pair["seed"]}: {mode} {pair["active_labels"]} labels → '
                         f'{pair["active_force_rmse"]:.3f}; {baseline} needs {sign}{pair["random_labels"]:.1f} '
                         f'(ratio {sign}{pair["all_labels"]:.2f} in all labels, {chosen} in chosen labels)')
        lines.append(f'Baseline {baseline} to match {mode}\'s final error: ' + '; '.join(cells) + '.')
        rounds = [f'seed {pair["seed"]}: ' + ', '.join(
            f'{row["active_labels"]} → {row["active_force_rmse"]:.3f} vs {row["random_labels"]} → '
            f'{row["random_force_rmse"]:.3f}' for row in pair['rounds']) for pair in pairs]
        lines.append(f'After the same rounds of training, {mode} vs {baseline} (labels → held-out force RMSE): '
                     + '; '.join(rounds) + '.')
    for mode, ratio in sorted(summary['ratios'].items()):
        lines.append(f'Ratio {baseline}/{mode}: all labels {_spread(ratio["all_labels"])}; labels chosen by the loop '
                     f'{_spread(ratio["chosen_labels"])}; {mode} never reached the target in '
                     f'{ratio["never_reached"]} of {ratio["pairs"]} seeds.')
    return '\n'.join(lines)


def report(results: list[dict]) -> str:
    """Tables of every system over one or more result files (runs of one system pooled across files)."""
    by_system: dict[str, list] = {}
    initial = {}
    for result in results:
        settings = result['settings']
        for system, entry in result['systems'].items():
            for run in entry['runs']:  # files written before the label factor existed
                factor = 1 if is_active(run['mode']) else settings.get('random_label_factor', 1)
                run.setdefault('labels_per_iteration', settings['labels_per_iteration'] * factor)
            by_system.setdefault(system, []).extend(entry['runs'])
            initial[system] = result['settings']['initial_labels']
    reports = []
    for system, runs in by_system.items():
        modes = {run['mode'] for run in runs}
        for baseline in sorted(mode for mode in modes if not is_active(mode)):
            if any(is_active(mode) for mode in modes):
                reports.append(table(summarise(system, runs, initial[system], baseline), runs))
    return '\n\n'.join(reports)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--systems', nargs='+', default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--modes', nargs='+', default=['weighted', 'random'],
                        choices=['weighted', 'fps', *RANDOM_BASELINES])
    parser.add_argument('--iterations', type=int, default=4)
    parser.add_argument('--labels-per-iteration', type=int, default=6)
    parser.add_argument('--random-label-factor', type=int, default=1,
                        help='random campaigns (both random modes) label this many times --labels-per-iteration (to '
                             'measure, not bound, how many labels random needs to match active learning)')
    parser.add_argument('--initial-labels', type=int, default=12)
    parser.add_argument('--members', type=int, default=2)
    # Defaults of these five depend on the system (SYSTEM_SETTINGS; copper: 300, 5, 400 700 1000, 0.05, 0.15).
    parser.add_argument('--md-steps', type=int, default=None)
    parser.add_argument('--sample-interval', type=int, default=None)
    parser.add_argument('--temperatures', nargs='+', type=float, default=None)
    parser.add_argument('--exploration', choices=['schedule', 'spread'], default='schedule',
                        help='schedule: two MD runs per iteration at one temperature, rising from iteration to '
                             'iteration; spread: one run per temperature in every iteration')
    parser.add_argument('--test-temperature-factor', type=float, default=1.5)
    parser.add_argument('--test-frames', type=int, default=20)
    parser.add_argument('--trust-lo', type=float, default=None)
    parser.add_argument('--trust-hi', type=float, default=None)
    parser.add_argument('--stability-steps', type=int, default=500)
    parser.add_argument('--uncertainty-bias', type=float, default=None,
                        help='τ of uncertainty-biased exploration MD (engines/bias.py); default: plain MD')
    parser.add_argument('--out', type=pathlib.Path, default=None, help='write all figures as JSON here')
    parser.add_argument('--merge', nargs='+', type=pathlib.Path, default=None,
                        help='run nothing: print the tables of these result files together')
    args = parser.parse_args(argv)
    if args.merge:
        print(report([json.loads(path.read_text()) for path in args.merge]))
        return 0

    with throwaway_profile('data-efficiency') as folder:
        from aiida import engine, orm

        from aiida_alml.data import ConfigurationSet
        from aiida_alml.workflows.active_learning import ActiveLearningWorkChain

        computer = orm.Computer(label='bench', hostname='localhost', transport_type='core.local',
                                scheduler_type='core.direct', workdir=str(pathlib.Path(folder) / 'scratch')).store()
        computer.configure(safe_interval=0.0)
        computer.set_minimum_job_poll_interval(0.0)
        computer.set_default_mpiprocs_per_machine(1)
        bindir = pathlib.Path(sys.executable).parent
        codes = {
            name: orm.InstalledCode(label=executable, computer=computer, default_calc_job_plugin=plugin,
                                    filepath_executable=str(bindir / executable)).store()
            for name, executable, plugin in (('label', 'alml-label', 'alml.ase'),
                                             ('train', 'alml-train', 'alml.mace.train'),
                                             ('md', 'alml-md', 'alml.md'))
        }
        results = {'settings': vars(args) | {'out': str(args.out)}, 'systems': {}}
        for system in args.systems:
            settings = system_settings(system, args)
            test_temperature = args.test_temperature_factor * max(settings['temperatures'])
            initial, start = SYSTEMS[system]()
            if 'test_set' in settings:
                test_set = ConfigurationSet.from_extxyz(DEMO / settings['test_set']).store()
                test_temperature = 450.0  # the temperature that set's MD ran at
            else:
                test_images = reference_md(start, test_temperature, args.test_frames, interval=25, seed=1234,
                                           calculator=settings['calculator'], timestep=settings['timestep'])
                test_set = ConfigurationSet.from_ase(test_images).store()
            runs = []
            for seed in args.seeds:
                for mode in args.modes:
                    began = time.perf_counter()
                    inputs = campaign_inputs(codes, initial, start, test_set, args, mode, seed, settings)
                    _, node = engine.run_get_node(ActiveLearningWorkChain, **inputs)
                    if 'learning_curve' not in node.outputs:
                        print(f'{system} {mode} seed {seed}: campaign <{node.pk}> failed: {node.exit_message}')
                        continue
                    run = {'mode': mode, 'seed': seed, 'labels_per_iteration': labels_per_iteration(args, mode),
                           'pk': node.pk, 'exit_status': node.exit_status,
                           'curve': learning_curve(node), 'energy_curve': energy_curve(node), 'wall_s': time.perf_counter() - began}
                    run['selection'] = selection_diagnostics(node, settings['calculator'])
                    run['stability'] = stability(dict(node.outputs.models.items()), start, test_temperature,
                                                 args.stability_steps, seed, settings['timestep'], settings['closest'])
                    print(f'{system} {mode} seed {seed}: {run["curve"]} ({run["wall_s"]:.0f} s); '
                          f'stability {run["stability"]}', flush=True)
                    runs.append(run)
                    results['systems'][system] = {'runs': runs, 'settings': settings}
                    if args.out:  # after every campaign, so that a long grid cut short keeps what it measured
                        args.out.write_text(json.dumps(results, indent=1, default=str))
        print(report([results]))
    return 0


if __name__ == '__main__':
    sys.exit(main())
