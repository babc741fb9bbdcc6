"""``alml.configurations``: an immutable, compactly stored set of atomic configurations with optional labels."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable, Sequence

from aiida import orm

from aiida_alml.atoms.configurations import Configurations, ConfigurationError, read_extxyz, write_extxyz
from aiida_alml.engines.train import trained_indices
from aiida_alml.label_settings import FINGERPRINT_KEY, SETTINGS_KEY

__all__ = ('ConfigurationSet', 'PartsError')

_ARRAYS_FILE = 'configurations.npz'
#: Attributes of a composed set: the UUIDs of its flat parts in order, and per part its size and content hash.
_PARTS = 'parts'
_PART_SIZES = 'part_sizes'
_PART_HASHES = 'part_content_hashes'
#: How many configurations are MACE's isolated atoms (the E0s; not trained on).
_ISOLATED_ATOMS = 'isolated_atoms'
#: Prefix of the content hash of a composed set; bump the version when its definition changes.
_COMPOSED_HASH_FORMAT = 'alml.configurations.composed/1'


class PartsError(ValueError):
    """A composed ConfigurationSet's parts are not usable: missing from the database, not flat sets, or changed."""


class ConfigurationSet(orm.Data):
    """A set of atomic configurations (numbers, positions, cell, pbc) with optional energy/forces/stress labels.

    Attributes kept for querying without loading the arrays: ``num_configurations``, ``elements`` (sorted symbols),
    ``total_atoms``, ``labels`` (names of the labels present), ``content_hash``, ``label_fingerprints`` (the distinct
    ``label_fingerprint`` values of the configurations' metadata: the settings their labels were computed with, see
    :mod:`aiida_alml.label_settings`; empty when none is recorded) and ``unrecorded_label_settings`` (how many
    configurations record no label settings; absent on sets stored before it existed and on sets where a recorded
    fingerprint does not match its settings, so that ``label_fingerprints`` can stand for the settings only when it
    is present) and ``isolated_atoms`` (how many configurations are MACE's ``IsolatedAtom`` ones, which give E0s and
    are not trained on; absent on sets stored before it existed).

    A set is stored in one of two ways:

    * **flat**: the arrays and the per-configuration metadata (as JSON) live in the node repository as one npz file;
      ``content_hash`` is the SHA-256 of the content (:meth:`Configurations.content_hash`), equal for equal content.
    * **composed** (:meth:`compose`, what ``merge_training_sets`` makes): no arrays of its own, only the ordered UUIDs
      of stored flat sets (``parts``; composing a composed set lists its parts, so the list never nests), with each
      part's size and content hash (``part_sizes``, ``part_content_hashes``). The configurations are those of the
      parts, concatenated in order, so a training set grown by merges stores each label once. Its ``content_hash``
      is a different kind of hash: the SHA-256 of ``alml.configurations.composed/1`` and its parts' hashes and sizes,
      so that it costs no reading of arrays. Two composed sets with the same parts have the same hash, but a
      composed set and a flat set with the same configurations do not: compare content with :meth:`same_content`
      (or :attr:`is_composed` first), not by comparing ``content_hash`` across kinds.

    Every accessor (:attr:`configurations`, :meth:`to_ase`, :meth:`write_extxyz`, ...) works on both kinds. Compose
    inside a calcfunction that takes the parts (or sets made of them) as inputs, as ``merge_training_sets`` does: the
    parts are then provenance ancestors of the composed set, so that an archive export of it carries them.

    Build one with :meth:`from_ase`, :meth:`from_extxyz`, from a
    :class:`aiida_alml.atoms.configurations.Configurations`, or with :meth:`compose`.
    """

    def __init__(self, configurations: Configurations | None = None, **kwargs):
        super().__init__(**kwargs)
        if configurations is None:
            raise TypeError('ConfigurationSet needs its configurations: use from_ase(), from_extxyz(), compose() or '
                            'pass one')
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
                _ISOLATED_ATOMS: len(configurations) - len(trained_indices(configurations)),
            }
        )
        unrecorded = _unrecorded_label_settings(configurations.metadata)
        if unrecorded is not None:
            self.base.attributes.set('unrecorded_label_settings', unrecorded)
        self._cached_configurations = configurations

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_ase(cls, images: Iterable, metadata: Sequence[dict] | None = None, **kwargs) -> 'ConfigurationSet':
        """Build from ASE ``Atoms``; see :meth:`Configurations.from_ase` for where labels are taken from."""
        return cls(Configurations.from_ase(images, metadata=metadata, **kwargs))

    @classmethod
    def from_extxyz(cls, path: str | os.PathLike, keys: dict[str, str] | None = None) -> 'ConfigurationSet':
        """Read an extxyz file; labels under MACE's ``REF_energy``/``REF_forces``/``REF_stress`` unless ``keys``."""
        return cls(read_extxyz(path, keys=keys))

    @classmethod
    def compose(cls, sets: Sequence['ConfigurationSet']) -> 'ConfigurationSet':
        """An (unstored) composed set holding the configurations of ``sets`` in order, without copying any array.

        ``sets`` must be stored ConfigurationSets (flat or composed) with the same labels; a composed one contributes
        its parts. The attributes are computed from theirs: nothing is loaded.
        """
        sets = list(sets)
        if not sets:
            raise ValueError('compose: nothing to compose, give at least one ConfigurationSet')
        for index, part in enumerate(sets):
            if not isinstance(part, ConfigurationSet):
                raise TypeError(f'compose: set {index} is a {type(part).__name__}, not a ConfigurationSet')
            if not part.is_stored:
                raise ValueError(f'compose: set {index} is not stored; store it first (a composed set refers to its '
                                 'parts by UUID)')
        labels = {tuple(part.labels) for part in sets}
        if len(labels) != 1:
            raise ConfigurationError(f'cannot concatenate sets with different labels: {sorted(labels)}')
        uuids, sizes, hashes = [], [], []
        for part in sets:
            part_uuids, part_sizes, part_hashes = part._leaves()
            uuids += part_uuids
            sizes += part_sizes
            hashes += part_hashes
        unrecorded = [part.base.attributes.get('unrecorded_label_settings', None) for part in sets]
        isolated = [part.isolated_atoms for part in sets]
        node = cls.__new__(cls)  # not cls(): __init__ takes arrays and writes them to the repository
        orm.Data.__init__(node)
        node.base.attributes.set_many({
            _PARTS: uuids,
            _PART_SIZES: sizes,
            _PART_HASHES: hashes,
            'num_configurations': sum(sizes),
            'elements': sorted({element for part in sets for element in part.elements}),
            'total_atoms': sum(part.total_atoms for part in sets),
            'labels': list(labels.pop()),
            'content_hash': _composed_hash(sizes, hashes),
            'label_fingerprints': sorted({fingerprint for part in sets for fingerprint in part.label_fingerprints}),
        })
        if None not in unrecorded:
            node.base.attributes.set('unrecorded_label_settings', sum(unrecorded))
        if None not in isolated:
            node.base.attributes.set(_ISOLATED_ATOMS, sum(isolated))
        node._cached_configurations = None
        return node

    # ------------------------------------------------------------------ composition
    @property
    def is_composed(self) -> bool:
        """Whether this set refers to flat parts instead of holding arrays (see the class docstring)."""
        return self.base.attributes.get(_PARTS, None) is not None

    @property
    def parts(self) -> list[str]:
        """UUIDs of the flat sets this one is made of, in order: its own UUID for a flat set."""
        return self._leaves()[0]

    def _leaves(self) -> tuple[list[str], list[int], list[str]]:
        """(UUIDs, sizes, content hashes) of the flat sets this one is made of."""
        if not self.is_composed:
            return [self.uuid], [self.num_configurations], [self.content_hash]
        attributes = self.base.attributes
        return list(attributes.get(_PARTS)), list(attributes.get(_PART_SIZES)), list(attributes.get(_PART_HASHES))

    def part_nodes(self) -> list['ConfigurationSet']:
        """The flat sets this one is made of, in order (one query); itself for a flat set.

        Raises :class:`PartsError` naming the part that is missing from the database, is not a flat ConfigurationSet,
        or no longer has the size and content hash recorded when this set was composed.
        """
        if not self.is_composed:
            return [self]
        uuids, sizes, hashes = self._leaves()
        # The parts live where this set does (a profile or, read directly, an archive).
        query = orm.QueryBuilder(backend=self.backend)
        query.append(orm.Node, filters={'uuid': {'in': sorted(set(uuids))}}, project='*')
        found = {node.uuid: node for node in query.all(flat=True)}
        where = f'ConfigurationSet <{self.pk}>' if self.is_stored else 'the composed ConfigurationSet'
        missing = [uuid for uuid in uuids if uuid not in found]
        if missing:
            raise PartsError(f'{where} is composed of sets that are not in the database: {", ".join(missing)} '
                             '(an archive of it made without its provenance ancestors lacks them)')
        nodes = [found[uuid] for uuid in uuids]
        for index, (node, size, content_hash) in enumerate(zip(nodes, sizes, hashes)):
            if not isinstance(node, ConfigurationSet) or node.is_composed:
                raise PartsError(f'{where}: part {index} <{node.uuid}> is a {type(node).__name__}'
                                 f'{" (composed)" if isinstance(node, ConfigurationSet) else ""}, not a flat '
                                 'ConfigurationSet')
            if node.num_configurations != size or node.content_hash != content_hash:
                raise PartsError(f'{where}: part {index} <{node.uuid}> holds {node.num_configurations} configurations '
                                 f'with content {node.content_hash[:12]}, but {size} with {content_hash[:12]} were '
                                 'recorded')
        return nodes

    def _validate(self) -> bool:
        super()._validate()
        if self.is_composed:
            self.part_nodes()  # refuses parts that are not stored flat ConfigurationSets
        return True

    # ------------------------------------------------------------------ access
    @property
    def configurations(self) -> Configurations:
        """The arrays, loaded once and cached on this instance; for a composed set, its parts concatenated."""
        cached = getattr(self, '_cached_configurations', None)
        if cached is None:
            cached = self._load_parts() if self.is_composed else self._load_flat()
            self._cached_configurations = cached
        return cached

    def _load_flat(self) -> Configurations:
        with self.base.repository.open(_ARRAYS_FILE, mode='rb') as handle:
            return Configurations.from_npz(io.BytesIO(handle.read()))

    def _load_parts(self) -> Configurations:
        loaded = Configurations.concatenate([Configurations.from_npz(io.BytesIO(content))
                                             for content in self._part_files()])
        if len(loaded) != self.num_configurations:
            raise PartsError(f'ConfigurationSet <{self.pk}>: its parts hold {len(loaded)} configurations, '
                             f'{self.num_configurations} were recorded')
        return loaded

    def _part_files(self, parts: Sequence['ConfigurationSet'] | None = None) -> list[bytes]:
        """The npz file of each part, in order, read in one request to the repository (one open per part costs the
        disk object store a few lookups: 0.7 s for 100 parts instead of 0.05 s)."""
        parts = self.part_nodes() if parts is None else parts
        keys = [part.base.repository.get_object(_ARRAYS_FILE).key for part in parts]
        contents = {}
        for key, stream in self.backend.get_repository().iter_object_streams(sorted(set(keys))):
            contents[key] = stream.read()
        return [contents[key] for key in keys]

    def configuration_metadata(self) -> list[dict]:
        """The per-configuration metadata, read without loading the arrays when they are not cached."""
        import numpy as np

        cached = getattr(self, '_cached_configurations', None)
        if cached is not None:
            return list(cached.metadata)
        metadata, parts = [], self.part_nodes()
        for part, content in zip(parts, self._part_files(parts)):
            with np.load(io.BytesIO(content), allow_pickle=False) as arrays:  # npz members load lazily
                if 'metadata' in arrays.files:
                    metadata += json.loads(str(arrays['metadata']))
                else:
                    metadata += [{} for _ in range(part.num_configurations)]
        return metadata

    def flat_content_hash(self) -> str:
        """SHA-256 of the content as a flat set would record it (loads the arrays of a composed set)."""
        return self.content_hash if not self.is_composed else self.configurations.content_hash()

    def same_content(self, other: 'ConfigurationSet') -> bool:
        """Whether ``other`` holds the same configurations, labels and metadata in the same order (any kind)."""
        if self.is_composed == other.is_composed and self.content_hash == other.content_hash:
            return True
        if self.num_configurations != other.num_configurations or self.total_atoms != other.total_atoms:
            return False
        return self.flat_content_hash() == other.flat_content_hash()

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
    def isolated_atoms(self) -> int | None:
        """How many configurations are MACE's isolated atoms; None for a set stored before this was recorded."""
        return self.base.attributes.get(_ISOLATED_ATOMS, None)

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


def _unrecorded_label_settings(metadata: Sequence[dict]) -> int | None:
    """How many configurations record no label settings, or None when one records settings without their fingerprint
    (then the fingerprints do not tell the settings apart, and label checks must read the metadata)."""
    from aiida_alml.label_settings import label_fingerprint

    unrecorded, checked = 0, set()
    for meta in metadata:
        settings = meta.get(SETTINGS_KEY)
        if not settings:
            unrecorded += 1
            continue
        key = (json.dumps(settings, sort_keys=True), meta.get(FINGERPRINT_KEY))
        if key not in checked:  # thousands of configurations share the same few settings
            if meta.get(FINGERPRINT_KEY) != label_fingerprint(settings):
                return None
            checked.add(key)
    return unrecorded


def _composed_hash(sizes: Sequence[int], hashes: Sequence[str]) -> str:
    digest = hashlib.sha256(_COMPOSED_HASH_FORMAT.encode())
    for size, content_hash in zip(sizes, hashes):
        digest.update(f'\n{size}:{content_hash}'.encode())
    return digest.hexdigest()
