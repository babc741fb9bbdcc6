"""Tabulated radial weights of MACE interactions (cubic Hermite on a uniform grid).

In a standard MACE interaction the tensor-product weights of an edge depend on
its length alone: ``R(r) = MLP(bessel(r) * f_cut(r))`` (times ``f_cut(r)`` in
models that apply the cutoff after the MLP).  Evaluated per edge, the MLP
(8 -> 64 -> 64 -> 64 -> W by default) is the largest single cost of a small
model on a CPU, and a committee pays it once per member.  A table of ``R`` and
``dR/dr`` on a grid, interpolated with cubic Hermite polynomials, reproduces
the MLP to round-off level with a few thousand points (the error falls as the
4th power of the spacing), and an edge then costs a gather of four table rows
instead of three matrix products.

The interpolant is C1 and its derivative is used for the forces, so forces stay
the exact gradient of the (tabulated) energy and MD conserves energy as well as
with the MLP.  ``RadialTable.build`` checks the table against the MLP at random
lengths between grid points and refines the grid until the worst error is below
``tolerance`` (relative to the largest weight), or reports that it cannot.

No AiiDA import: this runs on the compute node.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from mace.modules.blocks import RealAgnosticInteractionBlock, RealAgnosticResidualInteractionBlock

__all__ = ['RadialTable', 'TabulationError', 'radial_weight_functions']

#: Interaction blocks whose ``edge_feats`` only feed ``conv_tp_weights`` (the
#: density / attention / non-linear variants also use them elsewhere). Exact
#: types: a subclass may use them differently.
TABULATABLE_INTERACTIONS = (RealAgnosticInteractionBlock, RealAgnosticResidualInteractionBlock)


class TabulationError(ValueError):
    """The model's radial weights cannot be tabulated (architecture, accuracy or size)."""


def radial_weight_functions(model: torch.nn.Module) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """For each interaction, ``r (E,) -> tensor-product weights (E, W)`` exactly as in the model.

    :raises TabulationError: if the weights depend on more than the edge length.
    """
    embedding = model.radial_embedding
    if hasattr(embedding, 'distance_transform'):
        raise TabulationError('radial embedding with a species-dependent distance transform')
    for i, interaction in enumerate(model.interactions):
        if type(interaction) not in TABULATABLE_INTERACTIONS:
            raise TabulationError(f'interaction {i} is a {type(interaction).__name__}')
        if hasattr(interaction, 'conv_fusion'):
            raise TabulationError(f'interaction {i} uses a fused convolution')

    def weights_of(interaction):
        def weights(r: torch.Tensor) -> torch.Tensor:
            # Without a distance transform the embedding ignores node attributes and edge indices.
            edge_feats, cutoff = embedding(r.unsqueeze(-1), None, None, None)
            out = interaction.conv_tp_weights(edge_feats)
            return out if cutoff is None else out * cutoff

        return weights

    return [weights_of(interaction) for interaction in model.interactions]


class _HermiteLookup(torch.autograd.Function):
    """``R(r)`` from the table; the backward uses the interpolant's own derivative."""

    @staticmethod
    def forward(ctx, r, table, inv_spacing):
        index, fraction = _locate(r, inv_spacing, table.shape[0])
        rows = table[index]  # (E, 4, D): R_k, h R'_k, R_k+1, h R'_k+1
        ctx.save_for_backward(index, fraction, table)
        ctx.inv_spacing = inv_spacing
        return torch.bmm(_hermite_basis(fraction).unsqueeze(1), rows).squeeze(1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        index, fraction, table = ctx.saved_tensors
        rows = table[index]
        # dR/dr . grad = sum_f basis'_f(s)/h * (rows_f . grad)
        projected = torch.bmm(rows, grad_out.unsqueeze(-1)).squeeze(-1)  # (E, 4)
        grad_r = (_hermite_basis_derivative(fraction) * projected).sum(-1) * ctx.inv_spacing
        return grad_r, None, None


def _locate(r: torch.Tensor, inv_spacing: float, intervals: int):
    scaled = r * inv_spacing
    index = scaled.floor().clamp(0, intervals - 1)
    return index.long(), scaled - index


def _hermite_basis(s: torch.Tensor) -> torch.Tensor:
    s2, s3 = s * s, s * s * s
    return torch.stack((2 * s3 - 3 * s2 + 1, s3 - 2 * s2 + s, 3 * s2 - 2 * s3, s3 - s2), dim=-1)


def _hermite_basis_derivative(s: torch.Tensor) -> torch.Tensor:
    s2 = s * s
    return torch.stack((6 * s2 - 6 * s, 3 * s2 - 4 * s + 1, 6 * s - 6 * s2, 3 * s2 - 2 * s), dim=-1)


class RadialTable:
    """Cubic Hermite table of a model's radial weights, all interactions side by side.

    ``table[k]`` holds ``(R(r_k), h R'(r_k), R(r_k+1), h R'(r_k+1))`` for the
    interval ``[r_k, r_k+1)`` so that one gather fetches everything an edge needs.
    """

    #: Grid intervals of the first try; each refinement doubles them.
    INITIAL_INTERVALS = 1024
    MAX_INTERVALS = 16384
    #: Random check lengths; they avoid the grid points, where the error vanishes.
    CHECK_POINTS = 4096

    def __init__(self, table: torch.Tensor, r_max: float, widths: list[int], max_error: float):
        self.table = table
        self.r_max = r_max
        self.spacing = r_max / table.shape[0]
        self.inv_spacing = 1.0 / self.spacing
        self.widths = widths
        self.max_error = max_error

    @property
    def nbytes(self) -> int:
        return self.table.numel() * self.table.element_size()

    @classmethod
    def build(cls, model: torch.nn.Module, tolerance: float | None = None, max_bytes: int = 1 << 28) -> RadialTable:
        """Tabulate ``model``'s radial weights on ``[0, r_max]``.

        :param tolerance: worst allowed error, relative to the largest weight
            (default 1e-10 in float64, 1e-6 in float32): both value and derivative
            (times the spacing) are checked.
        :param max_bytes: refuse tables larger than this.
        :raises TabulationError: unsupported architecture, or no grid within the limits meets ``tolerance``.
        """
        functions = radial_weight_functions(model)
        dtype = next(model.parameters()).dtype
        device = next(model.parameters()).device
        if tolerance is None:
            tolerance = 1e-10 if dtype == torch.float64 else 1e-6
        r_max = float(model.r_max)
        generator = torch.Generator().manual_seed(0)
        check_r = (torch.rand(cls.CHECK_POINTS, generator=generator, dtype=torch.float64) * r_max).to(dtype=dtype, device=device)
        exact, exact_slope = _values_and_slopes(functions, check_r)
        scale = max(float(exact.abs().max()), torch.finfo(dtype).tiny)
        intervals = cls.INITIAL_INTERVALS
        while True:
            nbytes = (intervals * 4 * exact.shape[1]) * exact.element_size()
            if nbytes > max_bytes:
                raise TabulationError(f'a table accurate to {tolerance:g} would exceed {max_bytes} bytes')
            table = cls._tabulate(functions, r_max, intervals, dtype, device)
            candidate = cls(table, r_max, [int(f(check_r[:1]).shape[1]) for f in functions], 0.0)
            with torch.no_grad():
                error = float((candidate.lookup(check_r) - exact).abs().max())
            slope = _slope_of(candidate, check_r)
            slope_error = float((slope - exact_slope).abs().max()) * candidate.spacing
            worst = max(error, slope_error) / scale
            if worst <= tolerance:
                candidate.max_error = worst
                return candidate
            if intervals >= cls.MAX_INTERVALS:
                raise TabulationError(f'{intervals} grid intervals leave a relative error of {worst:.2g} > {tolerance:g}')
            intervals *= 2

    @staticmethod
    def _tabulate(functions, r_max: float, intervals: int, dtype, device) -> torch.Tensor:
        grid = torch.linspace(0.0, r_max, intervals + 1, dtype=torch.float64).to(dtype=dtype, device=device)
        # The Bessel basis is sin(x)/r: take the r -> 0 limit a hair away from 0.
        grid[0] = grid[1] * 1e-6
        values, slopes = _values_and_slopes(functions, grid)
        spacing = r_max / intervals
        return torch.stack((values[:-1], spacing * slopes[:-1], values[1:], spacing * slopes[1:]), dim=1)

    def lookup(self, r: torch.Tensor) -> torch.Tensor:
        """Weights of all interactions side by side, ``(E, sum(widths))``, differentiable in ``r`` (E,)."""
        return _HermiteLookup.apply(r, self.table, self.inv_spacing)

    def split(self, weights: torch.Tensor) -> list[torch.Tensor]:
        """Per-interaction weights from ``lookup``'s output."""
        return list(torch.split(weights, self.widths, dim=-1))


def _values_and_slopes(functions, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``R(r)`` and ``dR/dr`` of all interactions, side by side (forward-mode AD)."""

    def all_weights(x):
        return torch.cat([f(x) for f in functions], dim=-1)

    with torch.no_grad():
        values, slopes = torch.func.jvp(all_weights, (r,), (torch.ones_like(r),))
    return values, slopes


def _slope_of(table: RadialTable, r: torch.Tensor) -> torch.Tensor:
    """``dR/dr`` of the interpolant (the backward contracts the same rows with the incoming gradient)."""
    index, fraction = _locate(r, table.inv_spacing, table.table.shape[0])
    rows = table.table[index]
    return torch.bmm(_hermite_basis_derivative(fraction).unsqueeze(1), rows).squeeze(1) * table.inv_spacing

