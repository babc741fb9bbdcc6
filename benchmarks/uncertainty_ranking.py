"""Benchmark (issue 25, item 1): which uncertainty ranks held-out frames by their true error?

Run: ``OMP_NUM_THREADS=1 python benchmarks/uncertainty_ranking.py [--quick] [--systems copper cuau water]
[--work-dir DIR] [--out benchmarks/results/uncertainty_ranking/ranking.json]``.

No AiiDA: the reference data are made with ASE (EMT for the copper systems, GFN2-xTB through tblite for water), the
models are trained with ``alml-train`` directly (the campaign's tiny ScaleShiftMACE settings). Per system:

* training frames (reference MD at two temperatures, or perturbed frames for water), calibration frames (other
  seed, a temperature in between: held out from training, used only to fit each estimator's scale α), and held-out
  frames hotter than training (the repo's demo test sets, extended with more frames of the same kind where cheap);
* committee A: ``--members`` members (2 by default, the demos' committee size), seeds only (today's committee);
  committee B: as many members that also differ in r_max and each see a bootstrap resample of the training frames
  (more diversity); committee C: bootstrap resamples and seeds with A's r_max (the diversity one committee graph can
  evaluate);
* estimators, each turned into a frame score:
  - ``committee_force_sigma``: max_i σ_F,i of A (today's); ``diverse_force_sigma``: the same for B;
  - ``committee_atom_energy_sigma``: max_i of the members' spread of atomic energy E_i (A);
  - ``llpr_last_layer`` / ``gp_node``: posterior std of a Bayesian linear model on member A0's last-layer / node
    features (uncentred, per element, :class:`~aiida_alml.selection.feature_uncertainty.FeatureSpaceUncertainty`),
    max over atoms; ``mahalanobis_last_layer`` / ``mahalanobis_node``: the centred (distance-to-training) version;
* the true errors: max_i |ΔF_i| and |ΔE| of the prediction each estimator belongs to (committee mean of A or B; A0
  alone for the single-model feature estimates), and per estimator Spearman(score, true max |ΔF|), Spearman(energy
  score, |ΔE|), and the coverage P(max|ΔF| ≤ 2 α u) with α = sqrt(Σ err² / Σ u²) fitted on the calibration frames.

Energy scores: committee σ of the total energy; ``committee_atom_energy_sigma``: sqrt(Σ_i var E_i) (atoms
independent); feature estimates: the LLPR variance of the summed features, Σ_Z f_Σ,Zᵀ A_Z⁻¹ f_Σ,Z.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO = ROOT / 'aiida_alml' / 'protocols' / 'demo'
RESULTS = ROOT / 'benchmarks' / 'results' / 'uncertainty_ranking'
MODEL = ['--model', 'ScaleShiftMACE', '--num_channels', '16', '--max_L', '0', '--num_interactions', '2',
         '--correlation', '2', '--batch_size', '4', '--valid_batch_size', '8', '--valid_fraction', '0.15',
         '--default_dtype', 'float64', '--device', 'cpu', '--swa']  # fmt: skip
#: Per system: reference, r_max of committee A, r_max of committee B's members, temperatures (K) of training MD,
#: calibration MD and held-out MD (EMT only; water's frames come from the demo files, see ``_water``).
SYSTEMS = {
    'copper': {'calculator': {'name': 'emt'}, 'r_max': 4.5, 'diverse_r_max': (4.0, 4.5, 5.0),
               'train_temperatures': (300.0, 600.0), 'calibration_temperature': 450.0, 'test_temperature': 900.0},
    'cuau': {'calculator': {'name': 'emt'}, 'r_max': 4.5, 'diverse_r_max': (4.0, 4.5, 5.0),
             'train_temperatures': (400.0, 700.0), 'calibration_temperature': 550.0, 'test_temperature': 1000.0},
    'water': {'calculator': {'name': 'gfn2-xtb'}, 'r_max': 4.0, 'diverse_r_max': (3.5, 4.0, 4.5)},
}
#: The held-out frames start with the repo's demo test set (12 frames) for these systems.
DEMO_TEST_FRAMES = {'copper': 12, 'water': 12}
FEATURE_ESTIMATORS = {  # name: (feature kind, centred)
    'llpr_last_layer': ('last_layer', False),
    'mahalanobis_last_layer': ('last_layer', True),
    'gp_node': ('node', False),
    'mahalanobis_node': ('node', True),
}


# ---------------------------------------------------------------------- reference data
def _calculator(spec):
    from aiida_alml.engines.calculators import build_calculator

    return build_calculator(spec, ['energy', 'forces'])


def _label(frames, spec) -> list:
    """Copies with the reference energy and forces under REF_energy / REF_forces (a fresh calculator each: tblite
    would otherwise start its SCF from the previous frame's solution)."""
    labelled = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = _calculator(spec)
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = None
        atoms.info['REF_energy'] = float(energy)
        atoms.arrays['REF_forces'] = np.array(forces)
        labelled.append(atoms)
    return labelled


def _md(atoms, spec, temperature, frames, interval, seed, timestep=2.0) -> list:
    """Langevin MD of the reference itself (after 200 steps of equilibration), frames labelled."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    atoms = atoms.copy()
    atoms.calc = _calculator(spec)
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    dynamics = Langevin(atoms, timestep * units.fs, temperature_K=temperature, friction=0.02, rng=rng)
    dynamics.run(200)
    images = []
    for _ in range(frames):
        dynamics.run(interval)
        image = atoms.copy()
        image.calc = None
        image.info['REF_energy'] = float(atoms.get_potential_energy())
        image.arrays['REF_forces'] = np.array(atoms.get_forces())
        images.append(image)
    return images


def _isolated_energies(symbols, spec) -> dict[int, float]:
    """E0s: the reference's energy of one atom alone in a big non-periodic box."""
    from ase import Atoms

    e0s = {}
    for symbol in sorted(set(symbols)):
        atom = Atoms(symbol, positions=[[0.0, 0.0, 0.0]], cell=[20.0, 20.0, 20.0], pbc=False)
        atom.calc = _calculator(spec)
        e0s[int(atom.numbers[0])] = float(atom.get_potential_energy())
    return e0s


def _cuau_start():
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    from data_efficiency import _cuau_alloy

    return _cuau_alloy()[1]


def make_data(system: str, quick: bool) -> dict:
    """{'train', 'calibration', 'test': labelled frames, 'e0s': {Z: E0}}."""
    from ase.io import read

    settings = SYSTEMS[system]
    spec = settings['calculator']
    n_train, n_cal, n_test = (8, 4, 8) if quick else (20, 10, 28)
    if system in ('copper', 'cuau'):
        start = read(DEMO / 'copper_vacancy.xyz') if system == 'copper' else _cuau_start()
        train = []
        for k, temperature in enumerate(settings['train_temperatures']):
            train += _md(start, spec, temperature, n_train, 10, seed=10 + k)
        calibration = _md(start, spec, settings['calibration_temperature'], n_cal, 10, seed=20)
        test = _md(start, spec, settings['test_temperature'], n_test, 10, seed=30)
        if system == 'copper':  # the demo's held-out set (EMT MD at 900 K) first
            test = read(DEMO / 'copper_test.xyz', ':') + test
    else:
        data = _water(spec, quick)
        train, calibration, test = data['train'], data['calibration'], data['test']
    symbols = {s for atoms in train for s in atoms.get_chemical_symbols()}
    return {'train': train, 'calibration': calibration, 'test': test, 'e0s': _isolated_energies(symbols, spec)}


def _perturbed(frames, count, rattle, strain, seed) -> list:
    """``count`` copies of the frames (cycled), rattled (Å) and strained (fraction), as the demo perturbs them."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        atoms = frames[k % len(frames)].copy()
        deformation = np.eye(3) + rng.uniform(-strain, strain, (3, 3))
        atoms.set_cell(atoms.cell @ deformation, scale_atoms=True)
        atoms.positions += rng.normal(0.0, rattle, atoms.positions.shape)
        out.append(atoms)
    return out


def _water(spec, quick: bool) -> dict:
    """GFN2-xTB costs seconds per frame here, so no MD: training = the demo's three 300 K frames and perturbed copies
    (rattle 0.03-0.06 Å, strain 2 %, as the demo perturbs its initial labels), calibration = other perturbed copies,
    held-out = the demo's 12 frames of 450 K MD plus, outside --quick, one perturbed (0.03 Å) copy of each."""
    from ase.io import read

    initial = read(DEMO / 'water_initial.xyz', ':')
    n_train, n_cal = (6, 3) if quick else (27, 8)
    train = _label(initial + _perturbed(initial, n_train, 0.045, 0.02, seed=1), spec)
    calibration = _label(_perturbed(initial, n_cal, 0.045, 0.02, seed=2), spec)
    test = read(DEMO / 'water_test.xyz', ':')
    if quick:
        test = test[:6]
    else:
        test = test + _label(_perturbed(test, len(test), 0.03, 0.0, seed=3), spec)
    return {'train': train, 'calibration': calibration, 'test': test}


def cached_data(work: pathlib.Path, system: str, quick: bool) -> dict:
    from ase.io import read, write

    folder = work / system
    files = {name: folder / f'{name}.xyz' for name in ('train', 'calibration', 'test')}
    if not all(path.exists() for path in files.values()) or not (folder / 'e0s.json').exists():
        start = time.time()
        data = make_data(system, quick)
        folder.mkdir(parents=True, exist_ok=True)
        for name, path in files.items():
            write(path, data[name], format='extxyz')
        (folder / 'e0s.json').write_text(json.dumps({str(z): e for z, e in data['e0s'].items()}))
        print(f'{system}: reference data in {time.time() - start:.0f} s', flush=True)
    data = {name: read(path, ':') for name, path in files.items()}
    for frames in data.values():  # extxyz reads REF_energy into info, REF_forces into arrays
        for atoms in frames:
            atoms.calc = None
    data['e0s'] = {int(z): e for z, e in json.loads((folder / 'e0s.json').read_text()).items()}
    return data


# ---------------------------------------------------------------------- training
def _alml_train() -> str:
    exe = pathlib.Path(sys.executable).parent / 'alml-train'
    return str(exe) if exe.exists() else 'alml-train'


def train_member(folder: pathlib.Path, frames, e0s, seed: int, r_max: float, epochs: int) -> pathlib.Path:
    """One member with alml-train in ``folder`` (reused when its model file exists)."""
    from ase.io import write

    model = folder / 'model.alml'
    if model.exists():
        return model
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / 'training.lock'
    try:  # several --train-only processes may share a work dir: each member is trained by one of them
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        print(f'  {folder} is being trained by another process (remove {lock} if none is)', flush=True)
        return None
    write(folder / 'train.xyz', frames, format='extxyz')
    command = [_alml_train(), '--name', 'model', '--seed', str(seed), '--train_file', 'train.xyz',
               '--E0s', repr(e0s), '--energy_key', 'REF_energy', '--forces_key', 'REF_forces', '--work_dir', '.',
               '--r_max', str(r_max), '--max_num_epochs', str(epochs), *MODEL]  # fmt: skip
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    start = time.time()
    proc = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not model.exists():
        lock.unlink()
        raise RuntimeError(f'alml-train failed in {folder} (rc={proc.returncode}):\n{proc.stdout[-2000:]}\n'
                           f'{proc.stderr[-2000:]}')
    for sub in ('checkpoints', 'logs', 'results'):
        shutil.rmtree(folder / sub, ignore_errors=True)
    lock.unlink()
    print(f'  trained {folder.relative_to(folder.parents[1])} in {time.time() - start:.0f} s', flush=True)
    return model


def train_committees(work: pathlib.Path, system: str, data: dict, epochs: int, members: int) -> dict:
    """Committee A (seeds only), committee B (seeds, r_max and bootstrap resamples of the training frames) and
    committee C (seeds and bootstrap resamples, A's r_max)."""
    settings = SYSTEMS[system]
    folder = work / system
    committee = [train_member(folder / f'A{k}', data['train'], data['e0s'], 1 + k, settings['r_max'], epochs)
                 for k in range(members)]
    rng = np.random.default_rng(7)
    diverse = []
    for k in range(members):
        resample = rng.integers(0, len(data['train']), len(data['train']))
        frames = [data['train'][i] for i in resample]
        r_max = settings['diverse_r_max'][k % len(settings['diverse_r_max'])]
        diverse.append(train_member(folder / f'B{k}', frames, data['e0s'], 11 + k, r_max, epochs))
    # committee C: bootstrap resamples and seeds, one r_max (what the committee calculator can evaluate in one graph)
    rng = np.random.default_rng(17)
    bootstrap = []
    for k in range(members):
        resample = rng.integers(0, len(data['train']), len(data['train']))
        frames = [data['train'][i] for i in resample]
        bootstrap.append(train_member(folder / f'C{k}', frames, data['e0s'], 21 + k, settings['r_max'], epochs))
    return {'committee': committee, 'diverse': diverse, 'bootstrap': bootstrap}


# ---------------------------------------------------------------------- evaluation
def member_predictions(model_paths, frames) -> dict:
    """Per frame: member forces (M, n, 3), atomic energies (M, n), energies (M,). Members may differ in r_max, so
    each is its own one-member CommitteeCalculator."""
    from aiida_alml.engines.committee import CommitteeCalculator

    calculators = [CommitteeCalculator(model_paths=[path], default_dtype='float64') for path in model_paths]
    forces, atom_energies = [], []
    for atoms in frames:
        per_member = [calc.evaluate(atoms, compute_stress=False) for calc in calculators]
        forces.append(np.concatenate([m['forces'] for m in per_member]))
        atom_energies.append(np.concatenate([m['node_energies'] for m in per_member]))
    return {'forces': forces, 'atom_energies': atom_energies,
            'energies': [e.sum(axis=1) for e in atom_energies]}


def true_errors(frames, forces, energies) -> dict:
    """Max atomic |ΔF| and |ΔE| of predictions (n, 3) / scalars against the reference labels."""
    max_force = [float(np.linalg.norm(f - a.arrays['REF_forces'], axis=1).max()) for a, f in zip(frames, forces)]
    energy = [abs(float(e) - a.info['REF_energy']) for a, e in zip(frames, energies)]
    return {'max_force': np.array(max_force), 'energy': np.array(energy)}


def committee_scores(frames, predictions) -> tuple[dict, dict]:
    """Errors of the committee mean and the committee's frame scores (force ranking, energy ranking)."""
    from aiida_alml.selection.uncertainty import force_sigma

    errors = true_errors(frames, [f.mean(axis=0) for f in predictions['forces']],
                         [e.mean() for e in predictions['energies']])
    scores = {
        'force_sigma': np.array([force_sigma(f).max() for f in predictions['forces']]),
        'atom_energy_sigma': np.array([e.std(axis=0).max() for e in predictions['atom_energies']]),
        'energy_sigma': np.array([e.std() for e in predictions['energies']]),
        'atom_energy_sigma_summed': np.array([np.sqrt(e.var(axis=0).sum()) for e in predictions['atom_energies']]),
    }
    return errors, scores


def _scale(errors, scores) -> float | None:
    """α = sqrt(Σ err² / Σ u²) over calibration frames (the pooled ratio of ``calibration.fit_calibration_factor``)."""
    denominator = float(np.sum(np.asarray(scores) ** 2))
    return float(np.sqrt(np.sum(np.asarray(errors) ** 2) / denominator)) if denominator > 0 else None


def _bootstrap_interval(errors, scores, draws: int = 1000, seed: int = 0) -> list[float] | None:
    """90 % interval of Spearman over bootstrap resamples of the frames: how much the ranking of a few dozen
    frames can be trusted."""
    from aiida_alml.selection.calibration import spearman

    rng = np.random.default_rng(seed)
    values = [spearman(scores[i], errors[i]) for i in rng.integers(0, len(errors), (draws, len(errors)))]
    values = [v for v in values if v is not None]
    return [float(np.quantile(values, 0.05)), float(np.quantile(values, 0.95))] if values else None


def ranking(test_errors, test_scores, cal_errors, cal_scores, demo_frames: int = 0) -> dict:
    """Spearman of the scores against the true errors on the held-out frames (all of them, and the repo's demo
    test set alone where it is part of them), the calibration scale α and the 2α coverage."""
    from aiida_alml.selection.calibration import spearman

    test_errors, test_scores = np.asarray(test_errors), np.asarray(test_scores)
    alpha = _scale(cal_errors, cal_scores)
    row = {'spearman': spearman(test_scores, test_errors), 'alpha': alpha,
           'spearman_interval90': _bootstrap_interval(test_errors, test_scores)}
    if demo_frames:
        row['spearman_demo_test_set'] = spearman(test_scores[:demo_frames], test_errors[:demo_frames])
    if alpha is not None:
        row['coverage_2alpha'] = float(np.mean(test_errors <= 2 * alpha * test_scores))
        row['coverage_2alpha_calibration'] = float(np.mean(cal_errors <= 2 * alpha * cal_scores))
        # > 1: the held-out errors outgrow what the calibration frames promised
        row['median_error_over_calibrated'] = float(np.median(test_errors / np.maximum(alpha * test_scores, 1e-300)))
    return row


def evaluate(system: str, data: dict, models: dict) -> dict:
    from aiida_alml.engines.features import atomic_features, load_feature_model
    from aiida_alml.selection.feature_uncertainty import FeatureSpaceUncertainty

    sets = ('calibration', 'test')
    demo = DEMO_TEST_FRAMES.get(system, 0) if len(data['test']) > DEMO_TEST_FRAMES.get(system, 0) else 0
    result = {'frames': {name: len(data[name]) for name in ('train', 'calibration', 'test')}, 'demo_test_frames': demo,
              'atoms_per_frame': sorted({len(a) for a in data['test']}), 'force': {}, 'energy': {}, 'error': {}}
    errors, scores = {}, {}
    for tag in ('committee', 'diverse', 'bootstrap'):
        paths = models[tag]
        for name in sets:
            errors[tag, name], scores[tag, name] = committee_scores(data[name], member_predictions(paths, data[name]))
    single = {name: member_predictions(models['committee'][:1], data[name]) for name in sets}
    for name in sets:
        errors['single', name] = true_errors(data[name], [f[0] for f in single[name]['forces']],
                                             [e[0] for e in single[name]['energies']])

    force_rows = {'committee_force_sigma': ('committee', 'force_sigma'),
                  'diverse_force_sigma': ('diverse', 'force_sigma'),
                  'bootstrap_force_sigma': ('bootstrap', 'force_sigma'),
                  'committee_atom_energy_sigma': ('committee', 'atom_energy_sigma')}
    energy_rows = {'committee_energy_sigma': ('committee', 'energy_sigma'),
                   'diverse_energy_sigma': ('diverse', 'energy_sigma'),
                   'bootstrap_energy_sigma': ('bootstrap', 'energy_sigma'),
                   'committee_atom_energy_sigma': ('committee', 'atom_energy_sigma_summed')}
    for row, (tag, key) in force_rows.items():
        result['force'][row] = ranking(errors[tag, 'test']['max_force'], scores[tag, 'test'][key],
                                       errors[tag, 'calibration']['max_force'], scores[tag, 'calibration'][key], demo)
    for row, (tag, key) in energy_rows.items():
        result['energy'][row] = ranking(errors[tag, 'test']['energy'], scores[tag, 'test'][key],
                                        errors[tag, 'calibration']['energy'], scores[tag, 'calibration'][key], demo)
    # today's committee σ against the single member's own errors too: is the comparison with A0's estimates fair?
    result['force']['committee_force_sigma_vs_member0_errors'] = ranking(
        errors['single', 'test']['max_force'], scores['committee', 'test']['force_sigma'],
        errors['single', 'calibration']['max_force'], scores['committee', 'calibration']['force_sigma'], demo)

    model = load_feature_model(models['committee'][0])
    species = {name: [a.numbers for a in data[name]] for name in ('train', *sets)}
    for kind in ('last_layer', 'node'):
        features = {name: atomic_features(model, data[name], kind=kind) for name in ('train', *sets)}
        for row, (row_kind, centred) in FEATURE_ESTIMATORS.items():
            if row_kind != kind:
                continue
            estimator = FeatureSpaceUncertainty(centred=centred).fit(features['train'], species['train'])
            frame = {name: estimator.frame_uncertainty(features[name], species[name]) for name in sets}
            energy = {name: estimator.energy_uncertainty(features[name], species[name]) for name in sets}
            result['force'][row] = ranking(errors['single', 'test']['max_force'], frame['test'],
                                           errors['single', 'calibration']['max_force'], frame['calibration'], demo)
            result['energy'][row] = ranking(errors['single', 'test']['energy'], energy['test'],
                                            errors['single', 'calibration']['energy'], energy['calibration'], demo)
            result.setdefault('feature_dimension', {})[kind] = int(features['train'][0].shape[1])
    for tag in ('committee', 'diverse', 'bootstrap', 'single'):
        test = errors[tag, 'test']
        result['error'][tag] = {'max_force_median': float(np.median(test['max_force'])),
                                'energy_mae_per_atom': float(np.mean(test['energy']) / np.mean([len(a) for a in data['test']]))}
    return result


# ---------------------------------------------------------------------- report
LABELS = {
    'committee_force_sigma': '(a) committee σ_F (seeds)',
    'diverse_force_sigma': '(b) diverse committee σ_F (seeds + r_max + bootstrap)',
    'bootstrap_force_sigma': '(e) bootstrap committee σ_F (seeds + bootstrap, one r_max)',
    'committee_atom_energy_sigma': '(c) committee per-atom energy σ',
    'llpr_last_layer': '(d) LLPR, last-layer features (single model)',
    'mahalanobis_last_layer': '(d) Mahalanobis, last-layer features',
    'gp_node': '(d) GP/LLPR-form, node features',
    'mahalanobis_node': '(d) Mahalanobis, node features',
    'committee_energy_sigma': '(a) committee σ_E',
    'diverse_energy_sigma': '(b) diverse committee σ_E',
    'bootstrap_energy_sigma': '(e) bootstrap committee σ_E',
    'committee_force_sigma_vs_member0_errors': '(a) committee σ_F vs member 0 errors',
}


def _fmt(value, digits=2):
    return '—' if value is None else f'{value:.{digits}f}'


def table(results: dict) -> str:
    systems = list(results['systems'])
    lines = ['| estimator | ' + ' | '.join(f'{s}: ρ_F | cov' for s in systems) + ' | ' +
             ' | '.join(f'{s}: ρ_E' for s in systems) + ' |',
             '|---' * (1 + 3 * len(systems)) + '|']
    names = [n for n in LABELS if any(n in r['force'] or n in r['energy'] for r in results['systems'].values())]
    for name in names:
        cells = []
        for s in systems:
            row = results['systems'][s]['force'].get(name, {})
            cells += [_fmt(row.get('spearman')), _fmt(row.get('coverage_2alpha'))]
        for s in systems:
            cells.append(_fmt(results['systems'][s]['energy'].get(name, {}).get('spearman')))
        lines.append(f'| {LABELS[name]} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def detail_table(results: dict) -> str:
    """Force ranking with its 90 % bootstrap interval, and on the repo's demo test set alone (where included)."""
    systems = list(results['systems'])
    lines = ['| estimator | ' + ' | '.join(f'{s}: ρ_F [90 % interval] | ρ_F demo set' for s in systems) + ' |',
             '|---' * (1 + 2 * len(systems)) + '|']
    names = [n for n in LABELS if any(n in r['force'] for r in results['systems'].values())]
    for name in names:
        cells = []
        for s in systems:
            row = results['systems'][s]['force'].get(name, {})
            interval = row.get('spearman_interval90')
            cells.append(f"{_fmt(row.get('spearman'))} [{_fmt(interval and interval[0])}, {_fmt(interval and interval[1])}]")
            cells.append(_fmt(row.get('spearman_demo_test_set')))
        lines.append(f'| {LABELS[name]} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--systems', nargs='+', default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument('--quick', action='store_true', help='few frames, 3 epochs: a smoke run')
    parser.add_argument('--members', type=int, default=2, help='members per committee (default 2, the demos\' size)')
    parser.add_argument('--epochs', type=int, default=None, help='training epochs (default 25, quick 3)')
    parser.add_argument('--work-dir', type=pathlib.Path, default=None,
                        help='where data and models are kept and reused (default /tmp/alml-uncertainty-ranking[-quick])')
    parser.add_argument('--out', type=pathlib.Path, default=None)
    parser.add_argument('--train-only', action='store_true', help='make the data and models, evaluate nothing')
    args = parser.parse_args(argv)
    members = args.members
    epochs = args.epochs or (3 if args.quick else 25)
    work = args.work_dir or pathlib.Path('/tmp/alml-uncertainty-ranking' + ('-quick' if args.quick else ''))
    out = args.out or RESULTS / ('ranking_quick.json' if args.quick else 'ranking.json')
    start = time.time()
    results = {'settings': {'members': members, 'epochs': epochs, 'quick': args.quick, 'model': MODEL,
                            'systems': {s: SYSTEMS[s] for s in args.systems}}, 'systems': {}}
    prepared = {}
    for system in args.systems:  # all data and models first: the evaluation is cheap and can be rerun
        data = cached_data(work, system, args.quick)
        prepared[system] = data, train_committees(work, system, data, epochs, members)
    if args.train_only:
        return 0
    missing = [s for s, (_, models) in prepared.items()
               if None in models['committee'] + models['diverse'] + models['bootstrap']]
    if missing:
        raise SystemExit(f'members of {missing} are still being trained by another process; run again later')
    for system, (data, models) in prepared.items():
        results['systems'][system] = evaluate(system, data, models)
        print(f'{system}: done at {time.time() - start:.0f} s', flush=True)
    results['wall_s'] = round(time.time() - start, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(table(results))
    print()
    print(detail_table(results))
    print(f'wrote {out}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
