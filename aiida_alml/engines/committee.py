"""Batched committee inference for MACE models.

``CommitteeCalculator`` is an ASE calculator that evaluates a committee of N
MACE models on one structure while doing the model-independent work once:

* the neighbour list, one-hot node attributes, edge shifts and each atom's
  incoming-edge layout are built once per structure (directly with
  ``mace.data.neighborhood.get_neighborhood``, without the
  ``AtomicData``/``Batch`` machinery and its per-member cloning);
* all members are evaluated in one pass and differentiated with a *single*
  autograd call: every member gets its own copy of the positions (and of the
  strain/displacement), so the gradient of the summed member energies w.r.t.
  those copies is exactly the stack of per-member forces (and virials).

Three exact re-formulations cut each member's own cost, for the standard
blocks (others are evaluated as MACE does, with a log message):

* ``radial='table'``: the radial weight networks are replaced by quintic
  Hermite tables checked against them (``radial_table.RadialTable``);
* ``convolution='fused'``: each atom's messages are summed by one batched
  matrix product per tensor-product path, without per-edge message tensors
  (``message_passing.FusedInteraction``);
* ``product_basis='precomputed'``: the symmetric contractions' weights are
  folded into their coupling tensors once (``product_basis.PrecomputedContraction``).

Two evaluation strategies give identical results (to round-off):

``"vmap"``
    The members' parameters are stacked with ``torch.func.stack_module_state``
    and one member forward is run under ``torch.vmap`` + ``functional_call``.
    Each tensor op is dispatched once for all members, which pays off when the
    cost is dominated by per-op overhead (small cells / small models).
``"sequential"``
    The members' forward passes run back to back on the shared graph, followed
    by the single backward.  Cheaper once the cost is dominated by arithmetic
    (larger cells / models), because batched kernels under vmap are less
    efficient than plain ones on CPU.

Which one is faster depends on model size, structure size, thread count and
hardware (on a 2-core CPU vmap only wins for very small models and cells), so
``"auto"`` times both on the first real calls of each structure-size class and
keeps the faster (see ``_StrategyTimer``); it uses ``"sequential"`` whenever
the members cannot be stacked.

The energy expression replicates ``MACE.forward`` / ``ScaleShiftMACE.forward``
of mace-torch 0.3.x for the standard (non-LAMMPS, no extra embeddings) case.
It calls the model's own sub-modules, so it only depends on the sub-module
interfaces; equality with the stock ``MACECalculator`` is covered by tests.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import logging
import math
import numbers
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.data import chemical_symbols
from ase.stress import full_3x3_to_voigt_6_stress
from mace.data.neighborhood import get_neighborhood
from mace.modules.models import MACE, ScaleShiftMACE
from torch.func import functional_call, stack_module_state
from torch.overrides import TorchFunctionMode

from aiida_alml.engines.message_passing import FusedInteraction, FusionError, neighbour_layout
from aiida_alml.engines.model_format import load_model, sha256_of_file
from aiida_alml.engines.product_basis import PrecomputedContraction, ProductBasisError
from aiida_alml.engines.radial_table import RadialTable, TabulationError

__all__ = ['CommitteeCalculator', 'ModelHashError', 'keep_large_allocations', 'load_committee', 'validate_committee']

LOGGER = logging.getLogger(__name__)

#: Model classes whose ``forward`` is replicated by ``_MemberEnergy``.  Exact
#: types only: a subclass may override ``forward`` with different physics.
SUPPORTED_MODEL_TYPES = (MACE, ScaleShiftMACE)

_DTYPES = {'float64': torch.float64, 'float32': torch.float32}

#: ``strategy='auto'`` does not even try vmap above this many edges x members:
#: vmap materialises every edge tensor for all members at once (GBs for big
#: cells and models).  With the fused convolution no per-edge message tensors
#: exist, and on 2 CPU threads vmap was still the faster at 9,000 edges x 4.
AUTO_VMAP_MAX_EDGE_MEMBERS = 1 << 17


# --------------------------------------------------------------------------- loading


class ModelHashError(ValueError):
    """A model file does not have the SHA-256 it was sent with (``alml.md`` parses this name: exit 310)."""


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def _z_table(model: torch.nn.Module) -> list[int]:
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
            ('atomic numbers (z table)', _z_table),
            ('r_max', lambda m: float(m.r_max)),
            ('dtype', _model_dtype),
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
        _prepare_for_inference(model.to(dtype=_DTYPES[default_dtype]))
    return models


def _prepare_for_inference(model: torch.nn.Module) -> None:
    """Eval mode, no parameter gradients: only positions/strain are differentiated."""
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)


#: Plain float attributes that MACE blocks only use as arithmetic operands (the
#: message normalisation ``/ self.avg_num_neighbors``).  They depend on the
#: training split, so members usually differ; for vmap they become per-member
#: buffers of the template instead of blocking stacking.
PER_MEMBER_SCALARS = ('avg_num_neighbors',)


def _per_member_scalars(module: torch.nn.Module) -> dict[str, float]:
    """``{'<submodule>.<attr>': value}`` for the ``PER_MEMBER_SCALARS`` found in ``module``."""
    found = {}
    for name, sub in module.named_modules():
        for attr in PER_MEMBER_SCALARS:
            value = vars(sub).get(attr)
            if isinstance(value, numbers.Real):
                found[f'{name}.{attr}' if name else attr] = float(value)
    return found


def _structure_signature(model: torch.nn.Module) -> list:
    """Everything ``functional_call`` does *not* swap: module types, plain attributes.

    Members are only stackable for vmap if these agree, since the template
    member supplies them for all members (``PER_MEMBER_SCALARS`` excepted).
    """
    plain = (numbers.Number, str, bool, tuple, list, torch.dtype, type(None))
    signature = []
    for name, module in model.named_modules():
        attrs = {
            k: v
            for k, v in vars(module).items()
            if not k.startswith('_') and k not in PER_MEMBER_SCALARS and isinstance(v, plain)
        }
        signature.append((name, type(module).__name__, repr(sorted(attrs.items()))))
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        signature.append((name, tuple(tensor.shape), tensor.dtype))
    return signature


def _stack_members(members: Sequence[torch.nn.Module]) -> tuple[torch.nn.Module, dict, dict]:
    """Template module plus stacked parameters/buffers for ``functional_call`` under vmap."""
    params, buffers = stack_module_state(members)
    template = copy.deepcopy(members[0])
    reference = next(iter(params.values()))
    for key in _per_member_scalars(template):
        module_name, _, attr = key.rpartition('.')
        module = template.get_submodule(module_name)
        delattr(module, attr)  # the plain float ...
        module.register_buffer(attr, torch.zeros((), dtype=reference.dtype, device=reference.device))  # ... now swappable
        values = [_per_member_scalars(member)[key] for member in members]
        buffers[key] = torch.tensor(values, dtype=reference.dtype, device=reference.device)
    return template, params, buffers


def keep_large_allocations(max_bytes: int = 1 << 30) -> bool:
    """Let glibc malloc serve (and keep) blocks up to ``max_bytes`` from the heap.

    By default glibc ``mmap``s every block above 32 MiB and unmaps it on free,
    so each MD step page-faults its large activations in again (system time).
    The member-batched tensors of the vmap strategy cross that limit much
    earlier than single-model ones.  This is process-wide (the heap then keeps
    its peak size), hence opt-in: call it once in a dedicated MD process.
    Returns False where it does not apply (not glibc).
    """
    libc_name = ctypes.util.find_library('c')
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name)
    if not hasattr(libc, 'mallopt'):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, max_bytes)) and bool(libc.mallopt(m_trim_threshold, 2 * max_bytes))


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


# --------------------------------------------------------------------------- model


class _MemberEnergy(torch.nn.Module):
    """Per-atom energies of one MACE member from precomputed edge geometry.

    Mirrors ``MACE.forward`` / ``ScaleShiftMACE.forward`` (single graph, one
    head, no LAMMPS), but takes edge vectors as input so that geometry and
    differentiation are handled by the committee code.
    """

    def __init__(self, model: torch.nn.Module, head: int):
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, node_attrs, edge_index, vectors, lengths, radial_weights=None, neighbours=None) -> torch.Tensor:
        """``radial_weights``: per interaction, the tensor-product weights of every edge
        (cutoff included) from a ``RadialTable``; the member's ``conv_tp_weights`` are
        then identities.  ``neighbours``: the ``neighbour_layout`` that
        ``FusedInteraction`` blocks take (see ``_reformulate``)."""
        model = self.model
        num_atoms = node_attrs.shape[0]
        node_heads = torch.full((num_atoms,), self.head, dtype=torch.long, device=node_attrs.device)
        node_e0 = model.atomic_energies_fn(node_attrs)[:, self.head]
        node_feats = model.node_embedding(node_attrs)
        edge_attrs = model.spherical_harmonics(vectors)
        if radial_weights is None:
            edge_feats, cutoff = model.radial_embedding(lengths, node_attrs, edge_index, model.atomic_numbers)
            edge_feats = [edge_feats] * len(model.interactions)
        else:
            edge_feats, cutoff = radial_weights, None
        node_es = []
        if hasattr(model, 'pair_repulsion'):
            node_es.append(model.pair_repulsion_fn(lengths, node_attrs, edge_index, model.atomic_numbers))
        feats = []
        for i, (interaction, product) in enumerate(zip(model.interactions, model.products)):
            inputs = dict(
                node_attrs=node_attrs, node_feats=node_feats, edge_attrs=edge_attrs,
                edge_feats=edge_feats[i], edge_index=edge_index, cutoff=cutoff,
            )  # fmt: skip
            if isinstance(interaction, FusedInteraction):
                node_feats, sc = interaction(**inputs, neighbours=neighbours)
            else:
                node_feats, sc = interaction(**inputs, first_layer=(i == 0), lammps_class=None, lammps_natoms=(0, 0))
            node_feats = product(node_feats=node_feats, sc=sc, node_attrs=node_attrs)
            feats.append(node_feats)
        for i, readout in enumerate(model.readouts):
            feat = feats[-1] if len(model.readouts) == 1 else feats[i]
            node_es.append(readout(feat, node_heads)[:, self.head])
        node_inter = torch.stack(node_es, dim=0).sum(dim=0)
        if isinstance(model, ScaleShiftMACE):
            node_inter = model.scale_shift(node_inter, node_heads)
        return node_e0 + node_inter


class _VmapFriendlyScatter(TorchFunctionMode):
    """Make ``mace.tools.scatter.scatter_sum`` vmap-able and fast under vmap.

    ``scatter_sum`` accumulates the member-batched messages into a freshly
    allocated, un-batched ``zeros`` tensor with ``scatter_add_``, which vmap
    rejects (in-place write of batched data into an un-batched tensor).  Its
    callers use the return value, so an out-of-place op is equivalent.  The
    index is a 1-D index broadcast (stride 0) along the other dimensions; in
    that case ``index_add`` with the 1-D index gives the same sums and is much
    faster under vmap than ``scatter_add``, whose batching rule materialises the
    broadcast index for every member (and whose backward is a ``gather`` with it).

    A function mode is thread-local and scoped, unlike patching ``mace`` globals.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.scatter_add_:
            out, dim, index, src = _scatter_args(*args, **kwargs)
            index_1d = _broadcast_source(index, dim)
            if index_1d is not None:
                return out.index_add(dim, index_1d, src)
            return out.scatter_add(dim, index, src)
        return func(*args, **kwargs)


def _scatter_args(self, dim, index, src):
    return self, dim, index, src


def _broadcast_source(index: torch.Tensor, dim: int) -> torch.Tensor | None:
    """The 1-D index along ``dim`` if ``index`` is only broadcast (stride 0) elsewhere."""
    dim = dim % index.dim()
    if any(stride != 0 for d, stride in enumerate(index.stride()) if d != dim and index.shape[d] > 1):
        return None
    return index[tuple(slice(None) if d == dim else 0 for d in range(index.dim()))]


class _StrategyTimer:
    """Pick ``'sequential'`` or ``'vmap'`` by timing real calls, per size class.

    A size class is the number of edges rounded down to a power of two.  Each
    new class runs ``WARMUP + TIMED`` calls with each strategy (the first calls
    pay one-off TorchScript/allocator costs and are not counted), alternating,
    and then keeps vmap only if its best time is below ``VMAP_MARGIN`` times
    sequential's: best-of-few is robust to other processes taking the CPU; the margin
    keeps the leaner, always-applicable sequential strategy on near ties.
    Both strategies give the same results up to round-off, so the calibration
    calls are ordinary evaluations.
    """

    WARMUP = 1
    TIMED = 3
    VMAP_MARGIN = 0.9
    STRATEGIES = ('sequential', 'vmap')

    def __init__(self):
        self._times: dict[int, dict[str, list[float]]] = {}
        self.choice: dict[int, str] = {}

    @staticmethod
    def size_class(num_edges: int) -> int:
        return int(math.log2(max(num_edges, 1)))

    def pick(self, num_edges: int) -> str:
        size = self.size_class(num_edges)
        if size in self.choice:
            return self.choice[size]
        times = self._times.setdefault(size, {s: [] for s in self.STRATEGIES})
        # Alternate (fewest samples first) so that load changes hit both alike.
        return min(self.STRATEGIES, key=lambda s: len(times[s]))

    def calibrating(self, num_edges: int) -> bool:
        size = self.size_class(num_edges)
        return size in self._times and size not in self.choice

    def record(self, num_edges: int, strategy: str, seconds: float) -> None:
        size = self.size_class(num_edges)
        times = self._times[size]
        times[strategy].append(seconds)
        if all(len(t) >= self.WARMUP + self.TIMED for t in times.values()):
            best = {s: min(t[self.WARMUP :]) for s, t in times.items()}
            self.choice[size] = 'vmap' if best['vmap'] < self.VMAP_MARGIN * best['sequential'] else 'sequential'
            LOGGER.info('committee strategy for ~2^%d edges: %s (best s: %s)', size, self.choice[size], best)


# --------------------------------------------------------------------------- calculator


class CommitteeCalculator(Calculator):
    """ASE calculator evaluating a MACE committee with one graph per structure.

    ``energy``/``free_energy``/``forces``/``stress`` are committee means.  Extra
    results use the stock ``MACECalculator`` names where it has them:
    ``energy_comm`` (N,), ``forces_comm`` (N, n_atoms, 3), ``stress_comm``
    (N, 6, Voigt), ``energy_var``, ``forces_var`` (n_atoms, 3), ``stress_var``
    (6,), ``energies`` (n_atoms,: mean per-atom energies, ASE's meaning of the
    key) and ``node_energy_comm`` (N, n_atoms).  ``force_sigma`` (n_atoms,) is
    the per-atom force uncertainty sqrt(sum_xyz var_members(F)).  Variances
    use ddof=0 (population), like the stock ``torch.var(unbiased=False)``.
    Stress is only computed for fully periodic cells.
    """

    implemented_properties = [
        'energy', 'free_energy', 'forces', 'stress', 'energies',
        'energy_comm', 'forces_comm', 'stress_comm', 'node_energy_comm',
        'energy_var', 'forces_var', 'stress_var', 'force_sigma',
    ]  # fmt: skip

    def __init__(
        self,
        model_paths: Sequence[str | Path] | None = None,
        models: Sequence[torch.nn.Module] | None = None,
        device: str = 'cpu',
        default_dtype: str = 'float64',
        expected_sha256: Sequence[str] | None = None,
        strategy: str = 'auto',
        head: str | None = None,
        radial: str = 'table',
        convolution: str = 'fused',
        product_basis: str = 'precomputed',
        **kwargs,
    ):
        """
        :param model_paths: model files (see ``load_committee``), or
        :param models: already loaded MACE modules (validated and set to eval
            mode without parameter gradients, like the stock calculator does;
            their dtype is kept).
        :param strategy: ``'auto'``, ``'vmap'`` or ``'sequential'`` (see module doc).
        :param head: head name for multi-head models (default: the only head,
            else the one called ``default``).
        :param radial: ``'table'`` evaluates the radial weight networks from
            quintic Hermite tables checked against them (``RadialTable``; falls back
            to ``'mlp'``, with a log message, for models it cannot tabulate);
            ``'mlp'`` runs the networks on every edge, as MACE does.
        :param convolution: ``'fused'`` sums each atom's messages in one batched
            matrix product per tensor-product path (``FusedInteraction``; falls
            back to ``'edges'``, with a log message, for unsupported blocks);
            ``'edges'`` builds every edge's message and sums them, as MACE does.
        :param product_basis: ``'precomputed'`` folds the symmetric contractions'
            weights into their coupling tensors once (``PrecomputedContraction``;
            falls back to ``'mace'``, with a log message); ``'mace'`` contracts them
            for every atom at every call, as MACE does.
        """
        super().__init__(**kwargs)
        if (model_paths is None) == (models is None):
            raise ValueError("Give exactly one of 'model_paths' or 'models'.")
        if strategy not in ('auto', 'vmap', 'sequential'):
            raise ValueError(f"strategy must be 'auto', 'vmap' or 'sequential', got {strategy!r}.")
        if radial not in ('table', 'mlp'):
            raise ValueError(f"radial must be 'table' or 'mlp', got {radial!r}.")
        if convolution not in ('fused', 'edges'):
            raise ValueError(f"convolution must be 'fused' or 'edges', got {convolution!r}.")
        if product_basis not in ('precomputed', 'mace'):
            raise ValueError(f"product_basis must be 'precomputed' or 'mace', got {product_basis!r}.")
        if model_paths is not None:
            models = load_committee(model_paths, device, default_dtype, expected_sha256)
        else:
            models = list(models)
            validate_committee(models)
            for model in models:
                _prepare_for_inference(model.to(device))  # the graph tensors are made on `device`
        self.models = models
        self.num_models = len(models)
        self.device = torch.device(device)
        self.dtype = _model_dtype(models[0])
        self.r_max = float(models[0].r_max)
        self.z_table = _z_table(models[0])
        self._z_to_index = np.full(max(self.z_table) + 1, -1, dtype=np.int64)
        self._z_to_index[self.z_table] = np.arange(len(self.z_table))
        self.radial_tables = None
        if radial == 'table':
            self.radial_tables = _for_every_member(
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
        self.radial = 'mlp' if self.radial_tables is None else 'table'
        self.convolution = 'edges' if interactions is None else 'fused'
        self.product_basis = 'mace' if contractions is None else 'precomputed'
        evaluated = models
        if (self.radial, self.convolution, self.product_basis) != ('mlp', 'edges', 'mace'):
            copies = copies or [copy.deepcopy(m) for m in models]
            evaluated = [
                _reformulate(
                    member,
                    self.radial == 'table',
                    None if interactions is None else interactions[k],
                    None if contractions is None else contractions[k],
                )
                for k, member in enumerate(copies)
            ]
        self._members = [_MemberEnergy(m, self._head_index(m, head)) for m in evaluated]

        signature = _structure_signature(evaluated[0])
        self.can_vmap = all(_structure_signature(m) == signature for m in evaluated[1:])
        if strategy == 'vmap' and not self.can_vmap:
            raise ValueError(
                "strategy='vmap' needs members with identical architecture and hyper-parameters; "
                'use strategy="sequential" or "auto".'
            )
        self.strategy = strategy
        self.last_strategy: str | None = None  # strategy of the latest evaluation
        self._timer = _StrategyTimer()
        if self.can_vmap:
            self._template, self._params, self._buffers = _stack_members(self._members)

    def describe(self) -> dict:
        """How this committee is evaluated, for logs and provenance (JSON-serialisable)."""
        return {
            'members': self.num_models,
            'radial': self.radial,
            'radial_table_max_error': (
                None if self.radial_tables is None else max(t.max_error for t in self.radial_tables)
            ),
            'convolution': self.convolution,
            'product_basis': self.product_basis,
            'strategy': self.strategy,
            'last_strategy': self.last_strategy,
        }

    @staticmethod
    def _head_index(model: torch.nn.Module, head: str | None) -> int:
        heads = list(getattr(model, 'heads', ['Default']))
        if head is None:
            if len(heads) == 1:
                return 0
            lowered = [h.lower() for h in heads]
            if 'default' not in lowered:
                raise ValueError(f'Multi-head model: pass head=..., available heads: {heads}.')
            return lowered.index('default')
        if head not in heads:
            raise ValueError(f'Head {head!r} not in the model heads {heads}.')
        return heads.index(head)

    # ----------------------------------------------------------------- graph

    def _check_elements(self, numbers_: np.ndarray) -> None:
        unknown = sorted(set(int(z) for z in numbers_) - set(self.z_table))
        if unknown:
            listed = ', '.join(f'{chemical_symbols[z]} (Z={z})' for z in unknown)
            known = ', '.join(chemical_symbols[z] for z in self.z_table)
            raise ValueError(f'Structure contains elements the committee was not trained on: {listed}; models know {known}.')

    def _build_graph(self, atoms: Atoms) -> dict[str, torch.Tensor]:
        """Neighbour list and node attributes, shared by all members."""
        self._check_elements(atoms.numbers)
        positions = np.asarray(atoms.positions, dtype=np.float64)
        # get_neighborhood overwrites non-periodic cell vectors in place: pass a copy.
        edge_index, _, unit_shifts, cell = get_neighborhood(
            positions, cutoff=self.r_max, pbc=tuple(bool(p) for p in atoms.pbc), cell=np.array(atoms.cell, dtype=np.float64)
        )
        as_float = dict(dtype=self.dtype, device=self.device)
        index = torch.as_tensor(self._z_to_index[atoms.numbers], device=self.device)
        edge_index = torch.as_tensor(edge_index, dtype=torch.long, device=self.device)
        return {
            'neighbours': neighbour_layout(edge_index, len(atoms)) if self.convolution == 'fused' else None,
            'positions': torch.as_tensor(positions, **as_float),
            'cell': torch.as_tensor(cell, **as_float),
            'edge_index': edge_index,
            'unit_shifts': torch.as_tensor(unit_shifts, **as_float),
            'node_attrs': torch.nn.functional.one_hot(index, len(self.z_table)).to(**as_float),
        }

    @staticmethod
    def _edges(graph: dict, positions: torch.Tensor, strain: torch.Tensor | None):
        """Edge vectors (N, E, 3) and lengths (N, E, 1) of every member, optionally under a symmetric strain.

        ``positions`` (N, n_atoms, 3) and ``strain`` (N, 3, 3) hold one copy per
        member.  Same construction as ``mace.modules.utils.get_symmetric_displacement``:
        the stress is the derivative of the energy w.r.t. the strain.
        """
        cell = graph['cell']
        if strain is not None:
            positions = positions + positions @ strain
            cell = cell + cell @ strain
        sender, receiver = graph['edge_index']
        vectors = positions[:, receiver] - positions[:, sender] + graph['unit_shifts'] @ cell
        return vectors, torch.linalg.vector_norm(vectors, dim=-1, keepdim=True)

    def _radial_weights(self, lengths: torch.Tensor) -> list[tuple[torch.Tensor, ...]] | None:
        """Per member, per interaction: tabulated tensor-product weights of every edge."""
        if self.radial_tables is None:
            return None
        return [tuple(table.split(table.lookup(lengths[i, :, 0]))) for i, table in enumerate(self.radial_tables)]

    # ----------------------------------------------------------------- evaluation

    def _pick_strategy(self, num_edges: int) -> str:
        if self.strategy != 'auto':
            return self.strategy
        if not self.can_vmap or num_edges * self.num_models > AUTO_VMAP_MAX_EDGE_MEMBERS:
            return 'sequential'
        return self._timer.pick(num_edges)

    def _node_energies(self, graph: dict, positions: torch.Tensor, strain: torch.Tensor | None, strategy: str):
        """(N, n_atoms) per-atom energies; ``positions`` (N, n_atoms, 3), ``strain`` (N, 3, 3)."""
        node_attrs, edge_index, neighbours = graph['node_attrs'], graph['edge_index'], graph['neighbours']
        vectors, lengths = self._edges(graph, positions, strain)
        weights = self._radial_weights(lengths)
        if strategy == 'sequential':
            return torch.stack([
                member(node_attrs, edge_index, vectors[i], lengths[i], weights and weights[i], neighbours)
                for i, member in enumerate(self._members)
            ])  # fmt: skip

        def member_energy(params, buffers, member_vectors, member_lengths, member_weights):
            inputs = (node_attrs, edge_index, member_vectors, member_lengths, member_weights, neighbours)
            return functional_call(self._template, (params, buffers), inputs)

        stacked = None if weights is None else tuple(torch.stack(w) for w in zip(*weights))
        in_dims = (0, 0, 0, 0, None if stacked is None else 0)
        with _VmapFriendlyScatter():
            batched = torch.vmap(member_energy, in_dims=in_dims)
            return batched(self._params, self._buffers, vectors, lengths, stacked)

    def evaluate(self, atoms: Atoms, compute_stress: bool) -> dict[str, np.ndarray]:
        """Per-member node energies, forces and (optionally) stresses as numpy arrays."""
        start = time.perf_counter()
        graph = self._build_graph(atoms)
        num_edges = graph['edge_index'].shape[1]
        strategy = self._pick_strategy(num_edges)
        n = self.num_models
        # enable_grad: forces are gradients, even if the caller runs under no_grad.
        with torch.enable_grad():
            # One positions/strain copy per member: d(sum_i E_i)/d(copy_i) = dE_i/dx.
            positions = graph['positions'].expand(n, -1, -1).clone().requires_grad_(True)
            inputs = [positions]
            strain = None
            if compute_stress:
                displacement = torch.zeros((n, 3, 3), dtype=self.dtype, device=self.device, requires_grad=True)
                strain = 0.5 * (displacement + displacement.transpose(-1, -2))
                inputs.append(displacement)
            node_energies = self._node_energies(graph, positions, strain, strategy)
            # allow_unused: a structure without edges has position-independent energy.
            grads = torch.autograd.grad(node_energies.sum(), inputs, allow_unused=True)
        grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]
        out = {
            'node_energies': node_energies.detach().cpu().numpy(),
            'forces': -grads[0].cpu().numpy(),  # .cpu() synchronises an accelerator before timing
        }
        if compute_stress:
            volume = abs(float(torch.linalg.det(graph['cell'])))
            out['stress'] = grads[1].cpu().numpy() / volume  # (N, 3, 3), as MACE's virials / volume
        self.last_strategy = strategy
        if self.strategy == 'auto' and self._timer.calibrating(num_edges):
            self._timer.record(num_edges, strategy, time.perf_counter() - start)
        return out

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        """Evaluate all members and store means, member values and variances."""
        super().calculate(atoms, properties, system_changes)
        compute_stress = bool(self.atoms.pbc.all())
        member = self.evaluate(self.atoms, compute_stress)
        energy_comm = member['node_energies'].sum(axis=1)
        forces_comm = member['forces']
        forces_var = forces_comm.var(axis=0)  # ddof=0, as stock MACECalculator
        energy = float(energy_comm.mean())
        self.results = {
            'energy': energy,
            'free_energy': energy,
            'forces': forces_comm.mean(axis=0),
            'energies': member['node_energies'].mean(axis=0),
            'node_energy_comm': member['node_energies'],
            'energy_comm': energy_comm,
            'forces_comm': forces_comm,
            'energy_var': float(energy_comm.var()),
            'forces_var': forces_var,
            'force_sigma': np.sqrt(forces_var.sum(axis=1)),
        }
        if compute_stress:
            stress_comm = np.stack([full_3x3_to_voigt_6_stress(s) for s in member['stress']])
            self.results.update(
                stress=stress_comm.mean(axis=0),
                stress_comm=stress_comm,
                stress_var=stress_comm.var(axis=0),
            )
