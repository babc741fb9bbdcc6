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

Loading the members and the three exact re-formulations that cut each member's
own cost (tabulated radial weights, fused convolution, precomputed product
basis) are in :mod:`aiida_alml.engines.committee_loading`; the two evaluation
strategies (``"vmap"``, ``"sequential"``) and how ``"auto"`` times them to pick
one are in :mod:`aiida_alml.engines.committee_strategy`.

The energy expression replicates ``MACE.forward`` / ``ScaleShiftMACE.forward``
of mace-torch 0.3.x for the standard (non-LAMMPS, no extra embeddings) case.
It calls the model's own sub-modules, so it only depends on the sub-module
interfaces; equality with the stock ``MACECalculator`` is covered by tests.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.data import chemical_symbols
from ase.stress import full_3x3_to_voigt_6_stress
from torch.func import functional_call

from aiida_alml.engines.mace_import import quiet_mace_import

with quiet_mace_import():  # without the notices MACE and e3nn print on import
    from mace.data.neighborhood import get_neighborhood
    from mace.modules.models import ScaleShiftMACE

from aiida_alml.engines.committee_loading import (
    ModelHashError,
    load_committee,
    model_dtype,
    prepare_for_inference,
    prepare_members,
    validate_committee,
    z_table,
)
from aiida_alml.engines.committee_strategy import (
    StrategyTimer,
    VmapFriendlyScatter,
    choose_strategy,
    stack_members,
    structure_signature,
)
from aiida_alml.engines.message_passing import FusedInteraction, neighbour_layout

__all__ = ['CommitteeCalculator', 'ModelHashError', 'load_committee', 'validate_committee']


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
        ``FusedInteraction`` blocks take (see ``committee_loading.prepare_members``)."""
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
        :param model_paths: model files (see :func:`~aiida_alml.engines.committee_loading.load_committee`), or
        :param models: already loaded MACE modules (validated and set to eval
            mode without parameter gradients, like the stock calculator does;
            their dtype is kept).
        :param strategy: ``'auto'``, ``'vmap'`` or ``'sequential'`` (see :mod:`aiida_alml.engines.committee_strategy`).
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
                prepare_for_inference(model.to(device))  # the graph tensors are made on `device`
        self.models = models
        self.num_models = len(models)
        self.device = torch.device(device)
        self.dtype = model_dtype(models[0])
        self.r_max = float(models[0].r_max)
        self.z_table = z_table(models[0])
        self._z_to_index = np.full(max(self.z_table) + 1, -1, dtype=np.int64)
        self._z_to_index[self.z_table] = np.arange(len(self.z_table))
        prepared = prepare_members(models, radial, convolution, product_basis)
        self.radial_tables = prepared.radial_tables
        self.radial = prepared.radial
        self.convolution = prepared.convolution
        self.product_basis = prepared.product_basis
        evaluated = prepared.evaluated
        self._members = [_MemberEnergy(m, self._head_index(m, head)) for m in evaluated]

        signature = structure_signature(evaluated[0])
        self.can_vmap = all(structure_signature(m) == signature for m in evaluated[1:])
        if strategy == 'vmap' and not self.can_vmap:
            raise ValueError(
                "strategy='vmap' needs members with identical architecture and hyper-parameters; "
                'use strategy="sequential" or "auto".'
            )
        self.strategy = strategy
        self.last_strategy: str | None = None  # strategy of the latest evaluation
        self._timer = StrategyTimer()
        if self.can_vmap:
            self._template, self._params, self._buffers = stack_members(self._members)

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
        return choose_strategy(self.strategy, self.can_vmap, num_edges, self.num_models, self._timer)

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
        with VmapFriendlyScatter():
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
