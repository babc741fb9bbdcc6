"""Calcfunctions that make sets of configurations: perturbed copies to start from, MD starting points, training sets."""

from __future__ import annotations

from aiida import orm
from aiida.engine import calcfunction

from aiida_alml.atoms.configurations import Configurations
from aiida_alml.data import ConfigurationSet

__all__ = ('perturb_structures', 'split_structures', 'merge_training_sets', 'training_labels_mismatch')


@calcfunction
def perturb_structures(structures: ConfigurationSet, parameters: orm.Dict) -> ConfigurationSet:
    """Rattled and strained copies of ``structures`` (``count``, ``rattle_std`` Å, ``max_strain``, ``seed``)."""
    from aiida_alml.atoms.perturb import perturbed_copies

    settings = parameters.get_dict()
    images = perturbed_copies(structures.to_ase(), **settings)
    metadata = [{'perturbed_from': index % len(structures), 'iteration': 0} for index in range(len(images))]
    return ConfigurationSet(Configurations.from_ase(images, metadata=metadata, include_info=False))


@calcfunction
def split_structures(structures: ConfigurationSet) -> dict:
    """One StructureData per configuration (starting points of the MD runs), named ``s0``, ``s1``, ..."""
    return {f's{index}': structures.get_structure(index) for index in range(len(structures))}


def training_labels_mismatch(first: ConfigurationSet, second: ConfigurationSet) -> str | None:
    """Why the labels of two sets may not share one training set, or None (as
    :func:`aiida_alml.label_settings.labels_mismatch` of their metadata, with the same message).

    Decided from the sets' attributes when they settle it, so that a growing training set is not read at every merge:
    when every configuration of both records label settings and all share one fingerprint, the settings are identical
    (the fingerprint is the SHA-256 of their canonical JSON); when none records any, there is nothing to compare.
    Otherwise (or for sets stored before ``unrecorded_label_settings`` existed) the metadata is read, not the arrays.
    """
    from aiida_alml.label_settings import label_fingerprint, labels_mismatch

    unrecorded = [node.base.attributes.get('unrecorded_label_settings', None) for node in (first, second)]
    if None not in unrecorded:
        fingerprints = set(first.label_fingerprints) | set(second.label_fingerprints)
        if sum(unrecorded) == 0 and len(fingerprints) == 1 and fingerprints != {label_fingerprint({})}:
            return None
        if unrecorded == [len(first), len(second)] and not fingerprints:
            return None
    return labels_mismatch(first.configuration_metadata(), second.configuration_metadata())


@calcfunction
def merge_training_sets(**sets: ConfigurationSet) -> ConfigurationSet:
    """The labelled sets in the order of their (sorted) keys as one training set; every configuration keeps its
    metadata.

    The result is a composed ConfigurationSet (:meth:`ConfigurationSet.compose`): it lists the flat sets the inputs
    are made of and copies no array, so a merge stores what the new labels add, not the whole training set again.
    Refuses sets whose labels were computed with different settings (see :mod:`aiida_alml.label_settings`).
    """
    keys = sorted(sets)
    for key in keys[1:]:
        problem = training_labels_mismatch(sets[keys[0]], sets[key])
        if problem:
            raise ValueError(f'refusing to merge {keys[0]} and {key}: {problem}')
    return ConfigurationSet.compose([sets[key] for key in keys])
