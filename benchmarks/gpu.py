"""Benchmark MACE training and committee MD on one device (made for a GPU, runs anywhere).

Usage::

    python benchmarks/gpu.py --device cuda --out gpu.json [--sizes tiny c64 c128] [--epochs 5]
                             [--train-configs 100] [--cells 108 256] [--md-steps 50] [--rounds 2]
                             [--md-dtypes float64 float32] [--work DIR]
    python benchmarks/gpu.py --quick --device cpu --out /tmp/gpu.json   # dry run, seconds to minutes

For each model size it

1. trains one MACE member on EMT-labelled Cu-Au cells with MACE's own trainer (``python -m mace.cli.run_train``,
   float64, ``--device``) and reads the seconds per epoch off the time stamps of MACE's per-epoch validation lines
   (the first epoch, which carries the device's warm-up, is reported apart);
2. makes three more members by perturbing every weight by 1 % (seeded): the cost of a member does not depend on its
   weights, and four trainings would cost four times the device time for no extra information;
3. on each Cu-Au fcc cell, runs NVT Langevin MD (600 K, 1 fs, ASE's integrator, the one ``alml-md`` uses) with
   ``CommitteeCalculator`` of 1 and of 4 members and with the stock ``MACECalculator`` of 1 and of 4 members, in
   interleaved rounds, and reports atom-steps per second (median over rounds) and the committee-to-single-model
   cost ratio. Before timing, each committee runs ``aiida_alml.engines.md.run_md`` (the engine's own MD loop, which
   also lets ``strategy='auto'`` finish its calibration), and the 1-member committee is checked against the stock
   calculator on the same structure (energy and force differences are reported).

A table goes to stdout; the JSON (``--out``) is rewritten after every model size so that a run stopped at its time
limit still leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

# mace/e3nn warn about torch.load(weights_only) and cuequivariance on import: noise here.
warnings.filterwarnings('ignore', category=UserWarning)
warnings.filterwarnings('ignore', category=FutureWarning)
warnings.filterwarnings('ignore', category=DeprecationWarning)  # ASE's MaxwellBoltzmannDistribution
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ase import units  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.calculators.emt import EMT  # noqa: E402
from ase.io import write  # noqa: E402
from ase.md.langevin import Langevin  # noqa: E402
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary  # noqa: E402

from aiida_alml.engines.committee import CommitteeCalculator  # noqa: E402
from aiida_alml.engines.md import run_md  # noqa: E402

#: Model sizes: ``tiny`` is the test model of tests/helpers/mace.py; c64/c128 are production-like widths.
SIZES = {
    'tiny': {'num_channels': 8, 'max_L': 0, 'r_max': 4.0, 'num_interactions': 2, 'correlation': 2},
    'c64': {'num_channels': 64, 'max_L': 1, 'r_max': 5.0, 'num_interactions': 2, 'correlation': 3},
    'c128': {'num_channels': 128, 'max_L': 1, 'r_max': 5.0, 'num_interactions': 2, 'correlation': 3},
}
#: Atoms -> repeats of the 4-atom cubic fcc cell.
CELLS = {32: 2, 108: 3, 256: 4, 500: 5}
MEMBERS = 4
TEMPERATURE = 600.0
LATTICE = {'Cu': 3.61, 'Au': 4.08}
AU_FRACTION = 0.25
_LOG_LINE = re.compile(r'^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) INFO: (Initial|Epoch (\d+)): ')


# ------------------------------------------------------------------------------------------------ data
def cuau_cell(repeat: int, seed: int, strain: float = 0.0, rattle: float = 0.0):
    """Cubic fcc cell with ~25 % of the sites Au (Vegard lattice constant), optionally strained and rattled."""
    atoms = bulk('Cu', 'fcc', a=LATTICE['Cu'], cubic=True).repeat(repeat)
    rng = np.random.default_rng(seed)
    gold = rng.choice(len(atoms), size=max(1, round(AU_FRACTION * len(atoms))), replace=False)
    numbers = atoms.numbers.copy()
    numbers[gold] = 79
    atoms.numbers = numbers
    scale = 1 + AU_FRACTION * (LATTICE['Au'] / LATTICE['Cu'] - 1)
    atoms.set_cell(atoms.cell * scale, scale_atoms=True)
    if strain:
        atoms.set_cell(atoms.cell @ (np.eye(3) + rng.uniform(-strain, strain, (3, 3))), scale_atoms=True)
    if rattle:
        atoms.rattle(stdev=rattle, seed=int(rng.integers(1 << 30)))
    return atoms


def training_set(n_configs: int, seed: int = 0) -> list:
    """EMT-labelled 32-atom Cu-Au cells (labels under REF_* so that MACE reads them, not calculator results)."""
    configs = []
    for i in range(n_configs):
        atoms = cuau_cell(2, seed + i, strain=0.02, rattle=0.08)
        atoms.calc = EMT()
        energy, forces, stress = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        atoms.calc = None
        atoms.info['REF_energy'] = energy
        atoms.info['REF_stress'] = stress
        atoms.arrays['REF_forces'] = forces
        configs.append(atoms)
    return configs


# ------------------------------------------------------------------------------------------------ training
def epoch_times(log_text: str) -> list[float]:
    """Seconds between consecutive validation lines (Initial, Epoch 0, Epoch 1, ...) of a MACE log."""
    stamps = []
    for line in log_text.splitlines():
        match = _LOG_LINE.match(line)
        if match:
            stamps.append(datetime.strptime(match.group(1), '%Y-%m-%d %H:%M:%S.%f').timestamp())
    return [b - a for a, b in zip(stamps, stamps[1:])]


def train(work: Path, train_file: Path, hyper: dict, epochs: int, device: str, seed: int = 1) -> dict:
    """Train one member with MACE's trainer on ``device``; return the model path and the timings."""
    work.mkdir(parents=True, exist_ok=True)
    model = work / 'member.model'
    cmd = [
        sys.executable, '-m', 'mace.cli.run_train', '--name', 'member', '--seed', str(seed),
        '--train_file', str(train_file), '--valid_fraction', '0.1', '--E0s', 'average', '--model', 'MACE',
        '--num_channels', str(hyper['num_channels']), '--max_L', str(hyper['max_L']),
        '--r_max', str(hyper['r_max']), '--num_interactions', str(hyper['num_interactions']),
        '--correlation', str(hyper['correlation']), '--batch_size', '10', '--valid_batch_size', '10',
        '--max_num_epochs', str(epochs), '--eval_interval', '1', '--patience', str(epochs + 1),
        '--device', device, '--default_dtype', 'float64',
        '--energy_key', 'REF_energy', '--forces_key', 'REF_forces', '--stress_key', 'REF_stress',
        '--work_dir', str(work), '--save_cpu',
    ]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    logs = sorted((work / 'logs').glob('*.log'))
    log_text = logs[-1].read_text() if logs else ''
    if proc.returncode != 0 or not model.exists():
        raise RuntimeError(
            f'MACE training failed (rc={proc.returncode}) in {work}:\n{proc.stderr[-4000:]}\n{log_text[-2000:]}'
        )
    gaps = epoch_times(log_text)  # [initial validation -> epoch 0, epoch 0 -> epoch 1, ...]
    if len(gaps) < 2:
        raise RuntimeError(f'expected at least 2 epochs in the MACE log of {work}, found {len(gaps)} time gaps')
    return {
        'model': model,
        'epochs': epochs,
        'first_epoch_s': gaps[0],
        's_per_epoch': statistics.median(gaps[1:]),
        'epoch_s': gaps,
        'trainer_wall_s': wall,
    }


def perturbed_members(model_path: Path, count: int, scale: float = 0.01) -> list[Path]:
    """``model_path`` and ``count - 1`` copies with every weight multiplied by (1 + scale * N(0, 1)), seeded."""
    from aiida_alml.engines.model_format import save_model

    # Our own freshly trained pickle: converted to our model format, the only one the committee loads.
    trained = torch.load(model_path, map_location='cpu', weights_only=False)
    paths = [model_path.with_suffix('.alml')]
    save_model(trained, paths[0])
    for k in range(1, count):
        model = torch.load(model_path, map_location='cpu', weights_only=False)
        generator = torch.Generator().manual_seed(k)
        with torch.no_grad():
            for param in model.parameters():
                noise = torch.randn(param.shape, generator=generator, dtype=torch.float64).to(param.dtype)
                param.mul_(1 + scale * noise)
        path = model_path.with_name(f'member_{k}.alml')
        save_model(model, path)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------------ MD
def thermalised(natoms: int):
    atoms = cuau_cell(CELLS[natoms], seed=123)
    MaxwellBoltzmannDistribution(atoms, temperature_K=TEMPERATURE, rng=np.random.default_rng(0))
    Stationary(atoms)
    return atoms


def langevin_rate(calc, natoms: int, steps: int) -> float:
    """Atom-steps per second of ``steps`` Langevin steps from the same thermalised start."""
    atoms = thermalised(natoms)
    atoms.calc = calc
    dynamics = Langevin(
        atoms, units.fs, temperature_K=TEMPERATURE, friction=0.01 / units.fs, rng=np.random.default_rng(1)
    )
    atoms.get_forces()  # the start frame is not a step
    start = time.perf_counter()
    dynamics.run(steps)
    return natoms * steps / (time.perf_counter() - start)


def agreement(ours, stock, natoms: int) -> dict:
    """Energy per atom and force differences between a 1-member committee and the stock calculator."""
    atoms = thermalised(natoms)
    atoms.rattle(0.05, seed=2)
    values = {}
    for name, calc in (('ours', ours), ('stock', stock)):
        atoms.calc = calc
        values[name] = (atoms.get_potential_energy(), atoms.get_forces().copy())
    return {
        'energy_per_atom_diff_eV': abs(values['ours'][0] - values['stock'][0]) / natoms,
        'max_force_diff_eV_per_A': float(np.abs(values['ours'][1] - values['stock'][1]).max()),
    }


def peak_memory(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith('cuda') else None


def bench_md(members: list[Path], natoms: int, dtype: str, args) -> dict:
    """Side-by-side MD rates of our committee (1 and N members) and the stock calculator (1 and N members)."""
    from mace.calculators import MACECalculator

    from aiida_alml.engines.model_format import load_model

    device = args.device
    calcs = {
        'ours_1': CommitteeCalculator(model_paths=members[:1], device=device, default_dtype=dtype),
        f'ours_{MEMBERS}': CommitteeCalculator(model_paths=members, device=device, default_dtype=dtype),
        'stock_1': MACECalculator(models=[load_model(members[0])], device=device, default_dtype=dtype),
        f'stock_{MEMBERS}': MACECalculator(models=[load_model(p) for p in members], device=device, default_dtype=dtype),
    }
    row = {'atoms': natoms, 'dtype': dtype, 'steps': args.md_steps, 'rounds': args.rounds}
    row['agreement_1_member'] = agreement(calcs['ours_1'], calcs['stock_1'], natoms)
    engine = {}
    for name, calc in calcs.items():
        if device.startswith('cuda'):
            torch.cuda.reset_peak_memory_stats()
        if name.startswith('ours'):
            # The engine's own loop; it also runs strategy='auto' through its calibration before timing.
            parameters = {'temperature': TEMPERATURE, 'steps': args.warmup_steps, 'sample_interval': 10}
            _, summary = run_md(thermalised(natoms), calc, parameters)
            engine[name] = {
                'steps_per_second': summary['steps_per_second'],
                'stop_kind': summary['stop_kind'],
                'max_force_sigma': summary['max_force_sigma'],
                'evaluation': calc.describe(),
            }
        else:
            langevin_rate(calc, natoms, args.warmup_steps)
        engine.setdefault(name, {})['peak_memory_MiB'] = peak_memory(device)
    rates = {name: [] for name in calcs}
    for _ in range(args.rounds):
        for name, calc in calcs.items():
            rates[name].append(langevin_rate(calc, natoms, args.md_steps))
    row['atom_steps_per_s'] = {name: statistics.median(r) for name, r in rates.items()}
    row['atom_steps_per_s_all'] = rates
    row['engine'] = engine
    median = row['atom_steps_per_s']
    # Cost ratios (time per step): how many single models an N-member committee costs.
    row['ratio_ours_committee_to_ours_single'] = median['ours_1'] / median[f'ours_{MEMBERS}']
    row['ratio_ours_committee_to_stock_single'] = median['stock_1'] / median[f'ours_{MEMBERS}']
    row['ratio_stock_committee_to_stock_single'] = median['stock_1'] / median[f'stock_{MEMBERS}']
    row['auto_strategy_picked'] = calcs[f'ours_{MEMBERS}'].last_strategy
    return row


# ------------------------------------------------------------------------------------------------ driver
def environment(device: str) -> dict:
    import ase
    import mace

    env = {
        'device': device,
        'python': platform.python_version(),
        'torch': torch.__version__,
        'cuda': torch.version.cuda,
        'mace': getattr(mace, '__version__', None),
        'ase': ase.__version__,
        'cpus': os.cpu_count(),
        'torch_threads': torch.get_num_threads(),
        'machine': platform.machine(),
    }
    if device.startswith('cuda'):
        env['gpu'] = torch.cuda.get_device_name(device)
    return env


def table(result: dict) -> str:
    lines = [
        f'{result["environment"]}',
        '',
        '| model | s/epoch (first) | atoms | dtype | ours 1 | ours 4 | stock 1 | stock 4 | ours 4/1 | '
        'ours 4 / stock 1 | stock 4/1 | auto | 1-member vs stock: dE/atom, max dF |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    for size, entry in result['sizes'].items():
        trained = entry['training']
        for row in entry['md']:
            rate = row['atom_steps_per_s']
            agree = row['agreement_1_member']
            lines.append(
                f'| {size} | {trained["s_per_epoch"]:.2f} ({trained["first_epoch_s"]:.2f}) | {row["atoms"]} '
                f'| {row["dtype"]} | {rate["ours_1"]:.0f} | {rate["ours_4"]:.0f} | {rate["stock_1"]:.0f} '
                f'| {rate["stock_4"]:.0f} | {row["ratio_ours_committee_to_ours_single"]:.2f} '
                f'| {row["ratio_ours_committee_to_stock_single"]:.2f} '
                f'| {row["ratio_stock_committee_to_stock_single"]:.2f} | {row["auto_strategy_picked"]} '
                f'| {agree["energy_per_atom_diff_eV"]:.1e} eV, {agree["max_force_diff_eV_per_A"]:.1e} eV/Å |'
            )
    lines += ['', 'MD columns: atom-steps per second (median of the rounds); ratios: time per step relative.']
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cuda', help="torch device, e.g. 'cuda' or 'cpu'")
    parser.add_argument('--out', type=Path, required=True, help='JSON file with every measured figure')
    parser.add_argument('--work', type=Path, default=Path('/tmp/alml_gpu_bench'), help='training directory')
    parser.add_argument('--sizes', nargs='+', default=['tiny', 'c64', 'c128'], choices=sorted(SIZES))
    parser.add_argument('--epochs', type=int, default=5, help='training epochs (>= 3: the first is reported apart)')
    parser.add_argument('--train-configs', type=int, default=100, help='32-atom EMT configurations to train on')
    parser.add_argument('--cells', type=int, nargs='+', default=[108, 256], choices=sorted(CELLS))
    parser.add_argument('--md-steps', type=int, default=50, help='timed MD steps per run')
    parser.add_argument('--warmup-steps', type=int, default=20, help='untimed steps first (covers auto calibration)')
    parser.add_argument('--rounds', type=int, default=2, help='interleaved timed rounds per calculator')
    parser.add_argument('--md-dtypes', nargs='+', default=['float64'], choices=['float64', 'float32'])
    parser.add_argument('--quick', action='store_true', help='dry run: tiny model, 3 epochs, 20 configs, 32 atoms')
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.epochs, args.train_configs, args.cells = ['tiny'], 3, 20, [32]
        args.md_steps, args.warmup_steps, args.rounds = 10, 10, 1
    if args.epochs < 3:
        parser.error('--epochs must be at least 3 (the first epoch is reported apart, the rest give s/epoch)')
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: torch {torch.__version__} sees no CUDA device')

    begun = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    train_file = args.work / 'train.xyz'
    write(train_file, training_set(args.train_configs), format='extxyz')
    result = {
        'environment': environment(args.device),
        'settings': {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        'sizes': {},
    }
    for size in args.sizes:
        trained = train(args.work / size, train_file, SIZES[size], args.epochs, args.device)
        members = perturbed_members(trained['model'], MEMBERS)
        trained['model'] = str(trained['model'])
        entry = {'hyper': SIZES[size], 'training': trained, 'md': []}
        result['sizes'][size] = entry
        print(f'{size}: {trained["s_per_epoch"]:.3f} s/epoch (first {trained["first_epoch_s"]:.2f} s)', flush=True)
        for dtype in args.md_dtypes:
            for natoms in args.cells:
                row = bench_md(members, natoms, dtype, args)
                entry['md'].append(row)
                print(f'  {natoms} atoms {dtype}: {json.dumps(row["atom_steps_per_s"])}', flush=True)
                result['elapsed_s'] = time.perf_counter() - begun
                args.out.write_text(json.dumps(result, indent=1))
    result['elapsed_s'] = time.perf_counter() - begun
    args.out.write_text(json.dumps(result, indent=1))
    print(table(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
