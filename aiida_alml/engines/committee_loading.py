"""Loading the members of a MACE committee and preparing them for the committee calculator.

* :func:`load_committee` reads model files in our format (hash-checked first), :func:`validate_committee` checks that
  the members can share one graph (element table, cutoff, dtype, heads);
* :func:`prepare_members` installs the exact re-formulations that cut each member's own cost, for the standard
  blocks (others are evaluated as MACE does, with a log message):

  - ``radial='table'``: the radial weight networks are replaced by quintic Hermite tables checked against them
    (``radial_table.RadialTable``);
  - ``convolution='fused'``: each atom's messages are summed by one batched matrix product per tensor-product path,
    without per-edge message tensors (``message_passing.FusedInteraction``);
  - ``product_basis='precomputed'``: the symmetric contractions' weights are folded into their coupling tensors once
    (``product_basis.PrecomputedContraction``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from aiida_alml.engines.mace_import import quiet_mace_import

with quiet_mace_import():  # without the notices MACE and e3nn print on import
    from mace.modules.models import MACE, ScaleShiftMACE

from aiida_alml.engines.message_passing import FusedInteraction, FusionError
from aiida_alml.engines.model_format import load_model, sha256_of_file
from aiida_alml.engines.product_basis import PrecomputedContraction, ProductBasisError
from aiida_alml.engines.radial_table import RadialTable, TabulationError

__all__ = ['ModelHashError', 'PreparedMembers', 'load_committee', 'prepare_members', 'validate_committee']

#: The calculator's logger: everything the committee reports goes to one logger.
LOGGER = logging.getLogger('aiida_alml.engines.committee')

#: Model classes whose ``forward`` is replicated by ``_MemberEnergy``.  Exact
#: types only: a subclass may override ``forward`` with different physics.
SUPPORTED_MODEL_TYPES = (MACE, ScaleShiftMACE)

_DTYPES = {'float64': torch.float64, 'float32': torch.float32}


class ModelHashError(ValueError):
    """A model file does not have the SHA-256 it was sent with (``alml.md`` parses this name: exit 310)."""


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def z_table(model: torch.nn.Module) -> list[int]:
    return [int(z) for z in model.atomic_numbers]


def validate_committee(models: Sequence[torch.nn.Module], names: Sequence[str] | None = None) -> None:
    """Check that the members can form one committee; raise ``ValueError`` if not.

    Members must be supported MACE models that agree on the element table,
    cutoff, dtype and heads, since the graph (neighbour list, one-hot node
    attributes) is shared between them.
    """
    if len(models) < 1:
        raise ValueError('A committee needs at least one model.')
    names = list(names) if names is not None else [f'member {i}' for i in range(len(models))]
    ref, ref_name = models[0], names[0]
    for model, name in zip(models, names):
        if type(model) not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f'{name}: unsupported model type {type(model).__name__}; '
                f'supported: {", ".join(t.__name__ for t in SUPPORTED_MODEL_TYPES)}.'
            )
        if hasattr(model, 'joint_embedding') or hasattr(model, 'embedding_readout'):
            raise ValueError(f'{name}: models with extra (charge/spin) embeddings are not supported.')
    for model, name in zip(models[1:], names[1:]):
        checks = (
            ('atomic numbers (z table)', z_table),
            ('r_max', lambda m: float(m.r_max)),
            ('dtype', model_dtype),
            ('heads', lambda m: list(getattr(m, 'heads', ['Default']))),
        )
        for what, get in checks:
            if get(model) != get(ref):
                raise ValueError(
                    f'Committee members disagree on {what}: {name} has {get(model)} '
                    f'but {ref_name} has {get(ref)}.'
                )


def load_committee(
    model_paths: Sequence[str | Path],
    device: str = 'cpu',
    default_dtype: str = 'float64',
    expected_sha256: Sequence[str] | None = None,
) -> list[torch.nn.Module]:
    """Load and validate MACE committee members from model files.

    :param model_paths: paths of model files in our format (:mod:`aiida_alml.engines.model_format`).
    :param device: torch device to load onto.
    :param default_dtype: ``'float64'`` or ``'float32'``; members are converted
        to it after checking that they all had the same dtype on disk.
    :param expected_sha256: optional hex digests, one per path; each file is
        hashed before it is read.
    :raises ModelHashError: on a hash mismatch (a ``ValueError``).
    :raises ValueError: on an empty list or inconsistent members.
    """
    paths = [Path(p) for p in model_paths]
    if len(paths) < 1:
        raise ValueError('A committee needs at least one model file.')
    if default_dtype not in _DTYPES:
        raise ValueError(f'default_dtype must be one of {sorted(_DTYPES)}, got {default_dtype!r}.')
    if expected_sha256 is not None:
        if len(expected_sha256) != len(paths):
            raise ValueError(f'Got {len(expected_sha256)} sha256 digests for {len(paths)} model files.')
        for path, expected in zip(paths, expected_sha256):
            actual = sha256_of_file(path)
            if actual != expected.lower():
                raise ModelHashError(f'sha256 mismatch for model file {path}: expected {expected}, got {actual}.')

    # Our format (config + weights, read with weights_only=True): a pickled model or payload is refused, not run.
    models = [load_model(path, device=device) for path in paths]
    validate_committee(models, [str(p) for p in paths])  # dtype is checked before conversion
    for model in models:
        prepare_for_inference(model.to(dtype=_DTYPES[default_dtype]))
    return models


def prepare_for_inference(model: torch.nn.Module) -> None:
    """Eval mode, no parameter gradients: only positions/strain are differentiated."""
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)


def _for_every_member(models: Sequence[torch.nn.Module], build, error_type: type[Exception], fallback: str):
    """``[build(model) for model in models]``, or None if one raises ``error_type``
    (then ``fallback`` is logged with the reason: that part is evaluated as MACE does)."""
    try:
        return [build(model) for model in models]
    except error_type as error:
        LOGGER.info('%s: %s', fallback, error)
        return None


def _fused_interactions(model: torch.nn.Module) -> torch.nn.ModuleList:
    return torch.nn.ModuleList(FusedInteraction(interaction) for interaction in model.interactions)


def _precomputed_contractions(model: torch.nn.Module) -> list[torch.nn.ModuleList]:
    """Per product block, its symmetric contractions as ``PrecomputedContraction``s."""
    blocks = []
    for product in model.products:
        contractions = getattr(product, 'symmetric_contractions', None)
        if contractions is None or not hasattr(contractions, 'contractions'):
            raise ProductBasisError(f'{type(product).__name__} has no MACE symmetric contraction')
        blocks.append(torch.nn.ModuleList(PrecomputedContraction(c) for c in contractions.contractions))
    return blocks


def _reformulate(copied: torch.nn.Module, tabulated: bool, interactions, contractions) -> torch.nn.Module:
    """Install the re-formulated parts in ``copied`` (a member's private copy).

    ``tabulated``: its interactions take their tensor-product weights as ``edge_feats``;
    ``interactions``: ``FusedInteraction``s wrapping its own blocks, or None;
    ``contractions``: per product block, ``PrecomputedContraction``s, or None.
    """
    if tabulated:
        for interaction in copied.interactions:
            interaction.conv_tp_weights = torch.nn.Identity()
    if interactions is not None:
        copied.interactions = interactions
    if contractions is not None:
        for product, replaced in zip(copied.products, contractions):
            product.symmetric_contractions.contractions = replaced
    return copied


@dataclass
class PreparedMembers:
    """The members as the calculator evaluates them, and which re-formulations they got."""

    evaluated: list[torch.nn.Module]  #: the members themselves, or private copies with re-formulated parts
    radial_tables: list[RadialTable] | None  #: per member, or None where the radial networks are evaluated
    radial: str  #: ``'table'`` or ``'mlp'``
    convolution: str  #: ``'fused'`` or ``'edges'``
    product_basis: str  #: ``'precomputed'`` or ``'mace'``


def prepare_members(models: Sequence[torch.nn.Module], radial: str, convolution: str,
                    product_basis: str) -> PreparedMembers:
    """Install the re-formulations asked for where every member supports them (see the module doc).

    A re-formulation that one member does not support is dropped for all, with a log message; the models themselves
    are left untouched (the fused convolution and precomputed product basis are built on private copies).
    """
    radial_tables = None
    if radial == 'table':
        radial_tables = _for_every_member(
            models, RadialTable.build, TabulationError, 'radial weights evaluated by their networks'
        )
    # The other re-formulations wrap sub-modules, so they are built on private copies of the members.
    copies = [copy.deepcopy(m) for m in models] if (convolution, product_basis) != ('edges', 'mace') else None
    interactions = contractions = None
    if convolution == 'fused':
        interactions = _for_every_member(
            copies, _fused_interactions, FusionError, 'convolution evaluated per edge, as MACE does'
        )
    if product_basis == 'precomputed':
        contractions = _for_every_member(
            copies, _precomputed_contractions, ProductBasisError, 'product basis evaluated as MACE does'
        )
    radial = 'mlp' if radial_tables is None else 'table'
    convolution = 'edges' if interactions is None else 'fused'
    product_basis = 'mace' if contractions is None else 'precomputed'
    evaluated = list(models)
    if (radial, convolution, product_basis) != ('mlp', 'edges', 'mace'):
        copies = copies or [copy.deepcopy(m) for m in models]
        evaluated = [
            _reformulate(
                member,
                radial == 'table',
                None if interactions is None else interactions[k],
                None if contractions is None else contractions[k],
            )
            for k, member in enumerate(copies)
        ]
    return PreparedMembers(evaluated, radial_tables, radial, convolution, product_basis)
