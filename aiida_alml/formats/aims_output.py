"""Reading FHI-aims standard output (``aims.out``) line by line.

Pure Python (numpy only): no AiiDA, no ASE reader. One pass over the file collects every force evaluation
("Energy and forces in a compact form" blocks with the stress printed just before), SCF iterations and convergence,
the build information of the header, timings, Hirshfeld analysis, the spin moment and the final geometry of a
relaxation. The AiiDA parser turns the result into nodes and exit codes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

__all__ = ('AimsOutput', 'parse_aims_output', 'COMPLETION_MARKER', 'SCF_FAILURE_MARKER')

COMPLETION_MARKER = 'Have a nice day.'
#: What scf_solver.f90 prints when ``sc_iter_limit`` is reached without convergence (FHI-aims then stops).
SCF_FAILURE_MARKER = 'SCF cycle not converged.'

_FLOAT = r'[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[EeDd][-+]?\d+)?'
_ENERGY_LINES = {
    '| Total energy uncorrected': 'total_energy',
    '| Total energy corrected': 'corrected_energy',
    '| Electronic free energy': 'free_energy',
}
_SCF_LINE = re.compile(r'^\s*SCF\s+(\d+)\s*:')
_FORCE_ROW = re.compile(rf'^\s*\|\s*(\d+)\s+({_FLOAT})\s+({_FLOAT})\s+({_FLOAT})\s*$')
_STRESS_ROW = re.compile(rf'^\s*\|\s*([xyz])\s+({_FLOAT})\s+({_FLOAT})\s+({_FLOAT})\s*\|?\s*$')
_HEADER_ITEM = re.compile(r'^\s*([A-Za-z][A-Za-z +/.-]*?)\s*:\s*(.*?)\s*$')
_TIMING = re.compile(rf'^\s*\|\s*(.+?)\s*:\s*({_FLOAT})\s*s\s+({_FLOAT})\s*s\s*$')
# "Input geometry" rows: "|    1: Species O     0.00000000  0.00000000  0.00000000"; unit-cell rows: "|  a  b  c".
_INPUT_ATOM_ROW = re.compile(rf'^\s*\|\s*\d+:\s*Species\s+(\S+)\s+({_FLOAT})\s+({_FLOAT})\s+({_FLOAT})\s*$')
_INPUT_CELL_ROW = re.compile(rf'^\s*\|\s*({_FLOAT})\s+({_FLOAT})\s+({_FLOAT})\s*$')
#: Headers of the geometries printed after the input one: relaxation steps, MD steps, i-PI socket-driver steps.
_LATER_GEOMETRY_HEADERS = (
    'Updated atomic structure:',
    'Atomic structure (and velocities) as used in the preceding time step:',
    'Atomic structure that was used in the preceding time step of the wrapper',
)
_GEOMETRY_ROW = re.compile(rf'^\s*(lattice_vector|atom)\s+({_FLOAT})\s+({_FLOAT})\s+({_FLOAT})(?:\s+(\S+))?\s*$')


def _float(text: str) -> float:
    # Fortran may print double-precision exponents with D.
    return float(text.replace('D', 'E').replace('d', 'e'))


@dataclass
class ForceEvaluation:
    """One converged (or last attempted) SCF solution: energies in eV, forces (n, 3) eV/Å, stress 3x3 eV/Å^3."""

    total_energy: float | None = None
    corrected_energy: float | None = None
    free_energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    stress_kind: str | None = None


@dataclass
class AimsOutput:
    """Everything :func:`parse_aims_output` found; ``None``/empty where the file did not print it."""

    completed: bool = False
    version: str | None = None
    build: dict = field(default_factory=dict)
    build_features: list = field(default_factory=list)
    num_tasks: int | None = None
    num_atoms: int | None = None
    num_spin_channels: int | None = None
    num_electrons: float | None = None
    evaluations: list = field(default_factory=list)
    scf_iterations: int = 0
    scf_cycles: int = 0
    scf_converged: bool = False
    scf_failed: bool = False
    fermi_energy: float | None = None
    magnetic_moment: float | None = None
    hirshfeld_charges: list | None = None
    hirshfeld_spin_moments: list | None = None
    hirshfeld_volumes: list | None = None
    final_structure: dict | None = None
    #: The geometry FHI-aims read (its "Input geometry" block): ``symbols``, ``positions`` (Å), ``cell`` (or None).
    input_geometry: dict | None = None
    #: Every later geometry it printed (relaxation steps, MD steps, socket-driver steps), in order, same layout.
    later_geometries: list = field(default_factory=list)
    is_relaxation: bool = False
    timings: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

    @property
    def last(self) -> ForceEvaluation | None:
        """The last force evaluation, the one whose labels belong to the final geometry."""
        return self.evaluations[-1] if self.evaluations else None


def parse_aims_output(text: str) -> AimsOutput:
    """Parse the text of an aims.out file; never raises on a truncated file (fields stay empty instead)."""
    out = AimsOutput()
    lines = text.splitlines()
    pending_stress: tuple[np.ndarray, str] | None = None
    current: ForceEvaluation | None = None
    in_build = False
    index = 0
    while index < len(lines):
        line = lines[index]
        stripped = line.strip()

        if stripped == COMPLETION_MARKER:
            out.completed = True
        elif stripped.startswith('Build configuration of the current instance'):
            in_build = True
        elif in_build:
            if not stripped and out.build:
                in_build = False
            elif stripped.startswith('Using ') or stripped.startswith('Linking against'):
                out.build_features.append(stripped)
            else:
                match = _HEADER_ITEM.match(line)
                if match and not stripped.startswith('-'):
                    key, value = match.group(1).strip(), match.group(2)
                    if key == 'FHI-aims version':
                        out.version = value
                    else:
                        out.build[key] = value
        if stripped.startswith('Version ') and out.version is None:
            # Header of releases before 2021: "Version 200112_2".
            out.version = stripped.split()[1]
        elif stripped.startswith('Using') and stripped.endswith('parallel tasks.'):
            out.num_tasks = int(stripped.split()[1])
        elif stripped.startswith('| Number of atoms') and out.num_atoms is None:
            out.num_atoms = int(stripped.split(':')[1])
        elif stripped.startswith('| Number of spin channels') and out.num_spin_channels is None:
            out.num_spin_channels = int(stripped.split(':')[1])
        elif stripped.startswith('The structure contains') and 'electrons' in stripped:
            out.num_electrons = _float(stripped.split('a total of')[1].split()[0])
        elif stripped.startswith('Begin self-consistency loop'):
            out.scf_cycles += 1
            out.scf_converged = False
        elif _SCF_LINE.match(line):
            out.scf_iterations += 1
        elif stripped == 'Self-consistency cycle converged.':
            out.scf_converged = True
        elif SCF_FAILURE_MARKER in stripped:
            out.scf_failed = True
        elif stripped.startswith('| Chemical potential (Fermi level)'):
            out.fermi_energy = _float(stripped.split(':')[1].split()[0])
        elif stripped.startswith('| N = N_up - N_down'):
            out.magnetic_moment = _float(stripped.split(':')[1])
        elif 'Geometry relaxation:' in stripped or stripped.startswith('Geometry optimization:'):
            out.is_relaxation = True
        elif stripped.startswith('Performing Hirshfeld analysis'):
            # A relaxation prints one analysis per geometry: keep only the last.
            out.hirshfeld_charges, out.hirshfeld_volumes, out.hirshfeld_spin_moments = [], [], []
        elif stripped.startswith('|   Hirshfeld charge') and out.hirshfeld_charges is not None:
            out.hirshfeld_charges.append(_float(stripped.split(':')[1]))
        elif stripped.startswith('|   Hirshfeld volume') and out.hirshfeld_volumes is not None:
            out.hirshfeld_volumes.append(_float(stripped.split(':')[1]))
        elif stripped.startswith('|   Hirshfeld spin moment') and out.hirshfeld_spin_moments is not None:
            out.hirshfeld_spin_moments.append(_float(stripped.split(':')[1]))
        elif 'stress tensor' in stripped and stripped.startswith('|') and 'Cartesian' not in stripped:
            stress, consumed = _read_stress(lines, index + 1)
            if stress is not None:
                kind = 'numerical' if 'Numerical' in stripped else 'analytical'
                pending_stress = (stress, kind)
            index += consumed
        elif stripped == 'Energy and forces in a compact form:':
            current = ForceEvaluation()
            out.evaluations.append(current)
            if pending_stress is not None:
                current.stress, current.stress_kind = pending_stress
                pending_stress = None
        elif current is not None and any(stripped.startswith(key) for key in _ENERGY_LINES):
            key = next(name for prefix, name in _ENERGY_LINES.items() if stripped.startswith(prefix))
            setattr(current, key, _float(stripped.split(':')[1].split()[0]))
        elif current is not None and stripped.startswith('Total atomic forces'):
            forces, consumed = _read_forces(lines, index + 1)
            current.forces = forces
            index += consumed
        elif stripped == 'Input geometry:' and out.input_geometry is None:
            out.input_geometry, consumed = _read_input_geometry(lines, index + 1)
            index += consumed
        elif stripped.startswith(_LATER_GEOMETRY_HEADERS):
            # Not skipped over: the block's lines match nothing else, and a block that does not end as expected must
            # not hide the lines after it.
            out.later_geometries.append(_read_final_geometry(lines, index + 1)[0])
        elif stripped == 'Final atomic structure:':
            out.final_structure, consumed = _read_final_geometry(lines, index + 1)
            index += consumed
        elif stripped.startswith('| Number of self-consistency cycles'):
            # The end-of-run summary is authoritative where present.
            out.scf_iterations = int(stripped.split(':')[1])
        elif stripped.startswith('Detailed time accounting'):
            out.timings, consumed = _read_timings(lines, index + 1)
            index += consumed
        elif stripped.startswith('* Warning') or stripped.startswith('*** WARNING'):
            out.warnings.append(stripped)
        index += 1

    if pending_stress is not None and out.evaluations and out.last.stress is None:
        # Numerical stress is printed before the energies of the undistorted cell's final evaluation.
        out.last.stress, out.last.stress_kind = pending_stress
    return out


def _read_forces(lines: list[str], start: int) -> tuple[np.ndarray, int]:
    rows = []
    for line in lines[start:]:
        match = _FORCE_ROW.match(line)
        if not match:
            break
        rows.append([_float(match.group(k)) for k in (2, 3, 4)])
    return np.array(rows, dtype=float).reshape(-1, 3), len(rows)


def _read_stress(lines: list[str], start: int) -> tuple[np.ndarray | None, int]:
    rows: dict[str, list[float]] = {}
    consumed = 0
    for line in lines[start : start + 12]:
        consumed += 1
        match = _STRESS_ROW.match(line)
        if match:
            rows[match.group(1)] = [_float(match.group(k)) for k in (2, 3, 4)]
        if len(rows) == 3:
            return np.array([rows['x'], rows['y'], rows['z']]), consumed
    return None, 0


def _read_final_geometry(lines: list[str], start: int) -> tuple[dict, int]:
    cell, positions, symbols = [], [], []
    consumed = 0
    for line in lines[start:]:
        consumed += 1
        stripped = line.strip()
        if stripped.startswith('Fractional coordinates') or stripped.startswith('-----'):
            break
        match = _GEOMETRY_ROW.match(line)
        if not match:
            continue
        vector = [_float(match.group(k)) for k in (2, 3, 4)]
        if match.group(1) == 'lattice_vector':
            cell.append(vector)
        else:
            positions.append(vector)
            symbols.append(match.group(5))
    return {'cell': cell or None, 'positions': positions, 'symbols': symbols}, consumed


def _read_input_geometry(lines: list[str], start: int) -> tuple[dict, int]:
    """The "Input geometry:" block: optional "| Unit cell:" rows, then "| Atomic structure:" rows; ends at a blank."""
    cell, positions, symbols = [], [], []
    consumed = 0
    for line in lines[start:]:
        if not line.strip():
            break
        consumed += 1
        atom = _INPUT_ATOM_ROW.match(line)
        if atom:
            symbols.append(atom.group(1))
            positions.append([_float(atom.group(k)) for k in (2, 3, 4)])
            continue
        vector = _INPUT_CELL_ROW.match(line)
        if vector and not positions:
            cell.append([_float(vector.group(k)) for k in (1, 2, 3)])
    return {'cell': cell or None, 'positions': positions, 'symbols': symbols}, consumed


def _read_timings(lines: list[str], start: int) -> tuple[dict, int]:
    timings = {}
    consumed = 0
    for line in lines[start:]:
        match = _TIMING.match(line)
        if not match:
            break
        consumed += 1
        name = re.sub(r'[^a-z0-9]+', '_', match.group(1).lower()).strip('_')
        timings[name] = {'cpu_s': _float(match.group(2)), 'wall_s': _float(match.group(3))}
    return timings, consumed
