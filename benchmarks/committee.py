"""Benchmark committee inference: stock ``MACECalculator`` vs ``CommitteeCalculator``.

Usage::

    python benchmarks/committee.py [--quick] [--output table.md] [--cache-dir DIR]

Trains (or re-uses from ``--cache-dir``) two differently seeded members per
model size and builds committees of N = 2, 4, 8 by cycling through them (the
cost of a member does not depend on its weights).  For each Cu fcc supercell
it times one MD-step-like evaluation (new positions, energy + forces + stress)
of: one model with the stock calculator, the stock committee, and ours with
both strategies.  Methods are interleaved round by round so that load from
other processes hits all of them alike; the median over rounds is reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import all_changes

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'tests'))

from mace.calculators import MACECalculator  # noqa: E402
from mace_helpers import SMALL, TINY, cu_cell, train_committee  # noqa: E402

from aiida_alml.engines.committee import CommitteeCalculator  # noqa: E402

SIZES = {'tiny': TINY, 'small': SMALL}
CELLS = {32: (2, 2, 2), 108: (3, 3, 3), 500: (5, 5, 5)}


#: ``wall`` is what an MD run sees on an idle machine; ``cpu`` (process CPU
#: time, all threads) is robust to other processes sharing the cores, which
#: inflate wall time by time-slicing (and make OpenMP threads wait on each other).
CLOCKS = {'wall': time.perf_counter, 'cpu': time.process_time}


def time_step(calc, atoms, rng, clock=time.perf_counter) -> float:
    """Seconds for one evaluation at freshly displaced positions (an MD step)."""
    atoms.positions += rng.normal(scale=0.005, size=atoms.positions.shape)
    start = clock()
    calc.calculate(atoms, ['energy', 'forces'], all_changes)
    return clock() - start


def bench_cell(calcs: dict, natoms: int, rounds: int, clock=time.perf_counter) -> dict[str, float]:
    """Median ms per step of each calculator on one rattled cell, interleaved."""
    atoms = cu_cell(CELLS[natoms])
    atoms.rattle(0.05, seed=1)
    rng = np.random.default_rng(0)
    times = {name: [] for name in calcs}
    for name, calc in calcs.items():  # warm-up (allocator, lazy init)
        time_step(calc, atoms, rng)
    for _ in range(rounds):
        for name, calc in calcs.items():
            times[name].append(time_step(calc, atoms, rng, clock))
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def run(args) -> str:
    cache = Path(args.cache_dir)
    sizes = ['tiny'] if args.quick else args.sizes
    cells = [32] if args.quick else [32, 108, 500]
    ns = [2, 4] if args.quick else [2, 4, 8]
    rounds = 3 if args.quick else args.rounds
    if args.threads:
        torch.set_num_threads(args.threads)
    lines = [
        f'Committee inference, ms per MD step (energy+forces+stress), {args.clock} time, '
        f'median of {rounds} interleaved rounds.',
        f'torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, '
        f'{os.cpu_count()} CPUs, float64; load average at start {os.getloadavg()[0]:.1f}.',
        'Members: 2 trained seeds per size, cycled to make N members (cost does not depend on weights).',
        'Ratios are relative to one model with the stock MACECalculator; "auto" marks the strategy auto picks.',
        '',
    ]
    for size in sizes:
        hyper = SIZES[size]
        paths = train_committee(cache, seeds=[1, 2], epochs=2, hyper=hyper, tag=size)
        desc = ', '.join(f'{k}={v}' for k, v in hyper.items())
        lines += [f'### {size} model ({desc})', '']
        lines += ['| atoms | N | 1 model | stock N | ours sequential | ours vmap | auto |', '|---|---|---|---|---|---|---|']
        for natoms in cells:
            for n in ns:
                members = [paths[i % len(paths)] for i in range(n)]
                ours_seq = CommitteeCalculator(model_paths=members, strategy='sequential')
                calcs = {
                    'one': MACECalculator(model_paths=[paths[0]], device='cpu', default_dtype='float64'),
                    'stock': MACECalculator(model_paths=members, device='cpu', default_dtype='float64'),
                    'seq': ours_seq,
                    'vmap': CommitteeCalculator(models=ours_seq.models, strategy='vmap'),
                }
                ms = bench_cell(calcs, natoms, rounds, CLOCKS[args.clock])
                auto = CommitteeCalculator(models=ours_seq.models, strategy='auto')
                atoms = cu_cell(CELLS[natoms])
                auto_pick = 'vmap' if auto._use_vmap(auto._build_graph(atoms)['edge_index'].shape[1]) else 'seq'

                def cell(key):
                    return f'{ms[key]:.1f} ({ms[key] / ms["one"]:.2f}x)'

                row = f'| {natoms} | {n} | {ms["one"]:.1f} | {cell("stock")} | {cell("seq")} | {cell("vmap")} | {auto_pick} |'
                lines.append(row)
                print(row, flush=True)
        lines.append('')
    lines.append(f'Load average at end: {os.getloadavg()[0]:.1f}.')
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='tiny model, 32 atoms, N=2,4, 3 rounds (smoke test)')
    parser.add_argument('--output', type=Path, help='also write the markdown table to this file')
    parser.add_argument('--cache-dir', default=Path.home() / '.cache' / 'aiida_alml' / 'bench_committee',
                        help='where trained members are kept between runs')  # fmt: skip
    parser.add_argument('--sizes', nargs='+', default=['tiny', 'small'], choices=sorted(SIZES))
    parser.add_argument('--rounds', type=int, default=7, help='timed rounds per configuration')
    parser.add_argument('--threads', type=int, default=0, help='torch intra-op threads (default: torch default)')
    parser.add_argument('--clock', choices=sorted(CLOCKS), default='wall', help='wall-clock or process CPU time')
    args = parser.parse_args(argv)
    warnings.filterwarnings('ignore', module='e3nn|mace|torch')  # load-time chatter of mace/e3nn
    table = run(args)
    print(table)
    if args.output:
        args.output.write_text(table + '\n')


if __name__ == '__main__':
    main()
