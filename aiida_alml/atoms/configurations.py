"""Plain, validated container for a set of atomic configurations and their reference labels.

Everything is held as a few concatenated numpy arrays (not one object per atom) so that sets of 10^4 structures
build, hash, store and reload in seconds. This module imports only numpy and ase: the engine scripts that run on
compute nodes use it too. The AiiDA node :class:`aiida_alml.data.ConfigurationSet` wraps it.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import numbers
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ('CLOSE_CONTACT', 'LABELS', 'MAX_COORDINATE', 'Configurations', 'ConfigurationError', 'close_contact',
           'far_coordinate', 'read_extxyz', 'write_extxyz')

#: Labels a configuration can carry, in the order they are stored.
LABELS = ('energy', 'forces', 'stress')

#: Keys of the MACE convention for reference labels in extxyz files.
MACE_KEYS = {'energy': 'REF_energy', 'forces': 'REF_forces', 'stress': 'REF_stress'}

#: Key of ``atoms.info`` under which our extxyz files keep the per-configuration metadata as one JSON object.
METADATA_KEY = 'alml_metadata'

# The file layout version is part of the content hash: bump it when the meaning of the arrays changes.
_FORMAT_VERSION = 1
_MAX_Z = 118
#: Å: two atoms closer than this are a broken structure (the shortest bond, H2, is 0.74 Å; EMT gives NaN forces for
#: overlapping atoms and DFT codes fail or waste a job). The MD engine stops at the same distance by default.
CLOSE_CONTACT = 0.5
#: Å: the largest coordinate or cell entry (in size) a given structure may have. 10^4 Å is 1 µm: a cell that wide holds
#: some 10^11 atoms, far beyond any structure a reference method labels or a committee explores; larger numbers are a
#: unit mistake or garbage (at 1e300 distances overflow to inf). Checked on the structures a campaign is given
#: (:func:`far_coordinate`), not on MD frames, where an atom that flew off is a finding to record.
MAX_COORDINATE = 1e4
# |det(cell)| below this (in Å^3) is treated as singular for a periodic structure.
_SINGULAR_VOLUME = 1e-8


class ConfigurationError(ValueError):
    """Raised when configurations or their labels are malformed; the message names the configuration."""


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    array.flags.writeable = False
    return array


def _jsonable(value: Any, where: str) -> Any:
    """Return ``value`` as plain JSON types, converting numpy scalars and arrays; refuse anything else."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, bool, int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigurationError(f'{where}: metadata value {value!r} is not finite')
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(item, where) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item, where) for key, item in value.items()}
    raise ConfigurationError(f'{where}: metadata value of type {type(value).__name__} cannot be stored as JSON')


class Configurations:
    """An immutable set of atomic configurations with optional energy, forces and stress labels.

    Arrays (``n`` configurations, ``N`` atoms in total):

    * ``numbers`` (N,) int64, ``positions`` (N, 3) float64 in Å, ``n_atoms`` (n,) int64,
    * ``cells`` (n, 3, 3) float64, ``pbc`` (n, 3) bool,
    * labels, each present for all configurations or for none: ``energy`` (n,) eV, ``forces`` (N, 3) eV/Å,
      ``stress`` (n, 6) eV/Å^3 in ASE's Voigt order (xx, yy, zz, yz, xz, xy),
    * ``metadata``: one JSON-serialisable dict per configuration (source uuid, iteration, tags, ...).
    """

    def __init__(
        self,
        numbers: Any,
        positions: Any,
        n_atoms: Any,
        cells: Any,
        pbc: Any,
        energy: Any = None,
        forces: Any = None,
        stress: Any = None,
        metadata: Sequence[dict] | None = None,
    ):
        self.numbers = _frozen(np.asarray(numbers))
        self.positions = _frozen(np.asarray(positions, dtype=np.float64))
        self.n_atoms = _frozen(np.asarray(n_atoms))
        self.cells = _frozen(np.asarray(cells, dtype=np.float64))
        self.pbc = _frozen(np.asarray(pbc))
        self.energy = None if energy is None else _frozen(np.asarray(energy, dtype=np.float64))
        self.forces = None if forces is None else _frozen(np.asarray(forces, dtype=np.float64))
        self.stress = None if stress is None else _frozen(np.asarray(stress, dtype=np.float64))
        count = len(self.n_atoms) if self.n_atoms.ndim == 1 else 0
        if metadata is None:
            metadata = [{} for _ in range(count)]
        self.metadata = tuple(_jsonable(dict(meta), f'configuration {i}') for i, meta in enumerate(metadata))
        self._validate()
        self._offsets = np.concatenate([[0], np.cumsum(self.n_atoms)])

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        n_atoms = self.n_atoms
        if n_atoms.ndim != 1:
            raise ConfigurationError(f'n_atoms must be one-dimensional, got shape {n_atoms.shape}')
        if len(n_atoms) == 0:
            raise ConfigurationError('the set is empty: at least one configuration is needed')
        if not np.issubdtype(n_atoms.dtype, np.integer):
            raise ConfigurationError(f'n_atoms must be integers, got dtype {n_atoms.dtype}')
        if (n_atoms < 1).any():
            index = int(np.argmax(n_atoms < 1))
            raise ConfigurationError(f'configuration {index} has no atoms')
        count, total = len(n_atoms), int(n_atoms.sum())
        self.n_atoms = _frozen(n_atoms.astype(np.int64))

        if self.numbers.shape != (total,) or not np.issubdtype(self.numbers.dtype, np.integer):
            raise ConfigurationError(
                f'numbers must be {total} integers (sum of n_atoms), got shape {self.numbers.shape} '
                f'dtype {self.numbers.dtype}'
            )
        self.numbers = _frozen(self.numbers.astype(np.int64))
        bad = (self.numbers < 1) | (self.numbers > _MAX_Z)
        if bad.any():
            atom = int(np.argmax(bad))
            raise ConfigurationError(
                f'configuration {self._owner(atom)}: unknown atomic number {int(self.numbers[atom])} '
                f'(must be 1..{_MAX_Z})'
            )
        self._check_array('positions', self.positions, (total, 3), per_atom=True)
        self._check_array('cells', self.cells, (count, 3, 3), per_atom=False)
        if self.pbc.shape != (count, 3) or self.pbc.dtype != np.bool_:
            raise ConfigurationError(f'pbc must be booleans of shape {(count, 3)}, got {self.pbc.shape} {self.pbc.dtype}')
        if self.energy is not None:
            self._check_array('energy', self.energy, (count,), per_atom=False)
        if self.forces is not None:
            self._check_array('forces', self.forces, (total, 3), per_atom=True)
        if self.stress is not None:
            self._check_array('stress', self.stress, (count, 6), per_atom=False)
            nonperiodic = ~self.pbc.all(axis=1)
            if nonperiodic.any():
                raise ConfigurationError(
                    f'configuration {int(np.argmax(nonperiodic))}: a stress label needs a cell periodic in all '
                    'three directions'
                )
        if len(self.metadata) != count:
            raise ConfigurationError(f'metadata must have one entry per configuration ({count}), got {len(self.metadata)}')
        for index in range(count):
            periodic = self.cells[index][self.pbc[index]]
            if len(periodic) and _gram_determinant(periodic) < _SINGULAR_VOLUME**2:
                raise ConfigurationError(
                    f'configuration {index}: the cell is singular along its periodic directions '
                    f'(pbc={self.pbc[index].tolist()}, cell={self.cells[index].tolist()})'
                )

    def _owner(self, atom: int) -> int:
        return int(np.searchsorted(np.cumsum(self.n_atoms), atom, side='right'))

    def _check_array(self, name: str, array: np.ndarray, shape: tuple, per_atom: bool) -> None:
        if array.shape != shape:
            raise ConfigurationError(f'{name} must have shape {shape}, got {array.shape}')
        finite = np.isfinite(array)
        if not finite.all():
            flat = int(np.argmax(~finite.reshape(len(array), -1).all(axis=1)))
            index = self._owner(flat) if per_atom else flat
            raise ConfigurationError(f'configuration {index}: {name} contains NaN or inf')

    # ------------------------------------------------------------------ basic properties
    def __len__(self) -> int:
        return len(self.n_atoms)

    @property
    def total_atoms(self) -> int:
        return int(self._offsets[-1])

    @property
    def elements(self) -> list[str]:
        """Sorted chemical symbols present in the set."""
        from ase.data import chemical_symbols

        return sorted(chemical_symbols[z] for z in np.unique(self.numbers))

    @property
    def labels(self) -> list[str]:
        """Names of the labels present, in the order of :data:`LABELS`."""
        return [label for label in LABELS if getattr(self, label) is not None]

    def atom_slice(self, index: int) -> slice:
        return slice(int(self._offsets[index]), int(self._offsets[index + 1]))

    # ------------------------------------------------------------------ hashing and serialisation
    def _named_arrays(self) -> list[tuple[str, np.ndarray]]:
        arrays = [
            ('numbers', self.numbers),
            ('positions', self.positions),
            ('n_atoms', self.n_atoms),
            ('cells', self.cells),
            ('pbc', self.pbc),
        ]
        arrays += [(label, getattr(self, label)) for label in self.labels]
        return arrays

    def content_hash(self) -> str:
        """SHA-256 over the exact bytes of every array and the metadata: equal content gives the equal hash."""
        digest = hashlib.sha256(f'alml.configurations/{_FORMAT_VERSION}'.encode())
        for name, array in self._named_arrays():
            canonical = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder('<'))
            digest.update(f'{name}:{canonical.dtype.str}:{canonical.shape}'.encode())
            digest.update(canonical.tobytes())
        digest.update(json.dumps(self.metadata, sort_keys=True, separators=(',', ':')).encode())
        return digest.hexdigest()

    def to_npz_bytes(self) -> bytes:
        """Serialise arrays and metadata (uncompressed npz: positions barely compress and loading stays fast)."""
        buffer = io.BytesIO()
        metadata = np.array(json.dumps(self.metadata, sort_keys=True))
        np.savez(buffer, metadata=metadata, **dict(self._named_arrays()))
        return buffer.getvalue()

    @classmethod
    def from_npz(cls, handle) -> 'Configurations':
        with np.load(handle, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        metadata = json.loads(str(arrays.pop('metadata'))) if 'metadata' in arrays else None
        return cls(metadata=metadata, **arrays)

    # ------------------------------------------------------------------ ASE
    @classmethod
    def from_ase(
        cls,
        images: Iterable,
        metadata: Sequence[dict] | None = None,
        energy_key: str = 'REF_energy',
        forces_key: str = 'REF_forces',
        stress_key: str = 'REF_stress',
        include_info: bool = True,
    ) -> 'Configurations':
        """Build from ASE ``Atoms``.

        Labels are read from ``atoms.info[energy_key]`` / ``atoms.arrays[forces_key]`` / ``atoms.info[stress_key]``
        (MACE's ``REF_*`` convention) and, where those are absent, from the attached calculator's results (without
        triggering a calculation). JSON-serialisable ``atoms.info`` entries become the metadata unless ``metadata``
        is given.
        """
        images = list(images)
        if not images:
            raise ConfigurationError('the set is empty: at least one configuration is needed')
        if metadata is not None and len(metadata) != len(images):
            raise ConfigurationError(f'metadata has {len(metadata)} entries for {len(images)} configurations')
        keys = {'energy': energy_key, 'forces': forces_key, 'stress': stress_key}
        found: dict[str, list] = {label: [] for label in LABELS}
        metas = []
        for index, atoms in enumerate(images):
            labels = _labels_of(atoms, keys, index)
            for label in LABELS:
                found[label].append(labels.get(label))
            n = len(atoms)
            if labels.get('forces') is not None and np.shape(labels['forces']) != (n, 3):
                raise ConfigurationError(
                    f'configuration {index}: forces have shape {np.shape(labels["forces"])}, positions ({n}, 3)'
                )
            if labels.get('stress') is not None:
                labels['stress'] = _voigt(labels['stress'], index)
                found['stress'][-1] = labels['stress']
            if metadata is None:
                metas.append(_metadata_from_info(atoms.info, keys, index) if include_info else {})
        label_arrays = {}
        for label, values in found.items():
            present = [value is not None for value in values]
            if all(present):
                label_arrays[label] = np.concatenate(values) if label == 'forces' else np.asarray(values, float)
            elif any(present):
                missing = present.index(False)
                raise ConfigurationError(
                    f'configuration {missing} has no {label} label while others do: a label must be given for '
                    'every configuration or for none'
                )
        return cls(
            numbers=np.concatenate([atoms.numbers for atoms in images]),
            positions=np.concatenate([atoms.positions for atoms in images]),
            n_atoms=np.array([len(atoms) for atoms in images], dtype=np.int64),
            cells=np.array([atoms.cell.array for atoms in images], dtype=np.float64),
            pbc=np.array([atoms.pbc for atoms in images], dtype=bool),
            metadata=metadata if metadata is not None else metas,
            **label_arrays,
        )

    def get_atoms(self, index: int):
        """Return configuration ``index`` as ASE ``Atoms``; labels as a ``SinglePointCalculator``'s results."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        if not -len(self) <= index < len(self):
            raise IndexError(f'configuration {index} out of range for a set of {len(self)}')
        index %= len(self)
        atoms_slice = self.atom_slice(index)
        atoms = Atoms(
            numbers=self.numbers[atoms_slice].copy(),
            positions=self.positions[atoms_slice].copy(),
            cell=self.cells[index].copy(),
            pbc=self.pbc[index].copy(),
        )
        atoms.info.update(json.loads(json.dumps(self.metadata[index])))
        results = {}
        if self.energy is not None:
            results['energy'] = float(self.energy[index])
        if self.forces is not None:
            results['forces'] = self.forces[atoms_slice].copy()
        if self.stress is not None:
            results['stress'] = self.stress[index].copy()
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms

    def to_ase(self) -> list:
        return [self.get_atoms(index) for index in range(len(self))]

    @classmethod
    def concatenate(cls, parts: Sequence['Configurations']) -> 'Configurations':
        """One set holding all configurations of ``parts`` in order; they must carry the same labels."""
        parts = list(parts)
        if not parts:
            raise ConfigurationError('nothing to concatenate: give at least one set')
        labels = {tuple(part.labels) for part in parts}
        if len(labels) != 1:
            raise ConfigurationError(f'cannot concatenate sets with different labels: {sorted(labels)}')
        fields = ('numbers', 'positions', 'n_atoms', 'cells', 'pbc', *parts[0].labels)
        return cls(
            metadata=[meta for part in parts for meta in part.metadata],
            **{name: np.concatenate([getattr(part, name) for part in parts]) for name in fields},
        )

    def replace(self, **changes) -> 'Configurations':
        """A new set with some fields replaced, e.g. ``replace(energy=None, forces=None)`` to drop labels."""
        fields = {
            'numbers': self.numbers, 'positions': self.positions, 'n_atoms': self.n_atoms, 'cells': self.cells,
            'pbc': self.pbc, 'energy': self.energy, 'forces': self.forces, 'stress': self.stress,
            'metadata': self.metadata,
        }
        unknown = set(changes) - set(fields)
        if unknown:
            raise TypeError(f'unknown fields {sorted(unknown)}')
        return Configurations(**{**fields, **changes})

    def select(self, indices: Sequence[int]) -> 'Configurations':
        """A new set holding the configurations ``indices`` (in that order)."""
        indices = [int(i) for i in indices]
        if not indices:
            raise ConfigurationError('the selection is empty: at least one configuration is needed')
        atom_index = np.concatenate([np.arange(*self.atom_slice(i).indices(self.total_atoms)) for i in indices])
        labels = {
            'energy': None if self.energy is None else self.energy[indices],
            'forces': None if self.forces is None else self.forces[atom_index],
            'stress': None if self.stress is None else self.stress[indices],
        }
        return Configurations(
            numbers=self.numbers[atom_index],
            positions=self.positions[atom_index],
            n_atoms=self.n_atoms[indices],
            cells=self.cells[indices],
            pbc=self.pbc[indices],
            metadata=[self.metadata[i] for i in indices],
            **labels,
        )


def far_coordinate(configurations: Configurations, bound: float = MAX_COORDINATE) -> tuple[int, str, float] | None:
    """The first configuration with a position or cell entry larger than ``bound`` Å in size: (configuration,
    'positions' or 'cell', the entry), or None."""
    for name, array, per_atom in (('positions', configurations.positions, True), ('cell', configurations.cells, False)):
        far = (np.abs(array) > bound).reshape(len(array), -1).any(axis=1)
        if far.any():
            row = int(np.argmax(far))
            value = float(array[row].flat[int(np.argmax(np.abs(array[row]).reshape(-1)))])
            return (configurations._owner(row) if per_atom else row), name, value
    return None


def close_contact(configurations: Configurations, minimum: float = CLOSE_CONTACT) -> tuple[int, int, int, float] | None:
    """The first pair of atoms closer than ``minimum`` Å: (configuration, atom i, atom j, distance), or None.

    Periodic images count (minimum-image distances through the cell's periodic directions); ``i == j`` means an atom
    and its own periodic image.
    """
    for index in range(len(configurations)):
        found = _close_pair(configurations.positions[configurations.atom_slice(index)], configurations.cells[index],
                            configurations.pbc[index], minimum)
        if found is not None:
            return (index, *found)
    return None


def _close_pair(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, minimum: float):
    n = len(positions)
    periodic = pbc.any()
    if periodic:
        # Perpendicular widths of the cell along its periodic directions (1 / |reciprocal vector|).
        reciprocal = np.linalg.pinv(cell).T
        widths = 1.0 / np.linalg.norm(reciprocal[pbc], axis=1)
    if n > 400 or (periodic and widths.min() <= 2 * minimum):
        # Big configurations (memory of all pairs) and cells thinner than two minimum distances (several images
        # can be close): ASE's neighbour list, linear in the atoms and exact for any cell.
        from ase.neighborlist import primitive_neighbor_list

        first, second, distance = primitive_neighbor_list('ijd', pbc, cell, positions, minimum, self_interaction=False)
        if not len(first):
            return None
        pair = int(np.argmin(distance))
        i, j = sorted((int(first[pair]), int(second[pair])))
        return i, j, float(distance[pair])
    if n < 2:
        return None
    # All pairs at once. In a cell wider than 2 * minimum, a vector shorter than minimum has every fractional
    # component below 1/2, so rounding the fractional differences finds it (the minimum image).
    first, second = np.triu_indices(n, k=1)
    delta = positions[second] - positions[first]
    if periodic:
        delta = delta - np.round(delta @ reciprocal[pbc].T) @ cell[pbc]
    distance = np.sqrt(np.einsum('ij,ij->i', delta, delta))
    pair = int(np.argmin(distance))
    if distance[pair] >= minimum:
        return None
    return int(first[pair]), int(second[pair]), float(distance[pair])


def _gram_determinant(vectors: np.ndarray) -> float:
    return float(np.linalg.det(vectors @ vectors.T))


def _voigt(stress: Any, index: int) -> np.ndarray:
    stress = _numbers(stress, index, 'stress')
    if stress.shape == (6,):
        return stress
    if stress.shape == (9,):
        stress = stress.reshape(3, 3)
    if stress.shape == (3, 3):
        return np.array([stress[0, 0], stress[1, 1], stress[2, 2], stress[1, 2], stress[0, 2], stress[0, 1]])
    raise ConfigurationError(f'configuration {index}: stress must have 6 (Voigt) or 3x3 components, got {stress.shape}')


def _numbers(value: Any, index: int, label: str) -> np.ndarray:
    """A label as float64, or a :class:`ConfigurationError` naming it (a file may hold ``REF_energy=abc``)."""
    try:
        array = np.asarray(value)
        if array.dtype.kind not in 'iufO':  # text, and true/false, which numpy would take as 1 and 0
            raise TypeError(f'{array.dtype} is not numeric')
        return array.astype(np.float64)
    except (TypeError, ValueError) as exception:
        shown = repr(value) if len(repr(value)) <= 60 else f'{repr(value)[:60]}...'
        raise ConfigurationError(f'configuration {index}: the {label} label {shown} is not a number') from exception


def _labels_of(atoms, keys: dict[str, str], index: int = 0) -> dict[str, Any]:
    """Labels from ``info``/``arrays`` first, then from the calculator's stored results (never computed here)."""
    labels: dict[str, Any] = {}
    results = getattr(atoms.calc, 'results', None) or {}
    for label, key in keys.items():
        source = atoms.arrays if label == 'forces' else atoms.info
        if key in source:
            labels[label] = source[key]
        elif label in results:
            labels[label] = results[label]
    if 'energy' in labels:
        value = _numbers(labels['energy'], index, 'energy')
        if value.shape != ():
            raise ConfigurationError(f'configuration {index}: the energy label must be one number, got shape '
                                     f'{value.shape}')
        labels['energy'] = float(value)
    if 'forces' in labels:
        labels['forces'] = _numbers(labels['forces'], index, 'forces')
    return labels


def _metadata_from_info(info: dict, keys: dict[str, str], index: int) -> dict:
    if METADATA_KEY in info:
        meta = info[METADATA_KEY]
        if not isinstance(meta, dict):
            raise ConfigurationError(f'configuration {index}: info[{METADATA_KEY!r}] must be a dict')
        return dict(meta)
    skip = {keys['energy'], keys['stress'], 'energy', 'stress', 'free_energy'}
    return {key: value for key, value in info.items() if key not in skip}


# ---------------------------------------------------------------------- extxyz
def _format_row(values: Iterable) -> str:
    # repr() of a Python float is the shortest string that reads back to the same bits.
    return ' '.join(repr(value) for value in values)


def write_extxyz(configurations: Configurations, path: str | os.PathLike, keys: dict[str, str] | None = None) -> None:
    """Write an extended-XYZ file that reads back bit-for-bit (ASE's writer rounds to 8 decimals).

    Labels use MACE's keys (``REF_energy``, ``REF_forces``, ``REF_stress``) unless ``keys`` maps them otherwise;
    metadata goes into one JSON-valued ``alml_metadata`` entry so that its types survive.
    """
    from ase.data import chemical_symbols
    from ase.io.extxyz import key_val_dict_to_str

    keys = {**MACE_KEYS, **(keys or {})}
    with open(path, 'w', encoding='utf-8') as handle:
        for index in range(len(configurations)):
            atoms_slice = configurations.atom_slice(index)
            columns = [configurations.positions[atoms_slice]]
            properties = 'species:S:1:pos:R:3'
            if configurations.forces is not None:
                columns.append(configurations.forces[atoms_slice])
                properties += f':{keys["forces"]}:R:3'
            info: dict[str, Any] = {}
            cell, pbc = configurations.cells[index], configurations.pbc[index]
            if pbc.any() or cell.any():
                info['Lattice'] = _format_row(cell.reshape(-1).tolist())
            info['Properties'] = properties
            if configurations.energy is not None:
                info[keys['energy']] = float(configurations.energy[index])
            if configurations.stress is not None:
                info[keys['stress']] = _format_row(configurations.stress[index].tolist())
            if configurations.metadata[index]:
                info[METADATA_KEY] = configurations.metadata[index]
            info['pbc'] = ' '.join('T' if flag else 'F' for flag in pbc)
            handle.write(f'{int(configurations.n_atoms[index])}\n{key_val_dict_to_str(info)}\n')
            data = np.hstack(columns).tolist()
            symbols = [chemical_symbols[z] for z in configurations.numbers[atoms_slice].tolist()]
            handle.writelines(f'{symbol} {_format_row(row)}\n' for symbol, row in zip(symbols, data))


def read_extxyz(path: str | os.PathLike, keys: dict[str, str] | None = None) -> Configurations:
    """Read an extended-XYZ file (ours or anyone's) with labels under ``keys`` (default MACE's ``REF_*``)."""
    import ase.io

    keys = {**MACE_KEYS, **(keys or {})}
    if not os.path.isfile(path):
        raise ConfigurationError(f'extxyz file {path} does not exist')
    images = ase.io.read(path, index=':', format='extxyz')
    return Configurations.from_ase(
        images, energy_key=keys['energy'], forces_key=keys['forces'], stress_key=keys['stress']
    )
