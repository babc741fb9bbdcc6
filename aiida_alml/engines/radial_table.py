"""Tabulated radial weights of MACE interactions (quintic Hermite on a uniform grid).

In a standard MACE interaction the tensor-product weights of an edge depend on
its length alone: ``R(r) = MLP(bessel(r) * f_cut(r))`` (times ``f_cut(r)`` in
models that apply the cutoff after the MLP).  Evaluated per edge, the MLP
(8 -> 64 -> 64 -> 64 -> W by default) is the largest single cost of a small
model on a CPU, and a committee pays it once per member.  A table of ``R`` and
``dR/dr`` and ``d2R/dr2`` on a grid, interpolated with quintic Hermite
polynomials, reproduces the MLP and its derivative to ~1e-10 relative with about a
thousand points (the errors fall as the 6th and 5th power of the spacing), and
an edge then costs six table rows instead of three matrix products.

The interpolant is C2 and its derivative is used for the forces, so forces stay
the exact gradient of the (tabulated) energy and MD conserves energy as well as
with the MLP.  ``RadialTable.build`` checks the table against the MLP at random
lengths between grid points and refines the grid until the worst error is below
``tolerance`` (relative to the largest weight), or reports that it cannot.

No AiiDA import: this runs on the compute node.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import warnings

import torch

from aiida_alml.engines.mace_import import quiet_mace_import

with quiet_mace_import():  # without the notices MACE and e3nn print on import
    from mace.modules.blocks import RealAgnosticInteractionBlock, RealAgnosticResidualInteractionBlock

__all__ = ['RadialTable', 'TabulationError', 'radial_weight_functions']

#: Table rows per grid interval (value, slope and curvature at both ends).
ROWS = 6

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
    """``R(r)`` from the table; the backward uses the interpolant's own derivative.

    An edge in interval ``k`` at fraction ``s`` combines table rows ``6k .. 6k+5``
    with the six Hermite basis values: a sparse (E x 6G) matrix with six entries
    per row times the table, which CSR sparse-dense products do without
    materialising the (E, 6, D) rows.
    """

    @staticmethod
    def forward(ctx, r, table, inv_spacing):
        columns, fraction = _locate(r, inv_spacing, table.shape[0] // ROWS)
        ctx.save_for_backward(columns, fraction, table)
        ctx.inv_spacing = inv_spacing
        return _combine(columns, _hermite_basis(fraction), table)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        columns, fraction, table = ctx.saved_tensors
        return (_slope(columns, fraction, ctx.inv_spacing, table) * grad_out).sum(-1), None, None


def _locate(r: torch.Tensor, inv_spacing: float, intervals: int):
    """Table row indices (E, ROWS) of each length's interval and its fraction within it."""
    scaled = r * inv_spacing
    index = scaled.floor().clamp(0, intervals - 1)
    columns = ROWS * index.long().unsqueeze(-1) + torch.arange(ROWS, device=r.device)
    return columns, scaled - index


# torch warns on the first CSR tensor of a process that its sparse support is in beta; only that warning, only here.
warnings.filterwarnings('ignore', message='Sparse CSR tensor support is in beta state', category=UserWarning,
                        module=r'aiida_alml\.engines\.radial_table\Z')


def _combine(columns: torch.Tensor, weights: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``sum_f weights[e, f] * table[columns[e, f]]`` for every edge ``e``."""
    num_edges = columns.shape[0]
    row_starts = torch.arange(0, ROWS * num_edges + 1, ROWS, device=columns.device)
    matrix = torch.sparse_csr_tensor(
        row_starts, columns.reshape(-1), weights.reshape(-1), size=(num_edges, table.shape[0]), check_invariants=False
    )
    return torch.sparse.mm(matrix, table)


def _slope(columns: torch.Tensor, fraction: torch.Tensor, inv_spacing: float, table: torch.Tensor) -> torch.Tensor:
    """``dR/dr`` of the interpolant at located lengths (see ``_locate``)."""
    return _combine(columns, _hermite_basis_derivative(fraction) * inv_spacing, table)


def _hermite_basis(s: torch.Tensor) -> torch.Tensor:
    """Quintic Hermite basis for ``R_k, h R'_k, h^2 R''_k, R_k+1, h R'_k+1, h^2 R''_k+1``."""
    s2 = s * s
    s3 = s2 * s
    s4, s5 = s3 * s, s3 * s2
    end = 10 * s3 - 15 * s4 + 6 * s5
    return torch.stack(
        (1 - end, s - 6 * s3 + 8 * s4 - 3 * s5, 0.5 * (s2 - 3 * s3 + 3 * s4 - s5),
         end, -4 * s3 + 7 * s4 - 3 * s5, 0.5 * (s3 - 2 * s4 + s5)),
        dim=-1,
    )  # fmt: skip


def _hermite_basis_derivative(s: torch.Tensor) -> torch.Tensor:
    """d/ds of ``_hermite_basis``."""
    s2 = s * s
    s3 = s2 * s
    s4 = s3 * s
    end = 30 * s2 - 60 * s3 + 30 * s4
    return torch.stack(
        (-end, 1 - 18 * s2 + 32 * s3 - 15 * s4, s - 4.5 * s2 + 6 * s3 - 2.5 * s4,
         end, -12 * s2 + 28 * s3 - 15 * s4, 1.5 * s2 - 4 * s3 + 2.5 * s4),
        dim=-1,
    )  # fmt: skip


class RadialTable:
    """Quintic Hermite table of a model's radial weights, all interactions side by side.

    Rows ``6k .. 6k+5`` of ``table`` hold ``R, h R', h^2 R''`` at ``r_k`` and at
    ``r_k+1`` for the interval ``[r_k, r_k+1)`` of width ``h``: everything an edge in it needs.
    """

    #: Grid intervals of the first try; each refinement doubles them.
    INITIAL_INTERVALS = 256
    MAX_INTERVALS = 16384
    #: Random check lengths; they avoid the grid points, where the error vanishes.
    CHECK_POINTS = 4096
    #: Checked from this fraction of r_max on.  Shorter edges mean overlapping
    #: atoms, and there MACE's own float64 Bessel basis (sin(x)/r) loses digits
    #: in its derivative, so it is no reference (the table stays smooth there).
    SHORTEST_CHECKED = 0.1

    def __init__(self, table: torch.Tensor, r_max: float, widths: list[int], max_error: float):
        self.table = table
        self.inv_spacing = (table.shape[0] // ROWS) / r_max
        self.widths = widths
        self.max_error = max_error

    @classmethod
    def build(cls, model: torch.nn.Module, tolerance: float = 1e-9, max_bytes: int = 1 << 28) -> RadialTable:
        """Tabulate ``model``'s radial weights on ``[0, r_max]``.

        The table is computed and checked in float64 (on a copy of a float32
        model) and then stored in the model's dtype.

        :param tolerance: worst allowed error of the weights, relative to the
            largest weight, and of their derivatives (which give the forces),
            relative to the largest derivative.
        :param max_bytes: refuse tables larger than this.
        :raises TabulationError: unsupported architecture, or no grid within the limits meets ``tolerance``.
        """
        dtype = next(model.parameters()).dtype
        reference = model if dtype == torch.float64 else copy.deepcopy(model).to(torch.float64)
        functions = radial_weight_functions(reference)
        device = next(reference.parameters()).device
        r_max = float(model.r_max)
        generator = torch.Generator().manual_seed(0)
        shortest = cls.SHORTEST_CHECKED * r_max
        uniform = torch.rand(cls.CHECK_POINTS, generator=generator, dtype=torch.float64)
        check_r = (shortest + uniform * (r_max - shortest)).to(device)
        exact, exact_slope = _values_and_slopes(functions, check_r)
        tiny = torch.finfo(torch.float64).tiny
        scale, slope_scale = (max(float(x.abs().max()), tiny) for x in (exact, exact_slope))
        widths = [interaction.conv_tp.weight_numel for interaction in model.interactions]
        intervals = cls.INITIAL_INTERVALS
        while True:
            if intervals * ROWS * exact.shape[1] * (torch.finfo(dtype).bits // 8) > max_bytes:
                raise TabulationError(f'a table accurate to {tolerance:g} would exceed {max_bytes} bytes')
            candidate = cls(cls._tabulate(functions, r_max, intervals, device), r_max, widths, 0.0)
            with torch.no_grad():
                error = float((candidate.lookup(check_r) - exact).abs().max()) / scale
            slope_error = float((candidate.slope(check_r) - exact_slope).abs().max()) / slope_scale
            worst = max(error, slope_error)
            if worst <= tolerance:
                candidate.table = candidate.table.to(dtype)
                candidate.max_error = worst
                return candidate
            if intervals >= cls.MAX_INTERVALS:
                raise TabulationError(
                    f'{intervals} grid intervals leave a relative error of {worst:.2g} > {tolerance:g}'
                )
            intervals *= 2

    @staticmethod
    def _tabulate(functions, r_max: float, intervals: int, device) -> torch.Tensor:
        grid = torch.linspace(0.0, r_max, intervals + 1, dtype=torch.float64, device=device)
        # The Bessel basis is sin(x)/r: take the r -> 0 limit a hair away from 0.
        grid[0] = grid[1] * 1e-6
        values, slopes, curvatures = _values_and_slopes(functions, grid, curvatures=True)
        h = r_max / intervals
        nodes = (values, h * slopes, h * h * curvatures)
        rows = torch.stack([x[:-1] for x in nodes] + [x[1:] for x in nodes], dim=1)
        return rows.reshape(ROWS * intervals, -1)

    def lookup(self, r: torch.Tensor) -> torch.Tensor:
        """Weights of all interactions side by side, ``(E, sum(widths))``, differentiable in ``r`` (E,)."""
        return _HermiteLookup.apply(r, self.table, self.inv_spacing)

    def slope(self, r: torch.Tensor) -> torch.Tensor:
        """``dR/dr`` of the interpolant, ``(E, sum(widths))`` (what the backward of ``lookup`` contracts)."""
        columns, fraction = _locate(r, self.inv_spacing, self.table.shape[0] // ROWS)
        return _slope(columns, fraction, self.inv_spacing, self.table)

    def split(self, weights: torch.Tensor) -> list[torch.Tensor]:
        """Per-interaction weights from ``lookup``'s output."""
        return list(torch.split(weights, self.widths, dim=-1))


def _values_and_slopes(functions, r: torch.Tensor, curvatures: bool = False) -> tuple[torch.Tensor, ...]:
    """Exact ``R(r)`` and ``dR/dr`` of all interactions side by side (forward-mode AD), and ``d2R/dr2``.

    The curvature is a central difference of exact slopes (nested forward AD is
    not implemented for SiLU): its ~1e-9 relative error enters the interpolant
    multiplied by the squared spacing, far below the checked tolerance.
    """

    def all_weights(x):
        return torch.cat([f(x) for f in functions], dim=-1)

    def slopes_of(x):
        return torch.func.jvp(all_weights, (x,), (torch.ones_like(x),))[1]

    with torch.no_grad():
        values, slopes = all_weights(r), slopes_of(r)
        if not curvatures:
            return values, slopes
        step = 1e-5 * float(r.max())
        ahead = slopes_of(r + step)
        central = (ahead - slopes_of(r - step)) / (2 * step)
        # R is only defined for r >= 0 (and not even in r): one-sided near 0.
        forward = (4 * ahead - slopes_of(r + 2 * step) - 3 * slopes) / (2 * step)
        return values, slopes, torch.where((r < step).unsqueeze(-1), forward, central)

