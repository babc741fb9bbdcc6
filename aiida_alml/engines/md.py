"""``alml-md``: molecular dynamics driven by a MACE committee, recording its per-atom uncertainty.

Runs on the compute node, so no AiiDA import here. Input: one JSON file naming the structure (extxyz), the member
model files with their SHA-256 (checked before any model is loaded: a model file is a pickle) and the parameters.
Output: ``trajectory.npz`` (the sampled frames and their uncertainty arrays) and ``summary.json``.

Uncertainty definitions (population variance across the N members, ddof=0, as MACE's calculator uses):
``force_sigma[i] = sqrt(sum_c var_m F[m, i, c])`` (eV/Å, :func:`aiida_alml.selection.uncertainty.force_sigma`),
``energy_sigma_per_atom = std_m E[m] / n_atoms`` (eV), ``stress_sigma[k] = std_m S[m, k]`` (eV/Å³, Voigt).

With ``uncertainty_bias`` τ the dynamics run on the committee's mean energy plus ``-τ σ_E`` (:mod:`.bias`); each frame
still records the committee's unbiased ``energy`` and ``forces``, and the bias as ``bias_energy`` (eV) and
``max_bias_force`` (eV/Å, the largest atomic bias force).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import re
import sys
import time

import numpy as np

from aiida_alml.engines.disk import exit_disk_full, is_disk_full
from aiida_alml.selection.uncertainty import force_sigma as atom_force_sigma
from aiida_alml.atoms.suggest import did_you_mean

__all__ = (
    'DEFAULTS', 'ENSEMBLES', 'MAX_MD_FRAMES', 'MAX_MD_PRESSURE', 'MAX_MD_STEPS', 'MAX_MD_TEMPERATURE', 'MAX_MD_TIMESTEP',
    'MAX_UNCERTAINTY_BIAS',
    'MdParameterError', 'committee_uncertainty', 'main', 'md_bounds_problem', 'run_md', 'validate_parameters',
)

ENSEMBLES = ('nvt_langevin', 'nvt_berendsen', 'nvt_nose_hoover', 'npt_berendsen', 'nve')
#: Every parameter with its default (None: not used unless given). Units: K, bar, fs, eV/Å, Å.
DEFAULTS = {
    'ensemble': 'nvt_langevin',
    'temperature': None,  # constant target temperature, or give temperature_start and temperature_end (a ramp)
    'temperature_start': None,
    'temperature_end': None,
    'pressure': None,  # bar, NPT only
    'compressibility': 1e-6,  # 1/bar, NPT Berendsen (metals ~1e-6, water 4.6e-5)
    'timestep': 1.0,
    'steps': None,
    'sample_interval': 10,
    'seed': 0,
    'friction': 0.01,  # 1/fs, Langevin
    'taut': 100.0,  # fs, Berendsen and Nose-Hoover thermostat time
    'taup': 1000.0,  # fs, Berendsen barostat time
    'stop_max_force_sigma': None,  # eV/Å: stop when max force sigma stays above this ...
    'stop_patience': 3,  # ... for this many consecutive samples
    'min_distance': 0.5,  # Å: stop when two atoms come closer (None: no check)
    'store_committee_forces': False,  # keep every member's forces per frame (frames x N x n x 3: large)
    'uncertainty_bias': None,  # τ of the bias -τ σ_E towards where the members disagree (engines/bias.py); None: off
    'uncertainty_bias_cap': None,  # eV: the bias saturates at -cap (-cap tanh(τ σ_E / cap)); None: linear
    'device': 'cpu',
}

# Upper bounds of MD parameters (checked by validate_parameters, so for every caller), generous for production and far below what would run for months or fill the disk.
#: Steps of one run: a long production run is 10^7 steps (10 ns at 1 fs); 10^8 steps of a committee at ~10 ms per step
#: take 12 days, beyond any job's walltime.
MAX_MD_STEPS = 10**8
#: K: 10^4 K is above the boiling point of every element (tungsten: 5930 K); hotter is a plasma, not a material.
MAX_MD_TEMPERATURE = 1e4
#: fs: 0.5-2 fs is usual, 5 fs with heavy atoms only; beyond 10 fs no vibration is resolved and MD explodes.
MAX_MD_TIMESTEP = 10.0
#: bar, in size: 10^7 bar is 1 TPa, three times the pressure at the centre of the Earth.
MAX_MD_PRESSURE = 1e7
#: Frames a run records (steps / sample_interval): each is stored and scored by the selection; 10^5 is a 10^7-step run
#: sampled every 100 steps, more than any iteration labels from.
MAX_MD_FRAMES = 10**5
#: τ of uncertainty-biased MD (dimensionless, E_bias = -τ σ_E): the bias force is τ × a weighted mean of the members'
#: force deviations, so τ ~ 1-10 matters beside thermal forces; 100 would let the bias alone drive the MD.
MAX_UNCERTAINTY_BIAS = 100.0

TRAJECTORY_FILE = 'trajectory.npz'
SUMMARY_FILE = 'summary.json'


class MdParameterError(ValueError):
    """The MD parameters are invalid; the message names the parameter."""


def _positive(parameters, key, kind=float):
    value = parameters[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise MdParameterError(f'{key} must be a {"whole " if kind is int else ""}number, got {value!r}')
    if not math.isfinite(value) or value <= 0:
        raise MdParameterError(f'{key} must be positive, got {value!r}')
    return kind(value)


def md_bounds_problem(parameters: dict) -> str | None:
    """What in validated MD ``parameters`` (:func:`aiida_alml.engines.md.validate_parameters`) is beyond the upper
    bounds above, the parameter named, or None."""
    if parameters.get('temperature') is not None:
        temperatures = {'temperature': parameters['temperature']}
    else:
        temperatures = {key: parameters[key] for key in ('temperature_start', 'temperature_end')}
    for key, value in temperatures.items():
        if value > MAX_MD_TEMPERATURE:
            return f'{key} must be at most {MAX_MD_TEMPERATURE:.0f} K, got {value:g}'
    if parameters['steps'] > MAX_MD_STEPS:
        return f'steps must be at most {MAX_MD_STEPS} (weeks of MD in one job), got {parameters["steps"]}'
    if parameters['timestep'] > MAX_MD_TIMESTEP:
        return f'timestep must be at most {MAX_MD_TIMESTEP:g} fs, got {parameters["timestep"]:g}'
    if parameters.get('pressure') is not None and abs(parameters['pressure']) > MAX_MD_PRESSURE:
        return f'pressure must be at most {MAX_MD_PRESSURE:.0e} bar (1 TPa) in size, got {parameters["pressure"]:g}'
    frames = parameters['steps'] // parameters['sample_interval']
    if frames > MAX_MD_FRAMES:
        return (f'steps / sample_interval = {frames} frames per run, more than {MAX_MD_FRAMES} (each is stored and '
                f'scored); raise sample_interval to at least {-(-parameters["steps"] // MAX_MD_FRAMES)}')
    return None


def validate_parameters(given: dict) -> dict:
    """The parameters with defaults filled in; raise :class:`MdParameterError` naming the first bad one."""
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        text = ', '.join(f'{key}{did_you_mean(key, DEFAULTS, joiner=", ")}' for key in unknown)
        raise MdParameterError(f'unknown MD parameters: {text}; known: {", ".join(DEFAULTS)}')
    parameters = {**DEFAULTS, **given}
    if parameters['ensemble'] not in ENSEMBLES:
        raise MdParameterError(f'ensemble must be one of {ENSEMBLES}, got {parameters["ensemble"]!r}')
    if parameters['steps'] is None:
        raise MdParameterError('steps must be given (the number of MD steps)')
    constant, ramp = parameters['temperature'], (parameters['temperature_start'], parameters['temperature_end'])
    if constant is not None:
        # Validated parameters carry start = end = temperature: validating them again must give the same result.
        if any(value is not None and value != constant for value in ramp):
            raise MdParameterError('give either temperature or temperature_start and temperature_end, not both')
        parameters['temperature'] = _positive(parameters, 'temperature')
        parameters['temperature_start'] = parameters['temperature_end'] = parameters['temperature']
    else:
        if None in ramp:
            raise MdParameterError('give either temperature or both temperature_start and temperature_end')
        for key in ('temperature_start', 'temperature_end'):
            parameters[key] = _positive(parameters, key)
        if parameters['ensemble'] == 'nvt_nose_hoover' and ramp[0] != ramp[1]:
            raise MdParameterError('nvt_nose_hoover cannot ramp the temperature: use nvt_berendsen or nvt_langevin')
    for key in ('timestep', 'friction', 'taut', 'taup', 'compressibility'):
        parameters[key] = _positive(parameters, key)
    for key in ('steps', 'sample_interval', 'stop_patience'):
        parameters[key] = _positive(parameters, key, int)
    if isinstance(parameters['seed'], bool) or not isinstance(parameters['seed'], int) or parameters['seed'] < 0:
        raise MdParameterError(f'seed must be a non-negative integer, got {parameters["seed"]!r}')
    if parameters['ensemble'].startswith('npt'):
        if parameters['pressure'] is None:
            raise MdParameterError(f'pressure must be given for {parameters["ensemble"]}')
        value = parameters['pressure']
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise MdParameterError(f'pressure must be a finite number (bar), got {value!r}')
    elif parameters['pressure'] is not None:
        raise MdParameterError(f'pressure is only used by NPT ensembles, not {parameters["ensemble"]}')
    for key in ('stop_max_force_sigma', 'min_distance'):
        if parameters[key] is not None:
            parameters[key] = _positive(parameters, key)
    bias = parameters['uncertainty_bias']
    if bias is not None:
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias) or bias < 0:
            raise MdParameterError(f'uncertainty_bias must be a number >= 0 (τ of the bias -τ σ_E), got {bias!r}')
        if bias > MAX_UNCERTAINTY_BIAS:
            raise MdParameterError(f'uncertainty_bias must be at most {MAX_UNCERTAINTY_BIAS:g} (beyond that the bias '
                                   f'alone drives the MD), got {bias:g}')
        parameters['uncertainty_bias'] = float(bias) if bias > 0 else None
    cap = parameters['uncertainty_bias_cap']
    if cap is not None:
        if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not math.isfinite(cap) or cap <= 0:
            raise MdParameterError(f'uncertainty_bias_cap must be a positive number (eV), got {cap!r}')
        if bias is None:
            raise MdParameterError('uncertainty_bias_cap is given but uncertainty_bias is not: give the strength τ too')
        # τ = 0 switches the bias off (e.g. one iteration of a schedule): its cap has nothing to bound then
        parameters['uncertainty_bias_cap'] = float(cap) if parameters['uncertainty_bias'] is not None else None
    if not isinstance(parameters['store_committee_forces'], bool):
        raise MdParameterError('store_committee_forces must be true or false')
    device = parameters['device']
    if not isinstance(device, str) or not re.fullmatch(r'cpu|mps|cuda(:\d+)?', device):
        raise MdParameterError(f"device must be 'cpu', 'cuda', 'cuda:N' (N a GPU index) or 'mps', got {device!r}")
    if (problem := md_bounds_problem(parameters)):
        raise MdParameterError(problem)
    return parameters


# ---------------------------------------------------------------------- committee
def load_calculator(models: list[dict], device: str, dtype: str):
    """The committee calculator; every file is checked against its SHA-256 before it is loaded (loading runs code).

    A mismatch raises ``committee.ModelHashError``, whose name the ``alml.md`` parser looks for.
    """
    from aiida_alml.engines.committee import CommitteeCalculator

    # All members in one pass per MD step (shared neighbour list, one backward).
    return CommitteeCalculator(
        model_paths=[str(model['path']) for model in models],
        device=device,
        default_dtype=dtype,
        expected_sha256=[model['sha256'] for model in models],
    )


def committee_uncertainty(results: dict, n_atoms: int) -> dict:
    """Uncertainty of one frame from the members' predictions (see the module docstring for the definitions)."""
    forces_comm = np.asarray(results['forces_comm'], dtype=np.float64)  # (N, n, 3)
    energies = np.asarray(results['energy_comm'], dtype=np.float64)  # (N,) total energy of each member
    force_sigma = atom_force_sigma(forces_comm, allow_single_member=True)  # (n,)
    frame = {
        'force_sigma': force_sigma,
        'max_force_sigma': float(force_sigma.max()),
        'mean_force_sigma': float(force_sigma.mean()),
        'energy_sigma_per_atom': float(energies.std() / n_atoms),
        'forces_comm': forces_comm,
    }
    if results.get('stress_var') is not None:  # only for cells periodic in all directions
        frame['stress_sigma'] = _voigt(np.sqrt(np.asarray(results['stress_var'], dtype=np.float64)))
    return frame


def _voigt(tensor: np.ndarray) -> np.ndarray:
    """(6,) in ASE's Voigt order (xx, yy, zz, yz, xz, xy) from a (6,) or (3, 3) array."""
    tensor = tensor.reshape(-1)
    if tensor.shape == (6,):
        return tensor
    tensor = tensor.reshape(3, 3)
    return np.array([tensor[0, 0], tensor[1, 1], tensor[2, 2], tensor[1, 2], tensor[0, 2], tensor[0, 1]])


# ---------------------------------------------------------------------- dynamics
def _dynamics(atoms, parameters: dict):
    from ase import units

    ensemble, dt, temperature = parameters['ensemble'], parameters['timestep'] * units.fs, parameters['temperature_start']
    if ensemble == 'nvt_langevin':
        from ase.md.langevin import Langevin

        rng = np.random.default_rng(parameters['seed'] + 1)  # not the velocity stream's seed
        return Langevin(atoms, dt, temperature_K=temperature, friction=parameters['friction'] / units.fs, rng=rng)
    if ensemble == 'nvt_berendsen':
        from ase.md.nvtberendsen import NVTBerendsen

        return NVTBerendsen(atoms, dt, temperature_K=temperature, taut=parameters['taut'] * units.fs)
    if ensemble == 'nvt_nose_hoover':
        from ase.md.nose_hoover_chain import NoseHooverChainNVT

        return NoseHooverChainNVT(atoms, dt, temperature_K=temperature, tdamp=parameters['taut'] * units.fs)
    if ensemble == 'npt_berendsen':
        from ase.md.nptberendsen import NPTBerendsen

        return NPTBerendsen(
            atoms, dt, temperature_K=temperature, pressure_au=parameters['pressure'] * units.bar,
            taut=parameters['taut'] * units.fs, taup=parameters['taup'] * units.fs,
            compressibility_au=parameters['compressibility'] / units.bar,
        )  # fmt: skip
    from ase.md.verlet import VelocityVerlet

    return VelocityVerlet(atoms, dt)


def _target_temperature(parameters: dict, step: int) -> float:
    start, end = parameters['temperature_start'], parameters['temperature_end']
    return start + (end - start) * step / parameters['steps']


def closest_distance(atoms, cutoff: float) -> float | None:
    """Smallest interatomic distance below ``cutoff`` (minimum image), None if none is that close."""
    from ase.neighborlist import neighbor_list

    distances = neighbor_list('d', atoms, cutoff)
    return float(distances.min()) if len(distances) else None


class _Recorder:
    """Collects the sampled frames as lists, turned into arrays at the end."""

    def __init__(self, store_committee_forces: bool):
        self.store_committee_forces = store_committee_forces
        self.columns: dict[str, list] = {}

    def add(self, **values):
        for key, value in values.items():
            if key == 'forces_comm' and not self.store_committee_forces:
                continue
            self.columns.setdefault(key, []).append(value)

    def __len__(self):
        return len(self.columns.get('step', []))

    def arrays(self) -> dict[str, np.ndarray]:
        return {key: np.asarray(values) for key, values in self.columns.items()}


def run_md(atoms, calculator, parameters: dict) -> tuple[dict[str, np.ndarray], dict]:
    """Run the MD; return the sampled frames' arrays and the summary (steps done, frames, stop reason, speed)."""
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    parameters = validate_parameters(dict(parameters))
    if parameters['uncertainty_bias'] is not None:
        from aiida_alml.engines.bias import UncertaintyBias

        calculator = UncertaintyBias(calculator, parameters['uncertainty_bias'], parameters['uncertainty_bias_cap'])
    atoms.calc = calculator
    rng = np.random.default_rng(parameters['seed'])
    MaxwellBoltzmannDistribution(atoms, temperature_K=parameters['temperature_start'], rng=rng)
    Stationary(atoms)
    dynamics = _dynamics(atoms, parameters)
    recorder = _Recorder(parameters['store_committee_forces'])
    above, steps_done, reason, kind, n_members = 0, 0, 'completed', 'completed', None
    started = time.perf_counter()
    while True:
        # Sample the current frame (step 0 included), then check the stop criteria on it. Non-finite positions are
        # caught before the models see them (a neighbour list of NaN coordinates is not to be trusted to return).
        if not np.isfinite(atoms.positions).all():
            reason, kind = f'non-finite positions at step {steps_done}', 'non_finite'
            break
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces()
        results = atoms.calc.results
        bias = {}
        if 'bias_energy' in results:  # the frame records the committee's own prediction, the bias beside it
            energy, forces = results['unbiased_energy'], results['unbiased_forces']
            bias = {'bias_energy': results['bias_energy'],
                    'max_bias_force': float(np.linalg.norm(results['bias_forces'], axis=1).max())}
        frame = committee_uncertainty(results, len(atoms))
        n_members = int(frame['forces_comm'].shape[0])
        values = [energy, forces, frame['force_sigma']]
        if not all(np.isfinite(value).all() for value in values):
            reason, kind = f'non-finite energy, forces or committee spread at step {steps_done}', 'non_finite'
            break
        # An unphysical frame (atoms on top of each other) is not kept: it must never reach selection or training.
        if parameters['min_distance'] is not None:
            closest = closest_distance(atoms, parameters['min_distance'])
            if closest is not None:
                reason = f'atoms closer than min_distance {parameters["min_distance"]} Å ({closest:.4g} Å) at step {steps_done}'
                kind = 'close_contact'
                break
        recorder.add(
            step=steps_done, time=steps_done * parameters['timestep'], positions=atoms.positions.copy(),
            cell=atoms.cell.array.copy(), forces=forces.copy(), energy=energy,
            temperature=atoms.get_temperature(), target_temperature=_target_temperature(parameters, steps_done),
            **frame, **bias,
        )  # fmt: skip
        threshold = parameters['stop_max_force_sigma']
        above = above + 1 if threshold is not None and frame['max_force_sigma'] > threshold else 0
        if above >= parameters['stop_patience']:
            kind = 'force_sigma'
            reason = (
                f'max_force_sigma above {threshold} eV/Å for {above} consecutive samples (at step {steps_done}: '
                f'{frame["max_force_sigma"]:.4g} eV/Å)'
            )
            break
        if steps_done >= parameters['steps']:
            break
        block = min(parameters['sample_interval'], parameters['steps'] - steps_done)
        if hasattr(dynamics, 'set_temperature') and parameters['ensemble'] != 'nve':
            # A ramp moves the target at every block; the thermostat of a block aims at its midpoint.
            dynamics.set_temperature(temperature_K=_target_temperature(parameters, steps_done + block / 2))
        dynamics.run(block)
        steps_done += block
    elapsed = time.perf_counter() - started
    summary = {
        'steps_done': steps_done,
        'steps_requested': parameters['steps'],
        'frames': len(recorder),
        'stop_reason': reason,
        # completed, force_sigma, close_contact or non_finite: what the loop's accounting reads
        'stop_kind': kind,
        'stopped_early': kind != 'completed',
        'wall_time_s': elapsed,
        'steps_per_second': steps_done / elapsed if elapsed > 0 else None,
        'max_force_sigma': float(max(recorder.columns['max_force_sigma'])) if len(recorder) else None,
        'n_atoms': len(atoms),
        'n_members': n_members,
        'parameters': parameters,
    }
    if hasattr(calculator, 'describe'):  # CommitteeCalculator: which exact re-formulations it used
        summary['committee_evaluation'] = calculator.describe()
    return recorder.arrays(), summary


# ---------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='alml-md', description=__doc__.splitlines()[0])
    parser.add_argument('input', help='JSON file: {"structure": path, "models": [{"path", "sha256"}], "parameters": {}}, '
                                      'or {"task": "score", "frames": path, "models": [...], "device": ...}')
    parser.add_argument('--dtype', default=None, help='float32/float64 (default: from the input file)')
    args = parser.parse_args(argv)
    spec = json.loads(pathlib.Path(args.input).read_text())
    if spec.get('task') == 'score':  # the committee on given frames, no MD (alml.score)
        from aiida_alml.engines.score import main as score

        return score({**spec, 'dtype': args.dtype or spec.get('dtype', 'float64')})
    from ase.io import read

    try:
        parameters = validate_parameters(spec['parameters'])
    except MdParameterError as error:
        print(f'alml-md: invalid parameters: {error}', file=sys.stderr)
        return 2
    atoms = read(spec['structure'], format='extxyz')
    calculator = load_calculator(spec['models'], parameters['device'], args.dtype or spec.get('dtype', 'float64'))
    print(f'alml-md: committee evaluation {json.dumps(calculator.describe())}')
    arrays, summary = run_md(atoms, calculator, parameters)
    arrays['numbers'] = atoms.numbers
    arrays['pbc'] = atoms.pbc
    try:
        np.savez(TRAJECTORY_FILE, **arrays)
        pathlib.Path(SUMMARY_FILE).write_text(json.dumps(summary, indent=1, sort_keys=True))
    except OSError as error:
        if not is_disk_full(error):
            raise
        return exit_disk_full('alml-md', error, [TRAJECTORY_FILE, SUMMARY_FILE])
    print(f'alml-md: {summary["steps_done"]} steps, {summary["frames"]} frames, {summary["stop_reason"]}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
