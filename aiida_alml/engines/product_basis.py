"""MACE's symmetric contraction with its weights folded into the coupling tensors once.

The product basis of a MACE layer contracts each atom's features ``x`` (b, c, i)
``nu`` times with generalised Clebsch-Gordan tensors ``U_nu`` (..., i, k) mixed
by element-dependent weights ``W_nu`` (elements, k, c)::

    out = x . (U_3 W_3[z] + (x . (U_2 W_2[z] + (x . U_1 W_1[z]))))      (correlation 3)

MACE evaluates ``U_nu W_nu`` for every atom at every call, although it only
depends on the parameters and the element.  Here ``UW_nu[z] = sum_k U_nu[..., k]
W_nu[z, k, c]`` is computed once; an atom's element then selects its slice.  For
the leading (largest) term the one-hot element vector is folded into the
contraction index, so that all atoms go through one batched matrix product::

    out[b, c, r] = sum_(z, i) (y[b, z] x[b, c, i]) UW_3[z, c, r, i]

``PrecomputedContraction`` checks itself against the original at construction.

No AiiDA import: this runs on the compute node.
"""

from __future__ import annotations

import torch

from aiida_alml.engines.mace_import import quiet_mace_import

with quiet_mace_import():  # without the notices MACE and e3nn print on import
    from mace.modules.symmetric_contraction import Contraction

__all__ = ['PrecomputedContraction', 'ProductBasisError']


class ProductBasisError(ValueError):
    """The contraction cannot be precomputed."""


class PrecomputedContraction(torch.nn.Module):
    """Drop-in for ``mace.modules.symmetric_contraction.Contraction`` (inference only)."""

    def __init__(self, contraction: torch.nn.Module, check: bool = True):
        super().__init__()
        if type(contraction) is not Contraction:
            raise ProductBasisError(f'{type(contraction).__name__} is not a MACE symmetric Contraction')
        correlation = contraction.correlation
        with torch.no_grad():
            main = contraction.U_tensors(correlation)  # (*rest, i, k)
            weights = contraction.weights_max  # (z, k, c)
            folded = torch.einsum('...ik,zkc->c...zi', main, weights)  # (c, *rest, z, i)
            channels, elements, ell = folded.shape[0], weights.shape[0], main.shape[-2]
            self.register_buffer('main', folded.reshape(channels, -1, elements * ell).transpose(1, 2).contiguous())
            self.lower = []
            for nu, weight in zip(range(correlation - 1, 0, -1), contraction.weights):
                lower = torch.einsum('...k,zkc->zc...', contraction.U_tensors(nu), weight)
                self.register_buffer(f'lower_{nu}', lower.reshape(elements, -1).contiguous())
                self.lower.append(nu)
        self.ell = ell
        if check:
            self._check_against(contraction)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        atoms, channels, ell = x.shape
        # (c, b, z*i) @ (c, z*i, rest) -> (c, b, rest): the element picks its slice of the folded tensor.
        outer = (y[:, None, :, None] * x[:, :, None, :]).reshape(atoms, channels, -1).transpose(0, 1)
        out = torch.bmm(outer, self.main).transpose(0, 1)  # (b, c, rest)
        for nu in self.lower:
            out = out + (y @ getattr(self, f'lower_{nu}')).view(atoms, channels, -1)
            # Contract the last coupling index with the features once more.
            out = out.reshape(atoms * channels, -1, ell) @ x.reshape(atoms * channels, ell, 1)
            out = out.view(atoms, channels, -1)
        return out.reshape(atoms, -1)

    def _check_against(self, contraction) -> None:
        generator = torch.Generator().manual_seed(0)
        dtype, device = self.main.dtype, self.main.device
        atoms, elements = 7, contraction.weights_max.shape[0]
        channels = self.main.shape[0]
        x = torch.randn(atoms, channels, self.ell, generator=generator, dtype=torch.float64)
        x = x.to(dtype=dtype, device=device)
        species = torch.arange(atoms) % elements
        y = torch.nn.functional.one_hot(species, elements).to(dtype=dtype, device=device)
        with torch.no_grad():
            expected, actual = contraction(x, y), self(x, y)
        tolerance = 1e-10 if dtype == torch.float64 else 1e-4
        if not torch.allclose(actual, expected, rtol=tolerance, atol=tolerance * float(expected.abs().max())):
            raise ProductBasisError('precomputed contraction disagrees with the model (unexpected tensor layout)')
