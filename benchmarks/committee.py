"""Benchmark committee inference: stock ``MACECalculator`` vs ``CommitteeCalculator``.

Usage::

    python benchmarks/committee.py [--quick] [--output table.md] [--cache-dir DIR]
                                   [--sizes tiny small] [--threads T] [--clock wall|cpu]

Trains (or re-uses from ``--cache-dir``) two differently seeded members per
model size and builds committees of N = 1, 2, 4, 8 by cycling through them
(the cost of a member does not depend on its weights).  For each Cu fcc
supercell it times one MD-step-like evaluation (new positions; energy, forces
and stress) of: one model with the stock calculator, the stock committee, and
ours with each strategy (``auto`` after it finished calibrating), and ours
with MACE's own evaluation (``radial='mlp', convolution='edges',
product_basis='mace'``, sequential) to show what the tabulated radial weights,
the fused convolution and the precomputed product basis add to sharing the graph.  Methods are
interleaved round by round so that load from other processes hits all of them
alike; the median over rounds is reported.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
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

# mace/e3nn warn about torch.load(weights_only) and cuequivariance on import: noise here.
warnings.filterwarnings('ignore', category=UserWarning)
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'tests'))

from mace.calculators import MACECalculator  # noqa: E402

from aiida_alml.engines.model_format import load_model  # noqa: E402
from helpers.mace import SMALL, TINY, cu_cell, train_committee  # noqa: E402

from aiida_alml.engines.committee import CommitteeCalculator  # noqa: E402

SIZES = {'tiny': TINY, 'small': SMALL}
CELLS = {32: (2, 2, 2), 108: (3, 3, 3), 500: (5, 5, 5)}
#: Default grid per model size (atoms, committee sizes); the small model skips
#: 500 atoms to keep a full run within ~15 minutes on 2 cores.
GRIDS = {'tiny': ([32, 108, 500], [1, 2, 4, 8]), 'small': ([32, 108], [1, 2, 4, 8])}
QUICK_GRID = ([32], [2, 4])

#: ``wall`` is what an MD run sees on an idle machine; ``cpu`` (process CPU
#: time, all threads) is robust to other processes sharing the cores, which
#: inflate wall time by time-slicing (and make OpenMP threads wait on each other).
CLOCKS = {'wall': time.perf_counter, 'cpu': time.process_time}


def rattled_cell(natoms: int):
    atoms = cu_cell(CELLS[natoms])
    atoms.rattle(0.05, seed=1)
    return atoms


def time_step(calc, atoms, rng, clock=time.perf_counter) -> float:
    """Seconds for one evaluation at freshly displaced positions (an MD step)."""
    atoms.positions += rng.normal(scale=0.005, size=atoms.positions.shape)
    start = clock()
    calc.calculate(atoms, ['energy', 'forces'], all_changes)
    return clock() - start


def bench_cell(calcs: dict, natoms: int, rounds: int, clock=time.perf_counter) -> dict[str, float]:
    """Median ms per step of each calculator on one rattled cell, interleaved round by round."""
    atoms = rattled_cell(natoms)
    rng = np.random.default_rng(0)
    for calc in calcs.values():  # warm-up: TorchScript profiling runs, allocator
        time_step(calc, atoms, rng)
    if 'auto' in calcs:  # let auto finish calibrating (if it calibrates at this size) first
        timer = calcs['auto']._timer
        for _ in range(2 * (timer.WARMUP + timer.TIMED)):
            time_step(calcs['auto'], atoms, rng)
    times = {name: [] for name in calcs}
    for _ in range(rounds):
        for name, calc in calcs.items():
            times[name].append(time_step(calc, atoms, rng, clock))
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def committee_row(paths: list[Path], natoms: int, n: int, rounds: int, clock) -> str:
    """One markdown row: N members cycled from ``paths`` on the ``natoms`` cell."""
    members = [paths[i % len(paths)] for i in range(n)]
    ours = CommitteeCalculator(model_paths=members, strategy='sequential')
    calcs = {'one': MACECalculator(models=[load_model(paths[0])], device='cpu', default_dtype='float64')}
    if n > 1:  # for N=1 the stock committee *is* the one-model reference
        calcs['stock'] = MACECalculator(models=[load_model(p) for p in members], device='cpu', default_dtype='float64')
    calcs['seq'] = ours
    calcs['vmap'] = CommitteeCalculator(models=ours.models, strategy='vmap')
    calcs['auto'] = CommitteeCalculator(models=ours.models, strategy='auto')
    calcs['plain'] = CommitteeCalculator(
        models=ours.models, strategy='sequential', radial='mlp', convolution='edges', product_basis='mace'
    )
    ms = bench_cell(calcs, natoms, rounds, clock)

    def fmt(key):
        return f'{ms[key]:.1f} ({ms[key] / ms["one"]:.2f}x)' if key in ms else '=1 model'

    pick = calcs['auto'].last_strategy
    return (
        f'| {natoms} | {n} | {ms["one"]:.1f} | {fmt("stock")} | {fmt("plain")} | {fmt("seq")} | {fmt("vmap")} '
        f'| {fmt("auto")} {pick} |'
    )


def keep_large_allocations(max_bytes: int = 1 << 30) -> bool:
    """Let glibc malloc serve (and keep) blocks up to ``max_bytes`` from the heap.

    By default glibc ``mmap``s every block above 32 MiB and unmaps it on free,
    so each MD step page-faults its large activations in again (system time).
    The member-batched tensors of the vmap strategy cross that limit much
    earlier than single-model ones.  This is process-wide (the heap then keeps
    its peak size), hence opt-in: call it once in a dedicated MD process.
    Returns False where it does not apply (not glibc).
    """
    libc_name = ctypes.util.find_library('c')
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name)
    if not hasattr(libc, 'mallopt'):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, max_bytes)) and bool(libc.mallopt(m_trim_threshold, 2 * max_bytes))


def run(args) -> str:
    cache = Path(args.cache_dir)
    sizes = ['tiny'] if args.quick else args.sizes
    rounds = 3 if args.quick else args.rounds
    if args.threads:
        torch.set_num_threads(args.threads)
    tuned = args.keep_large_allocations and keep_large_allocations()
    lines = [
        f'Committee inference, ms per MD step (energy+forces+stress), {args.clock} time, '
        f'median of {rounds} interleaved rounds.',
        f'torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, '
        f'{os.cpu_count()} CPUs, float64; glibc mmap threshold raised for all: {"yes" if tuned else "no"}; '
        f'load average at start {os.getloadavg()[0]:.1f}.',
        'Members: 2 trained seeds per size, cycled to make N members (the cost does not depend on the weights).',
        'Ratios: relative to one model with the stock MACECalculator. auto: after its calibration, with its pick.',
        "ours, MACE's evaluation: shared graph only (radial='mlp', convolution='edges', product_basis='mace').",
        '',
    ]
    for size in sizes:
        hyper = SIZES[size]
        paths = train_committee(cache, seeds=[1, 2], epochs=2, hyper=hyper, tag=size)
        cells, ns = QUICK_GRID if args.quick else GRIDS[size]
        cells, ns = args.cells or cells, args.members or ns
        desc = ', '.join(f'{k}={v}' for k, v in hyper.items())
        lines += [f'### {size} model ({desc})', '']
        lines += [
            "| atoms | N | 1 model (stock) | stock committee | ours, MACE's evaluation "
            '| ours sequential | ours vmap | ours auto |',
            '|---|---|---|---|---|---|---|---|',
        ]
        for natoms in cells:
            for n in ns:
                row = committee_row(paths, natoms, n, rounds, CLOCKS[args.clock])
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
    parser.add_argument('--rounds', type=int, default=5, help='timed rounds per configuration')
    parser.add_argument('--cells', type=int, nargs='+', choices=sorted(CELLS), help='override the atoms grid')
    parser.add_argument('--members', type=int, nargs='+', help='override the committee sizes N')
    parser.add_argument('--threads', type=int, default=0, help='torch intra-op threads (default: torch default)')
    parser.add_argument('--keep-large-allocations', action='store_true',
                        help='raise the glibc mmap threshold first (see keep_large_allocations)')  # fmt: skip
    parser.add_argument('--clock', choices=sorted(CLOCKS), default='wall', help='wall-clock or process CPU time')
    args = parser.parse_args(argv)
    table = run(args)
    print(table)
    if args.output:
        args.output.write_text(table + '\n')


if __name__ == '__main__':
    main()
