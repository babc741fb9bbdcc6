"""Which settings made a label, and whether two sets of labels may share one training set.

Every labeller records, in each labelled configuration's metadata, ``label_settings`` (a JSON dict of what decides
the numbers: the program and its code, the calculator or the FHI-aims control keywords, k-points, species-file
contents) and ``label_fingerprint`` (SHA-256 of the canonical JSON of those settings). Pure Python, no AiiDA: the
parsers, the label work chain and the training-set merges share it.

Comparison rules (:func:`labels_mismatch`, :func:`inconsistent_settings`):

* every recorded setting must be equal, nested dicts compared key by key so that the message names the key;
* ``species_hashes`` (species file name -> SHA-256 of its content) are compared per file: sets with different
  elements are comparable as long as every element they share used the same file;
* k-points (``k_grid``, ``k_offset``, ``kpoints_distance``) are compared between periodic labels only (a molecule
  has none). The mesh depends on the cell: when both labels record the ``kpoints_distance`` the mesh was derived
  from, the distance is compared and the meshes may differ (e.g. a supercell and its primitive cell); labels
  computed with an explicit mesh only are compared by the mesh itself;
* a configuration with no recorded settings (labels from elsewhere, e.g. an extxyz file) is *unknown*. Sets in which
  no configuration records settings are not compared (nothing to compare); unknown labels are never mixed with
  recorded ones -- declare their settings first (``aiida_alml.workflows.functions.declare_label_settings``) or label
  them with ``alml.label``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

__all__ = ('SETTINGS_KEY', 'FINGERPRINT_KEY', 'label_fingerprint', 'with_label_settings', 'labels_mismatch',
           'inconsistent_settings')

#: Metadata key of the settings dict and of its fingerprint.
SETTINGS_KEY = 'label_settings'
FINGERPRINT_KEY = 'label_fingerprint'

#: k-point settings: recorded for periodic cells only, and the mesh depends on the cell (see _difference).
_KPOINTS = ('k_grid', 'k_offset', 'kpoints_distance')
_SPECIES = 'species_hashes'


def label_fingerprint(settings: Mapping) -> str:
    """SHA-256 (hex) of the canonical JSON of ``settings``: keys sorted, no whitespace, species hashes included."""
    text = json.dumps(settings, sort_keys=True, separators=(',', ':'), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def with_label_settings(metadata: Mapping, settings: Mapping) -> dict:
    """A copy of one configuration's ``metadata`` carrying ``settings`` and their fingerprint (replacing any before)."""
    settings = json.loads(json.dumps(dict(settings), sort_keys=True))  # plain JSON types, a copy
    return {**metadata, SETTINGS_KEY: settings, FINGERPRINT_KEY: label_fingerprint(settings)}


def labels_mismatch(first_metadata: Sequence[Mapping], second_metadata: Sequence[Mapping]) -> str | None:
    """Why the labels of two sets may not be merged into one training set, or None when they may.

    ``first_metadata`` and ``second_metadata`` are the per-configuration metadata of the two sets (e.g.
    ``node.configurations.metadata``). Each set is also checked on its own. The message names both configurations, the
    setting and its two values, e.g. ``configuration 0 of the second set was labelled with
    calculator.class='ase.calculators.lj:LennardJones' but configuration 0 of the first set with
    calculator.class='ase.calculators.emt:EMT'``.
    """
    entries = [(f'configuration {i} of the first set', meta) for i, meta in enumerate(first_metadata)]
    entries += [(f'configuration {i} of the second set', meta) for i, meta in enumerate(second_metadata)]
    return _first_problem(entries)


def inconsistent_settings(metadata: Sequence[Mapping]) -> str | None:
    """Why labels with these metadata may not share one training set, or None when they may (one set's check)."""
    return _first_problem([(f'configuration {i}', meta) for i, meta in enumerate(metadata)])


# ---------------------------------------------------------------------- internals
def _first_problem(entries: list[tuple[str, Mapping]]) -> str | None:
    known: tuple[str, dict] | None = None
    unknown: str | None = None
    species: dict[str, tuple[str, str]] = {}  # file name -> (digest, where first seen)
    seen: set[str] = set()
    for where, meta in entries:
        settings = meta.get(SETTINGS_KEY)
        if not settings:
            unknown = unknown or where
            continue
        # Identical settings are checked once: training sets hold thousands of configurations with the same few.
        canonical = json.dumps(settings, sort_keys=True)
        if canonical in seen:
            continue
        seen.add(canonical)
        settings = dict(settings)
        for name, digest in sorted((settings.pop(_SPECIES, None) or {}).items()):
            first = species.setdefault(name, (digest, where))
            if first[0] != digest:
                return (
                    f'{where} used a different species file {name} than {first[1]} '
                    f'(content SHA-256 {str(digest)[:12]}... vs {str(first[0])[:12]}...)'
                )
        if known is None:
            known = (where, settings)
            continue
        difference = _difference(known[1], settings)
        if difference is not None:
            key, reference_value, value = difference
            return f'{where} was labelled with {key}={value!r} but {known[0]} with {key}={reference_value!r}'
    if known is not None and unknown is not None:
        return (
            f'{unknown} has no recorded label settings (labels made elsewhere, e.g. read from an extxyz file) but '
            f'{known[0]} was labelled with {_summary(known[1])}; unknown labels are not mixed with recorded ones: '
            'label them with alml.label or declare their settings with declare_label_settings'
        )
    return None


def _difference(reference: Mapping, other: Mapping, prefix: str = '') -> tuple[str, object, object] | None:
    """(dotted key, reference value, other value) of the first setting that differs, or None."""
    keys = set(reference) | set(other)
    if not prefix:
        if 'k_grid' not in reference or 'k_grid' not in other:
            keys -= set(_KPOINTS)  # a molecule has no k-points: nothing to compare with a crystal's
        elif 'kpoints_distance' in reference and 'kpoints_distance' in other:
            keys -= {'k_grid', 'k_offset'}  # the same density rule; the mesh follows from each cell
    for key in sorted(keys):
        first, second = reference.get(key), other.get(key)
        if isinstance(first, Mapping) and isinstance(second, Mapping):
            nested = _difference(first, second, f'{prefix}{key}.')
            if nested is not None:
                return nested
        elif first != second:
            return f'{prefix}{key}', first, second
    return None


def _summary(settings: Mapping) -> str:
    parts = [f'{key}={settings[key]!r}' for key in ('labeller', 'code') if key in settings]
    return ', '.join(parts) or 'recorded settings'
