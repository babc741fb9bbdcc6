"""Fused MACE convolution: messages summed per receiving atom without per-edge message tensors.

A MACE interaction forms, for every edge, the tensor product of the sender's
features with the edge's spherical harmonics, weighted per channel by the
radial weights, and then sums these messages over each atom's neighbours::

    m[e, u, k] = w[e, u] * sum_ij x[sender(e), u, i] Y[e, j] M[i, j, k]    (one "uvu" path)
    message[n] = sum_{e -> n} m[e]

The per-edge tensor ``m`` has E x channels x (2l+1) entries per path; making it,
summing it and differentiating both is most of a small model's cost on a CPU,
all of it memory traffic.  With the edges laid out per receiving atom (padded to
the largest neighbour count), the sum over neighbours and over ``i`` is one
batched matrix product per path::

    message[n, u, k] = sum_(d, i) (w x)[n, d, u, i] * (Y M)[n, d, i, k]

which never materialises ``m``.  ``M`` (Wigner 3j symbol times e3nn's path
normalisation) is read off the model's own ``TensorProduct`` by probing it with
unit inputs, so the layout and normalisation conventions are e3nn's by
construction; ``FusedInteraction`` checks itself against the original block.

No AiiDA import: this runs on the compute node.
"""

from __future__ import annotations

import torch

from aiida_alml.engines.mace_import import quiet_mace_import

with quiet_mace_import():  # without the notices MACE and e3nn print on import
    from mace.modules.blocks import RealAgnosticInteractionBlock, RealAgnosticResidualInteractionBlock

__all__ = ['FusedInteraction', 'FusionError', 'neighbour_layout']

#: Exact types whose forward ``FusedInteraction`` replicates.
FUSABLE_INTERACTIONS = (RealAgnosticInteractionBlock, RealAgnosticResidualInteractionBlock)


class FusionError(ValueError):
    """The interaction cannot be evaluated by ``FusedInteraction``."""


def neighbour_layout(edge_index: torch.Tensor, num_atoms: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Edges grouped by receiving atom, padded: ``(edges, senders)``, both (num_atoms, max_neighbours).

    ``edges[n, d]`` is the index of the d-th edge into atom ``n`` (``E``, one past
    the last edge, in padding slots) and ``senders[n, d]`` its sending atom
    (``num_atoms`` in padding slots): callers append a zero row to edge and atom
    features so that padding contributes nothing.
    """
    senders, receivers = edge_index
    num_edges = receivers.shape[0]
    device = edge_index.device
    order = torch.argsort(receivers, stable=True)
    degree = torch.bincount(receivers, minlength=num_atoms)
    width = max(int(degree.max()), 1) if num_edges else 1
    first = torch.cumsum(degree, 0) - degree
    sorted_receivers = receivers[order]
    slot = torch.arange(num_edges, device=device) - first[sorted_receivers]
    edges = torch.full((num_atoms, width), num_edges, dtype=torch.long, device=device)
    edges[sorted_receivers, slot] = order
    padded_senders = torch.full((num_atoms, width), num_atoms, dtype=torch.long, device=device)
    padded_senders[sorted_receivers, slot] = senders[order]
    return edges, padded_senders


def _pad_row(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, 0, 0, 1))


class FusedInteraction(torch.nn.Module):
    """Drop-in for a MACE ``RealAgnostic(Residual)InteractionBlock`` taking a ``neighbour_layout``.

    Calls the block's own linear layers, skip connection and radial network (or
    takes tabulated radial weights as ``edge_feats`` when that network is an
    identity); only the convolution is evaluated differently.
    """

    def __init__(self, interaction: torch.nn.Module, check: bool = True):
        super().__init__()
        if type(interaction) not in FUSABLE_INTERACTIONS:
            raise FusionError(f'{type(interaction).__name__} is not a supported interaction block')
        if hasattr(interaction, 'conv_fusion'):
            raise FusionError('the interaction already uses a fused (cuequivariance) convolution')
        self.interaction = interaction
        self.residual = type(interaction) is RealAgnosticResidualInteractionBlock
        parameter = next(interaction.parameters())
        self.paths, couplings = _probe_paths(interaction.conv_tp, parameter.dtype, parameter.device)
        for k, coupling in enumerate(couplings):
            self.register_buffer(f'coupling_{k}', coupling)
        self.output_order = sorted(range(len(self.paths)), key=lambda k: self.paths[k][-1])
        if check:
            self._check_against(interaction.conv_tp)

    def forward(self, node_attrs, node_feats, edge_attrs, edge_feats, edge_index, neighbours, cutoff=None):
        block = self.interaction
        sc = block.skip_tp(node_feats, node_attrs) if self.residual else None
        weights = block.conv_tp_weights(edge_feats)
        if cutoff is not None:
            weights = weights * cutoff
        message = self.convolve(block.linear_up(node_feats), edge_attrs, weights, neighbours)
        message = block.linear(message) / block.avg_num_neighbors
        if not self.residual:
            message = block.skip_tp(message, node_attrs)
        return block.reshape(message), sc

    def convolve(self, node_feats, edge_attrs, weights, neighbours) -> torch.Tensor:
        """``scatter_sum(conv_tp(node_feats[senders], edge_attrs, weights), receivers)``, fused."""
        edges, senders = neighbours
        num_atoms, width = edges.shape
        weights = _pad_row(weights)[edges]  # (n, D, W)
        harmonics = _pad_row(edge_attrs)[edges]  # (n, D, dim Y)
        sent = _pad_row(node_feats)[senders]  # (n, D, dim x)
        blocks = []
        for k, (in1, channels, dim1, in2, dim_out, weight_start, _) in enumerate(self.paths):
            coupling = getattr(self, f'coupling_{k}')  # (dim1, dim2, dim_out)
            path_weights = weights[..., weight_start : weight_start + channels]
            if dim1 == 1:  # scalar features: (w x)^T (Y M) per atom
                geometric = harmonics[..., in2] @ coupling[0]  # (n, D, dim_out)
                blocks.append((path_weights * sent[..., in1]).transpose(1, 2) @ geometric)
            else:
                geometric = torch.einsum('ndj,ijk->ndik', harmonics[..., in2], coupling)
                weighted = path_weights.unsqueeze(-1) * sent[..., in1].reshape(num_atoms, width, channels, dim1)
                weighted = weighted.transpose(1, 2).reshape(num_atoms, channels, width * dim1)
                blocks.append(weighted @ geometric.reshape(num_atoms, width * dim1, dim_out))
        return torch.cat([blocks[k].reshape(num_atoms, -1) for k in self.output_order], dim=1)

    def _check_against(self, conv_tp) -> None:
        """Compare ``convolve`` with the block's own convolution on a random graph."""
        generator = torch.Generator().manual_seed(0)
        dtype, device = self.coupling_0.dtype, self.coupling_0.device
        num_atoms, num_edges = 5, 17
        edge_index = torch.randint(0, num_atoms, (2, num_edges), generator=generator).to(device)

        def random(*shape):
            return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype=dtype, device=device)

        node_feats = random(num_atoms, conv_tp.irreps_in1.dim)
        edge_attrs = random(num_edges, conv_tp.irreps_in2.dim)
        weights = random(num_edges, conv_tp.weight_numel)
        with torch.no_grad():
            messages = conv_tp(node_feats[edge_index[0]], edge_attrs, weights)
            expected = torch.zeros(num_atoms, messages.shape[1], dtype=dtype, device=device)
            expected.index_add_(0, edge_index[1], messages)
            actual = self.convolve(node_feats, edge_attrs, weights, neighbour_layout(edge_index, num_atoms))
        tolerance = 1e-10 if dtype == torch.float64 else 1e-4
        if not torch.allclose(actual, expected, rtol=tolerance, atol=tolerance * float(expected.abs().max())):
            raise FusionError('fused convolution disagrees with the model (unexpected tensor-product layout)')


def _probe_paths(conv_tp, dtype: torch.dtype, device: torch.device) -> tuple[list[tuple], list[torch.Tensor]]:
    """Per path: slices and sizes, and its coupling tensor ``M`` (dim1, dim2, dim_out), read off ``conv_tp``."""
    for attribute, expected in (('shared_weights', False), ('internal_weights', False)):
        if getattr(conv_tp, attribute, None) is not expected:
            raise FusionError(f'tensor product with {attribute}={getattr(conv_tp, attribute, None)}')
    in1, in2, out = conv_tp.irreps_in1, conv_tp.irreps_in2, conv_tp.irreps_out
    slices1, slices2, slices_out = in1.slices(), in2.slices(), out.slices()
    paths, couplings, weight_start = [], [], 0
    for ins in conv_tp.instructions:
        if ins.connection_mode != 'uvu' or not ins.has_weight:
            raise FusionError(f'tensor-product path with mode {ins.connection_mode!r} (only weighted "uvu")')
        channels, irrep1 = in1[ins.i_in1]
        dim1, dim2, dim_out = irrep1.dim, in2[ins.i_in2].ir.dim, out[ins.i_out].ir.dim
        if out[ins.i_out].mul != channels:
            raise FusionError('tensor-product path whose output multiplicity differs from its input')
        # One unit input per (i, j) pair, channel 0 and this path's first weight only.
        count = dim1 * dim2
        x1 = torch.zeros(count, in1.dim, dtype=dtype, device=device)
        x2 = torch.zeros(count, in2.dim, dtype=dtype, device=device)
        weights = torch.zeros(count, conv_tp.weight_numel, dtype=dtype, device=device)
        weights[:, weight_start] = 1.0
        pairs = torch.arange(count, device=device)
        x1[pairs, slices1[ins.i_in1].start + pairs // dim2] = 1.0
        x2[pairs, slices2[ins.i_in2].start + pairs % dim2] = 1.0
        with torch.no_grad():
            response = conv_tp(x1, x2, weights)
        start = slices_out[ins.i_out].start
        couplings.append(response[:, start : start + dim_out].reshape(dim1, dim2, dim_out).clone())
        paths.append((slices1[ins.i_in1], channels, dim1, slices2[ins.i_in2], dim_out, weight_start, ins.i_out))
        weight_start += channels
    if weight_start != conv_tp.weight_numel:
        raise FusionError('tensor-product weights do not match its paths')
    return paths, couplings
