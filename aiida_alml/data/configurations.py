"""``alml.configurations``: an immutable, compactly stored set of atomic configurations with optional labels."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence

from aiida import orm

from aiida_alml.atoms.configurations import Configurations, read_extxyz, write_extxyz
from aiida_alml.label_settings import FINGERPRINT_KEY

__all__ = ('ConfigurationSet',)

_ARRAYS_FILE = 'configurations.npz'


class ConfigurationSet(orm.Data):
    """A set of atomic configurations (numbers, positions, cell, pbc) with optional energy/forces/stress labels.

    The arrays and the per-configuration metadata (as JSON) live in the node repository as one npz file.
    Attributes kept for querying without loading the arrays: ``num_configurations``, ``elements`` (sorted symbols),
    ``total_atoms``, ``labels`` (names of the labels present), ``content_hash`` (SHA-256 of the content) and
    ``label_fingerprints`` (the distinct ``label_fingerprint`` values of the configurations' metadata: the settings
    their labels were computed with, see :mod:`aiida_alml.label_settings`; empty when none is recorded).

    Build one with :meth:`from_ase`, :meth:`from_extxyz` or from a :class:`aiida_alml.atoms.configurations.Configurations`.
    """

    def __init__(self, configurations: Configurations | None = None, **kwargs):
        super().__init__(**kwargs)
        if configurations is None:
            raise TypeError('ConfigurationSet needs its configurations: use from_ase(), from_extxyz() or pass one')
        if not isinstance(configurations, Configurations):
            raise TypeError(f'expected aiida_alml.atoms.configurations.Configurations, got {type(configurations).__name__}')
        self.base.repository.put_object_from_filelike(io.BytesIO(configurations.to_npz_bytes()), _ARRAYS_FILE)
        self.base.attributes.set_many(
            {
                'num_configurations': len(configurations),
                'elements': configurations.elements,
                'total_atoms': configurations.total_atoms,
                'labels': configurations.labels,
                'content_hash': configurations.content_hash(),
                'label_fingerprints': sorted(
                    {meta[FINGERPRINT_KEY] for meta in configurations.metadata if FINGERPRINT_KEY in meta}
                ),
            }
        )
        self._configurations = configurations

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_ase(cls, images: Iterable, metadata: Sequence[dict] | None = None, **kwargs) -> 'ConfigurationSet':
        """Build from ASE ``Atoms``; see :meth:`Configurations.from_ase` for where labels are taken from."""
        return cls(Configurations.from_ase(images, metadata=metadata, **kwargs))

    @classmethod
    def from_extxyz(cls, path: str | os.PathLike, keys: dict[str, str] | None = None) -> 'ConfigurationSet':
        """Read an extxyz file; labels under MACE's ``REF_energy``/``REF_forces``/``REF_stress`` unless ``keys``."""
        return cls(read_extxyz(path, keys=keys))

    # ------------------------------------------------------------------ access
    @property
    def configurations(self) -> Configurations:
        """The arrays, loaded from the repository once and cached on this instance."""
        cached = getattr(self, '_configurations', None)
        if cached is None:
            with self.base.repository.open(_ARRAYS_FILE, mode='rb') as handle:
                data = io.BytesIO(handle.read())
            cached = Configurations.from_npz(data)
            self._configurations = cached
        return cached

    @property
    def num_configurations(self) -> int:
        return self.base.attributes.get('num_configurations')

    @property
    def elements(self) -> list[str]:
        return self.base.attributes.get('elements')

    @property
    def total_atoms(self) -> int:
        return self.base.attributes.get('total_atoms')

    @property
    def labels(self) -> list[str]:
        return self.base.attributes.get('labels')

    @property
    def content_hash(self) -> str:
        return self.base.attributes.get('content_hash')

    @property
    def label_fingerprints(self) -> list[str]:
        return self.base.attributes.get('label_fingerprints', [])

    def __len__(self) -> int:
        return self.num_configurations

    def to_ase(self) -> list:
        """The configurations as ASE ``Atoms``, labels as ``SinglePointCalculator`` results, metadata in ``info``."""
        return self.configurations.to_ase()

    def get_atoms(self, index: int):
        return self.configurations.get_atoms(index)

    def get_structure(self, index: int) -> orm.StructureData:
        """Configuration ``index`` as an (unstored) ``StructureData``."""
        return orm.StructureData(ase=self.get_atoms(index))

    def write_extxyz(self, path: str | os.PathLike, keys: dict[str, str] | None = None) -> None:
        """Write an extxyz file (MACE's ``REF_*`` keys) that reads back bit-for-bit."""
        write_extxyz(self.configurations, path, keys=keys)
