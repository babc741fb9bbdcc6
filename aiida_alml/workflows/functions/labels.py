"""Calcfunctions that make the labelled sets of ``alml.label``, whichever labeller made the labels: the merged set
(:func:`merge_labelled`, each configuration linked to its calculation), the record of what failed
(:func:`record_failures`), and labels made elsewhere declared to have known settings (:func:`declare_label_settings`).
"""

from __future__ import annotations

from aiida import orm
from aiida.engine import calcfunction

from aiida_alml.data.configurations import ConfigurationSet
from aiida_alml.label_settings import SETTINGS_KEY, inconsistent_settings, labels_mismatch, with_label_settings

__all__ = ('merge_labelled', 'record_failures', 'declare_label_settings', 'with_kpoints_distance')


def with_kpoints_distance(meta: dict, kpoints_distance: float | None) -> dict:
    """One labelled configuration's metadata with the k-point distance its fixed mesh came from added to its settings.

    The calculation saw only the mesh; the density rule is the work chain's, so the work chain records it (periodic
    configurations only: a molecule has no k-points).
    """
    settings = meta.get(SETTINGS_KEY)
    if kpoints_distance is None or not settings or 'k_grid' not in settings:
        return meta
    return with_label_settings(meta, {**settings, 'kpoints_distance': kpoints_distance})


@calcfunction
def merge_labelled(
    structures: ConfigurationSet, indices: orm.List, kpoints_distance: orm.Float | None = None, **labelled
) -> ConfigurationSet:
    """One ConfigurationSet of every labelled configuration, in input order, each knowing its source calculation.

    ``labelled`` maps ``set_<k>`` to the labelled ConfigurationSet of the k-th entry of ``indices`` (the input
    positions it covers). ``kpoints_distance``: the density the fixed FHI-aims k-meshes were derived from, added to
    the recorded settings of the periodic configurations. Refuses to merge labels computed with inconsistent settings.
    """
    from aiida_alml.atoms.configurations import Configurations

    distance = kpoints_distance.value if kpoints_distance is not None else None
    positions = indices.get_list()
    images, metadata, order = [], [], []
    for key in sorted(labelled, key=lambda name: int(name.split('_')[1])):
        node = labelled[key]
        covered = positions[int(key.split('_')[1])]
        creator = node.creator
        for atoms, source_index in zip(node.to_ase(), covered):
            meta = dict(atoms.info)
            meta.setdefault('source_calc_uuid', meta.get('labelled_by') or (creator.uuid if creator else None))
            original = structures.configurations.metadata[source_index]
            images.append(atoms)
            metadata.append(with_kpoints_distance({**original, **meta, 'input_index': source_index}, distance))
            order.append(source_index)
    problem = inconsistent_settings(metadata)
    if problem:
        raise ValueError(f'refusing to merge labels computed with inconsistent settings: {problem}')
    ranked = sorted(range(len(order)), key=order.__getitem__)
    merged = Configurations.from_ase([images[i] for i in ranked], metadata=[metadata[i] for i in ranked])
    return ConfigurationSet(merged)


@calcfunction
def record_failures(failures: orm.Dict) -> orm.Dict:
    """The ``failures`` of a labelling: input index -> the pk, process label, exit status and message of the process
    that did not label it, in the order of the input indices."""
    facts = failures.get_dict()
    return orm.Dict({key: facts[key] for key in sorted(facts, key=int)})


@calcfunction
def declare_label_settings(labelled: ConfigurationSet, settings: orm.Dict) -> ConfigurationSet:
    """The same labels, declared to have been computed with ``settings`` (recorded, with their fingerprint).

    For labels made elsewhere (an extxyz file, another database) that should join a training set whose labels
    record their settings: copy the settings of a configuration made here
    (``node.configurations.metadata[0]['label_settings']``) once you have made sure the other labels were computed
    the same way. The claim is in the provenance (this calcfunction). Configurations that already record other
    settings are refused.
    """
    declared = settings.get_dict()
    metadata = []
    for index, meta in enumerate(labelled.configurations.metadata):
        recorded = meta.get(SETTINGS_KEY)
        if recorded and recorded != declared:
            problem = labels_mismatch([{SETTINGS_KEY: recorded}], [{SETTINGS_KEY: declared}])
            raise ValueError(f'configuration {index} already records other label settings: {problem}')
        metadata.append(with_label_settings(meta, declared))
    return ConfigurationSet(labelled.configurations.replace(metadata=metadata))
