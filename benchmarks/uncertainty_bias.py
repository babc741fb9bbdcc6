"""Benchmark (issue 25, item 2): does uncertainty-biased MD find the frames the committee gets wrong?

Run: ``OMP_NUM_THREADS=1 python benchmarks/uncertainty_bias.py [--systems copper cuau water] [--strengths 0 1 3 10]
[--cap EV] [--seeds 0 1 2] [--steps 600] [--work-dir /tmp/alml-uncertainty-ranking] [--out FILE]``.

No AiiDA. The committees and reference data are those of ``benchmarks/uncertainty_ranking.py`` (trained there, or
reused from its ``--work-dir``): committee A, the campaign's kind (members differing in seed only), trained on
reference MD at two temperatures. Each run is ``alml-md``'s own ``run_md`` (Langevin) with the committee, started from
a training frame at the temperature between the two training temperatures (``calibration_temperature``; water:
300 K), with ``uncertainty_bias`` τ from ``--strengths`` (0: plain MD), the same seeds for every τ. Every sampled frame
is labelled with the reference afterwards (unbiased, as the loop labels), and per τ the table gives over all frames
of all seeds: the committee's σ (max atomic force σ), the true largest atomic force error of the committee mean
(eV/Å), the energy error (meV/atom), the fraction of frames whose force error exceeds the plain runs' 90th
percentile, the fraction with atoms closer than 0.8 × the closest distance in the training data (unphysical, which
``weighted`` selection would drop), and the runs' mean kinetic temperature (the bias does work on the atoms). Frames the reference cannot label (xTB's SCF
does not converge on a torn-apart frame) are counted as such; the errors are over the others.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))

from uncertainty_ranking import SYSTEMS, _label, cached_data, train_committees  # noqa: E402

RESULTS = ROOT / 'benchmarks' / 'results' / 'uncertainty_bias'
#: Exploration temperature (K) per system: between the training temperatures (water's frames are perturbed, not MD).
TEMPERATURES = {'copper': SYSTEMS['copper']['calibration_temperature'],
                'cuau': SYSTEMS['cuau']['calibration_temperature'], 'water': 300.0}
TIMESTEPS = {'copper': 2.0, 'cuau': 2.0, 'water': 0.5}


def _closest(atoms) -> float:
    from ase.neighborlist import neighbor_list

    distances = neighbor_list('d', atoms, 3.0)
    return float(distances.min()) if len(distances) else np.inf


def explore(system: str, models: list, start, strength: float, seed: int, steps: int,
            cap: float | None = None) -> tuple[list, dict]:
    """Frames of one committee MD run (positions set on copies of ``start``) and its summary."""
    from aiida_alml.engines.committee import CommitteeCalculator
    from aiida_alml.engines.md import run_md

    calculator = CommitteeCalculator(model_paths=[str(path) for path in models], default_dtype='float64')
    parameters = {'temperature': TEMPERATURES[system], 'steps': steps, 'sample_interval': 20, 'seed': seed,
                  'timestep': TIMESTEPS[system], 'uncertainty_bias': strength or None, 'min_distance': 0.5,
                  'uncertainty_bias_cap': cap if strength else None}
    atoms = start.copy()
    atoms.calc = None
    arrays, summary = run_md(atoms, calculator, parameters)
    frames = []
    for index in range(1, len(arrays.get('step', []))):  # frame 0 is the start itself
        frame = start.copy()
        frame.calc = None
        frame.positions, frame.cell = arrays['positions'][index], arrays['cell'][index]
        frame.info = {'predicted_energy': float(arrays['energy'][index]),
                      'max_force_sigma': float(arrays['max_force_sigma'][index]),
                      'temperature': float(arrays['temperature'][index])}
        frame.arrays['predicted_forces'] = arrays['forces'][index]
        frames.append(frame)
    return frames, summary


def frame_errors(frames: list, spec: dict) -> dict:
    from ase.calculators.calculator import CalculationFailed

    force, energy = [], []
    for frame in frames:
        try:
            (labelled,) = _label([frame], spec)
        except CalculationFailed:  # e.g. xTB's SCF on a torn-apart frame: counted, its errors unknown
            force.append(np.nan)
            energy.append(np.nan)
            continue
        force.append(float(np.linalg.norm(frame.arrays['predicted_forces'] - labelled.arrays['REF_forces'],
                                          axis=1).max()))
        energy.append(abs(frame.info['predicted_energy'] - labelled.info['REF_energy']) / len(frame) * 1000)
    return {'force_error': np.array(force), 'energy_error': np.array(energy),
            'sigma': np.array([a.info['max_force_sigma'] for a in frames]),
            'temperature': np.array([a.info['temperature'] for a in frames]),
            'closest': np.array([_closest(a) for a in frames])}


def run_system(system: str, work: pathlib.Path, strengths, seeds, steps: int, epochs: int,
               cap: float | None = None) -> dict:
    data = cached_data(work, system, quick=False)
    models = train_committees(work, system, data, epochs, members=2)['committee']
    spec = SYSTEMS[system]['calculator']
    training_closest = min(_closest(atoms) for atoms in data['train'])
    starts = [data['train'][0], data['train'][len(data['train']) // 2]]
    runs = {}
    for strength in strengths:
        pooled, stops = {}, []
        for seed in seeds:
            started = time.time()
            frames, summary = explore(system, models, starts[seed % len(starts)], strength, seed, steps, cap)
            stops.append(summary['stop_kind'])
            errors = frame_errors(frames, spec) if frames else {}
            for key, values in errors.items():
                pooled.setdefault(key, []).extend(values.tolist())
            print(f'{system} τ={strength:g} seed {seed}: {len(frames)} frames, {summary["stop_kind"]}, '
                  f'{time.time() - started:.0f} s', flush=True)
        runs[f'{strength:g}'] = {'strength': strength, 'stops': stops, **pooled}
    plain = np.array(runs[f'{strengths[0]:g}']['force_error'])
    plain = plain[np.isfinite(plain)]
    threshold = float(np.percentile(plain, 90)) if len(plain) else None
    for run in runs.values():
        failed = int(np.isnan(run['force_error']).sum())
        force = np.array(run['force_error'])[np.isfinite(run['force_error'])]
        run['summary'] = {
            'frames': len(run['force_error']),
            'reference_failed': failed,
            'mean_sigma': float(np.mean(run['sigma'])) if len(force) else None,
            'mean_force_error': float(force.mean()) if len(force) else None,
            'p90_force_error': float(np.percentile(force, 90)) if len(force) else None,
            'mean_energy_error_mev': float(np.nanmean(run['energy_error'])) if len(force) else None,
            'above_plain_p90': float((force > threshold).mean()) if len(force) and threshold is not None else None,
            'unphysical_fraction': float((np.array(run['closest']) < 0.8 * training_closest).mean())
            if len(run['closest']) else None,
            'mean_temperature': float(np.mean(run['temperature'])) if len(force) else None,
            'blow_ups': sum(stop in ('close_contact', 'non_finite') for stop in run['stops']),
        }
    return {'system': system, 'temperature': TEMPERATURES[system], 'steps': steps, 'seeds': list(seeds), 'cap': cap,
            'plain_p90_force_error': threshold, 'training_closest': training_closest, 'runs': runs}


def table(results: list[dict]) -> str:
    lines = ['| system | τ | frames (reference failed) | mean σ_F (eV/Å) | mean max force error (eV/Å) | 90th pct | frames above plain 90th '
             'pct | energy error (meV/atom) | unphysical | mean T (K) | blow-ups |', '|' + '---|' * 11]
    for result in results:
        for key, run in result['runs'].items():
            s = run['summary']

            def f(value, fmt):
                return format(value, fmt) if value is not None else '-'

            cap = f' (cap {result["cap"]:g} eV)' if result.get('cap') and key != '0' else ''
            lines.append(f'| {result["system"]} | {key}{cap} | {s["frames"]} ({s.get("reference_failed", 0)}) | '
                         f'{f(s["mean_sigma"], ".3f")} | '
                         f'{f(s["mean_force_error"], ".3f")} | {f(s["p90_force_error"], ".3f")} | '
                         f'{f(s["above_plain_p90"], ".0%")} | {f(s["mean_energy_error_mev"], ".1f")} | '
                         f'{f(s["unphysical_fraction"], ".0%")} | {f(s["mean_temperature"], ".0f")} | '
                         f'{s["blow_ups"]}/{len(run["stops"])} |')
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--systems', nargs='+', default=['copper', 'cuau', 'water'], choices=sorted(SYSTEMS))
    parser.add_argument('--strengths', nargs='+', type=float, default=[0.0, 1.0, 3.0, 10.0])
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--cap', type=float, default=None, help='uncertainty_bias_cap (eV) of the biased runs')
    parser.add_argument('--steps', type=int, default=600)
    parser.add_argument('--epochs', type=int, default=25,
                        help='for committees not yet trained in --work-dir (uncertainty_ranking.py\'s default)')
    parser.add_argument('--work-dir', type=pathlib.Path, default=pathlib.Path('/tmp/alml-uncertainty-ranking'))
    parser.add_argument('--out', type=pathlib.Path, default=RESULTS / 'bias.json')
    args = parser.parse_args(argv)
    if args.strengths[0] != 0:
        parser.error('--strengths must start with 0 (plain MD: the reference the others are compared with)')
    results = []
    for system in args.systems:
        results.append(run_system(system, args.work_dir, args.strengths, args.seeds, args.steps, args.epochs,
                                  args.cap))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
        print(table(results), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
