"""The local environments of labelled configurations, described once and kept as nodes.

Selection compares the frames it is offered with every atomic environment of the training set. Describing the
whole training set again at each iteration costs what the dataset holds (about 17 ms per 108-atom configuration,
in the daemon worker); describing each configuration once, when it first appears in a training set, costs what the
iteration adds. :func:`select_for_labelling` returns the environments it had to describe as an output
(``training_environments``, made by :func:`describe_configurations`) and takes those of earlier iterations as
inputs (the ``environments`` namespace), so the rows it uses are on record as its inputs; :func:`gather_environments`
matches them to the configurations of the training set and describes only what none of them covers.

A block is an ``ArrayData`` with, per configuration it describes, its ``fingerprint`` (SHA-256 of its numbers,
positions, cell and periodicity), ``n_atoms`` and ``closest`` (smallest interatomic distance within
:data:`CONTACT_REACH`, inf if none, for the physical-contact filter), and per atom ``numbers`` and ``rows``; its
attributes say which descriptor it holds (``elements``, ``r_cut``, ``n_bins``, ``format``). A block described with
other settings is not used.
"""

from __future__ import annotations

import hashlib

import numpy as np
from aiida import orm

from aiida_alml.atoms.configurations import Configurations
from aiida_alml.selection import descriptors as environment_descriptors

__all__ = ('ENVIRONMENTS_FORMAT', 'CONTACT_REACH', 'closest_within', 'configuration_fingerprints',
           'describe_configurations', 'gather_environments')

#: Version of the block layout; a block of another version is described anew.
ENVIRONMENTS_FORMAT = 1
#: The reach of the closest-distance search of :func:`aiida_alml.workflows.functions.selection.physical_contacts`.
CONTACT_REACH = 6.0


def configuration_fingerprints(configurations: Configurations, indices=None) -> np.ndarray:
    """SHA-256 (hex) of the exact bytes of each configuration's numbers, positions, cell and periodicity.

    What the descriptors depend on, nothing else (labels and metadata may differ between two copies of a configuration,
    their environments do not).
    """
    indices = range(len(configurations)) if indices is None else indices
    prints = []
    for index in indices:
        atoms = configurations.atom_slice(index)
        digest = hashlib.sha256()
        for array in (configurations.numbers[atoms].astype('<i8'), configurations.positions[atoms].astype('<f8'),
                      configurations.cells[index].astype('<f8'), configurations.pbc[index].astype(bool)):
            digest.update(np.ascontiguousarray(array).tobytes())
        prints.append(digest.hexdigest())
    return np.array(prints, dtype='U64')


#: The first, short reach of :func:`closest_within`: the nearest neighbours of condensed matter are closer.
SHORT_REACH = 3.0


def closest_within(atoms, reach: float = CONTACT_REACH) -> float | None:
    """Smallest interatomic distance below ``reach`` (None if none), as
    :func:`aiida_alml.engines.md.closest_distance` gives it, searched within :data:`SHORT_REACH` first.

    The same value: the closest pair below ``reach`` is the closest pair below any shorter reach that finds one. ASE's
    neighbour list costs about 4 ms for a 108-atom copper cell at 3 Å and 290 ms at 6 Å (beyond half the cell).
    """
    from aiida_alml.engines.md import closest_distance

    found = closest_distance(atoms, min(SHORT_REACH, reach))
    if found is None and reach > SHORT_REACH:
        found = closest_distance(atoms, reach)
    return found


def _closest(atoms) -> float:
    found = closest_within(atoms)
    return np.inf if found is None else found


def describe_configurations(configurations: Configurations, indices, r_cut: float, n_bins: int) -> orm.ArrayData:
    """A block (unstored ``ArrayData``) of the environments of configurations ``indices``, described with the
    elements they contain (widened later as needed, see :func:`aiida_alml.selection.descriptors.widen_elements`)."""
    indices = [int(index) for index in indices]
    images = [configurations.get_atoms(index) for index in indices]
    elements = sorted({int(number) for atoms in images for number in atoms.numbers})
    rows, numbers = environment_descriptors.local_environments(images, elements, r_cut=r_cut, n_bins=n_bins)
    block = orm.ArrayData()
    block.set_array('fingerprint', configuration_fingerprints(configurations, indices))
    block.set_array('n_atoms', np.array([len(atoms) for atoms in images], dtype=np.int64))
    block.set_array('closest', np.array([_closest(atoms) for atoms in images], dtype=np.float64))
    block.set_array('numbers', numbers)
    block.set_array('rows', rows)
    block.base.attributes.set_many({'elements': elements, 'r_cut': float(r_cut), 'n_bins': int(n_bins),
                                    'format': ENVIRONMENTS_FORMAT})
    return block


def _usable(block: orm.ArrayData, r_cut: float, n_bins: int) -> bool:
    attributes = block.base.attributes
    return (attributes.get('format', None) == ENVIRONMENTS_FORMAT and attributes.get('r_cut', None) == float(r_cut)
            and attributes.get('n_bins', None) == int(n_bins))


def gather_environments(configurations: Configurations, blocks: dict, elements: list[int], r_cut: float,
                        n_bins: int) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, orm.ArrayData | None]:
    """The training environments in the order of ``configurations``: ((rows, atomic numbers), per configuration its
    closest distance, the block of the configurations no block described, or None when all were).

    ``blocks``: label -> block; configurations are matched by fingerprint, so blocks may come in any order and cover
    more than the set. The rows are those :func:`aiida_alml.selection.descriptors.local_environments` gives for the
    whole set with ``elements`` (bit for bit), but only the configurations without a block are described.
    """
    fingerprints = configuration_fingerprints(configurations)
    known = {}  # fingerprint -> (block label, configuration position in it)
    offsets = {}
    for label in sorted(blocks):
        block = blocks[label]
        if not _usable(block, r_cut, n_bins):
            continue
        offsets[label] = np.concatenate([[0], np.cumsum(block.get_array('n_atoms'))])
        for position, fingerprint in enumerate(block.get_array('fingerprint').tolist()):
            known.setdefault(fingerprint, (label, position))
    missing = sorted({index for index, fingerprint in enumerate(fingerprints.tolist()) if fingerprint not in known})
    new_block = None
    if missing:
        new_block = describe_configurations(configurations, missing, r_cut, n_bins)
        label = None  # the new block joins the lookup under a label no input can have
        offsets[label] = np.concatenate([[0], np.cumsum(new_block.get_array('n_atoms'))])
        for position, fingerprint in enumerate(new_block.get_array('fingerprint').tolist()):
            known[fingerprint] = (label, position)
    sources = {label: blocks[label] for label in offsets if label is not None}
    if new_block is not None:
        sources[None] = new_block
    # Each used block's rows are read once and laid out for the elements of this selection.
    arrays = {}
    for label in {known[fingerprint][0] for fingerprint in fingerprints.tolist()}:
        block = sources[label]
        arrays[label] = (
            environment_descriptors.widen_elements(block.get_array('rows'), block.base.attributes.get('elements'),
                                                   elements, n_bins),
            block.get_array('numbers'), block.get_array('closest'))
    rows, numbers, closest = [], [], []
    for fingerprint in fingerprints.tolist():
        label, position = known[fingerprint]
        block_rows, block_numbers, block_closest = arrays[label]
        atoms = slice(int(offsets[label][position]), int(offsets[label][position + 1]))
        rows.append(block_rows[atoms])
        numbers.append(block_numbers[atoms])
        closest.append(block_closest[position])
    if not rows:
        return environment_descriptors.local_environments([], elements, r_cut, n_bins), np.zeros(0), new_block
    return (np.concatenate(rows), np.concatenate(numbers)), np.array(closest, dtype=np.float64), new_block
