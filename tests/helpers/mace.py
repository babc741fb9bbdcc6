"""Helpers to label EMT copper data and train tiny MACE models (no AiiDA).

Shared by ``tests/engines/test_committee_inference.py`` and ``benchmarks/committee.py``.
The models are deliberately tiny so that training one member costs seconds on
a laptop CPU; they are only meant to exercise the inference code paths.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import write

#: Hyper-parameters of the "tiny" test model (trains in a few seconds).
TINY = {'num_channels': 8, 'max_L': 0, 'r_max': 4.0, 'num_interactions': 2, 'correlation': 2}
#: A somewhat more realistic (still small) model size for benchmarks.
SMALL = {'num_channels': 32, 'max_L': 1, 'r_max': 5.0, 'num_interactions': 2, 'correlation': 3}


def cu_cell(repeat: tuple[int, int, int] = (1, 1, 1), a: float = 3.6) -> Atoms:
    """Cubic fcc Cu supercell (4 atoms per repeat unit)."""
    return bulk('Cu', 'fcc', a=a, cubic=True).repeat(repeat)


def make_cu_dataset(n_configs: int = 20, seed: int = 0) -> list[Atoms]:
    """Rattled/strained 4- and 8-atom Cu cells labelled with EMT.

    Labels go to ``info['REF_energy']`` / ``arrays['REF_forces']`` so that MACE
    does not pick up calculator results under its default keys.
    """
    rng = np.random.default_rng(seed)
    configs = []
    for i in range(n_configs):
        atoms = cu_cell((2, 1, 1) if i % 2 else (1, 1, 1), a=3.6 * (1 + rng.uniform(-0.03, 0.03)))
        strain = np.eye(3) + rng.uniform(-0.02, 0.02, (3, 3))
        atoms.set_cell(atoms.cell @ strain, scale_atoms=True)
        atoms.rattle(stdev=0.05, seed=int(rng.integers(1 << 30)))
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = None
        atoms.info['REF_energy'] = energy
        atoms.arrays['REF_forces'] = forces
        configs.append(atoms)
    return configs


def _alml_train() -> str:
    """Path of ``alml-train`` (``mace_run_train`` + our model file) next to the running interpreter (the venv)."""
    exe = Path(sys.executable).parent / 'alml-train'
    return str(exe) if exe.exists() else 'alml-train'


def train_tiny_mace(
    work_dir: Path,
    train_file: Path,
    seed: int,
    epochs: int = 3,
    hyper: dict | None = None,
    name: str = 'cu',
) -> Path:
    """Train one MACE member with ``alml-train`` and return the path of its model file (our format, ``.alml``).

    Re-uses ``work_dir/<name>.alml`` if it already exists (cache).
    """
    hyper = {**TINY, **(hyper or {})}
    work_dir = Path(work_dir)
    model = work_dir / f'{name}.alml'
    if model.exists():
        return model
    work_dir.mkdir(parents=True, exist_ok=True)
    # alml-train reads only files of its own folder, given by plain name: the training set is copied there.
    shutil.copyfile(train_file, work_dir / 'train.xyz')
    cmd = [
        _alml_train(), '--name', name, '--seed', str(seed),
        '--train_file', 'train.xyz', '--valid_fraction', '0.2',
        '--E0s', '{29: 3.51}', '--model', 'MACE',
        '--num_channels', str(hyper['num_channels']), '--max_L', str(hyper['max_L']),
        '--r_max', str(hyper['r_max']), '--num_interactions', str(hyper['num_interactions']),
        '--correlation', str(hyper['correlation']),
        '--batch_size', '5', '--max_num_epochs', str(epochs),
        '--device', 'cpu', '--default_dtype', 'float64',
        '--energy_key', 'REF_energy', '--forces_key', 'REF_forces',
        '--work_dir', '.',
    ]  # fmt: skip
    # Keep each trainer single-threaded-ish so two can run side by side.
    env = {**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1')}
    proc = subprocess.run(cmd, cwd=work_dir, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not model.exists():
        raise RuntimeError(f'alml-train failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}')
    # Checkpoints / logs are not needed once the model file exists.
    for sub in ('checkpoints', 'logs', 'results', 'valid_indices_' + str(seed) + '.txt'):
        shutil.rmtree(work_dir / sub, ignore_errors=True)
    return model


def train_committee(
    root: Path,
    seeds: list[int],
    epochs: int = 3,
    hyper: dict | None = None,
    tag: str = 'tiny',
) -> list[Path]:
    """Train (or reuse) one member per seed under ``root/<tag>_s<seed>``.

    Members are trained concurrently (one process per seed) because each
    training run is dominated by single-threaded Python overhead.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    train_file = root / 'train.xyz'
    if not train_file.exists():
        write(train_file, make_cu_dataset(), format='extxyz')
    dirs = [root / f'{tag}_s{seed}' for seed in seeds]
    todo = [(d, s) for d, s in zip(dirs, seeds) if not (d / 'cu.alml').exists()]
    if len(todo) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(todo)) as pool:
            list(pool.map(lambda ds: train_tiny_mace(ds[0], train_file, ds[1], epochs, hyper), todo))
    return [train_tiny_mace(d, train_file, s, epochs, hyper) for d, s in zip(dirs, seeds)]


def random_mace(
    seed: int = 0,
    max_L: int = 1,
    channels: int = 8,
    interaction: str = 'RealAgnosticResidualInteractionBlock',
    atomic_numbers: tuple[int, ...] = (13, 29),
    correlation: int = 2,
    r_max: float = 4.0,
    **extra,
):
    """An untrained float64 ``ScaleShiftMACE`` with random weights, built in-process.

    Inference code paths depend on the architecture, not on the weights, so
    these stand in for trained models with features (``max_L=1``) or blocks
    that the tiny trained models do not have.
    """
    import torch
    from mace import modules  # before e3nn: it sets up torch.load for e3nn's constants
    from e3nn import o3

    torch.manual_seed(seed)
    hidden = ' + '.join(f'{channels}x{ell}{"e" if ell % 2 == 0 else "o"}' for ell in range(max_L + 1))
    model = modules.ScaleShiftMACE(
        atomic_inter_scale=1.3,
        atomic_inter_shift=0.1,
        r_max=r_max,
        num_bessel=8,
        num_polynomial_cutoff=5,
        max_ell=3,
        interaction_cls=modules.interaction_classes[interaction],
        interaction_cls_first=modules.interaction_classes['RealAgnosticInteractionBlock'],
        num_interactions=2,
        num_elements=len(atomic_numbers),
        hidden_irreps=o3.Irreps(hidden),
        MLP_irreps=o3.Irreps('8x0e'),
        atomic_energies=np.linspace(-1.0, -2.0, len(atomic_numbers)),
        avg_num_neighbors=12.0 + seed,
        atomic_numbers=list(atomic_numbers),
        correlation=correlation,
        gate=torch.nn.functional.silu,
        radial_MLP=[16, 16],
        **extra,
    )
    return model.to(torch.float64)


@functools.lru_cache(maxsize=32)
def _model_bytes(seed: int, r_max: float, atomic_numbers: tuple[int, ...], dtype: str) -> bytes:
    import io

    import torch

    from aiida_alml.engines.model_format import save_model

    model = random_mace(seed=seed, max_L=0, channels=4, atomic_numbers=atomic_numbers, r_max=r_max)
    buffer = io.BytesIO()
    save_model(model.to(getattr(torch, dtype)), buffer)
    return buffer.getvalue()


def model_file(path: Path, seed: int = 0, r_max: float = 4.0, elements: tuple[str, ...] = ('Cu',),
               dtype: str = 'float64') -> Path:
    """A small untrained MACE written in our model format (for tests that need a valid model file, not a good one)."""
    from ase.data import atomic_numbers

    numbers = tuple(sorted(atomic_numbers[symbol] for symbol in elements))
    Path(path).write_bytes(_model_bytes(seed, float(r_max), numbers, dtype))
    return Path(path)
