"""Calcfunctions that make sets of configurations: perturbed copies to start from, MD starting points, training sets."""

from __future__ import annotations

from aiida import orm
from aiida.engine import calcfunction

from aiida_alml.atoms.configurations import Configurations
from aiida_alml.data import ConfigurationSet

__all__ = ('perturb_structures', 'split_structures', 'merge_training_sets')


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


@calcfunction
def merge_training_sets(**sets: ConfigurationSet) -> ConfigurationSet:
    """Concatenate labelled sets in the order of their (sorted) keys; every configuration keeps its metadata.

    Refuses sets whose labels were computed with different settings (see :mod:`aiida_alml.label_settings`).
    """
    from aiida_alml.label_settings import labels_mismatch

    keys = sorted(sets)
    for key in keys[1:]:
        problem = labels_mismatch(sets[keys[0]].configurations.metadata, sets[key].configurations.metadata)
        if problem:
            raise ValueError(f'refusing to merge {keys[0]} and {key}: {problem}')
    return ConfigurationSet(Configurations.concatenate([sets[key].configurations for key in keys]))
