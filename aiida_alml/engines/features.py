"""Per-atom invariant features of a MACE model, for single-model (feature-space) uncertainty.

Runs on compute nodes next to ``alml-md``: only ase/torch/mace/numpy, no AiiDA. Two feature sets are offered:

* ``'node'``: the scalar (L=0, even parity) channels of the node features of every interaction layer, concatenated
  (what MACE returns as ``node_feats``, with the L>0 channels dropped so that the features are rotation invariant);
* ``'last_layer'``: the inputs of the last linear map of every readout, scalar part. MACE's atomic energy is linear in
  these (ScaleShiftMACE only scales and shifts it), so they are the "last-layer features" of last-layer prediction
  rigidity (LLPR, Bigi et al. 2024): a Bayesian linear model on them gives the posterior variance of the atomic
  energy. For the standard models that is the layer-1 scalars (linear readout) and the hidden activations of the
  final non-linear readout.

Model files are read with :func:`~aiida_alml.engines.committee_loading.load_committee` (hash check, validation,
eval mode, dtype), and the model is evaluated with its own ``forward``, so the features are exactly the model's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from aiida_alml.engines.committee_loading import load_committee, z_table
from aiida_alml.engines.mace_import import quiet_mace_import

with quiet_mace_import():  # without the notices MACE and e3nn print on import
    from mace import data as mace_data
    from mace.tools import torch_geometric, torch_tools
    from mace.tools.utils import AtomicNumberTable

__all__ = ('FEATURE_KINDS', 'atomic_features', 'load_feature_model')

FEATURE_KINDS = ('node', 'last_layer')


def load_feature_model(path: str | Path, device: str = 'cpu', default_dtype: str = 'float64',
                       expected_sha256: str | None = None) -> torch.nn.Module:
    """One MACE model from a model file in our format, ready for :func:`atomic_features`."""
    return load_committee([path], device, default_dtype, None if expected_sha256 is None else [expected_sha256])[0]


def _scalar_slices(irreps) -> list[slice]:
    """Where the L=0, even-parity channels lie in a tensor laid out as ``irreps`` (e3nn order)."""
    slices, start = [], 0
    for mul, ir in irreps:
        width = mul * ir.dim
        if ir.l == 0 and ir.p == 1:
            slices.append(slice(start, start + width))
        start += width
    return slices


def _scalars(values: torch.Tensor, irreps) -> torch.Tensor:
    slices = _scalar_slices(irreps)
    if not slices:
        raise ValueError(f'no scalar (0e) channels in irreps {irreps}')
    return torch.cat([values[:, s] for s in slices], dim=-1)


def _readout_last_linear(readout: torch.nn.Module) -> torch.nn.Module:
    """The linear map that turns a readout's features into the atomic energy."""
    for name in ('linear_2', 'linear'):  # NonLinearReadoutBlock, LinearReadoutBlock
        linear = getattr(readout, name, None)
        if linear is not None and hasattr(linear, 'irreps_in'):
            return linear
    raise ValueError(f'unsupported readout block {type(readout).__name__}: no final e3nn Linear found')


def _head(model: torch.nn.Module, head: str | None) -> str:
    heads = list(getattr(model, 'heads', ['Default']))
    if head is None:
        if len(heads) == 1:
            return heads[0]
        lowered = [h.lower() for h in heads]
        if 'default' not in lowered:
            raise ValueError(f'Multi-head model: pass head=..., available heads: {heads}.')
        return heads[lowered.index('default')]
    if head not in heads:
        raise ValueError(f'Head {head!r} not in the model heads {heads}.')
    return head


def atomic_features(model: torch.nn.Module, frames: Sequence[Atoms], kind: str = 'last_layer',
                    head: str | None = None, batch_size: int = 16) -> list[np.ndarray]:
    """Per frame, the (n_atoms, n_features) invariant features of every atom (see the module doc for ``kind``).

    Features depend only on each atom's environment (within the model's receptive field), so they follow the atoms
    when the frame's atoms are reordered, and are unchanged by rotations and translations.
    """
    if kind not in FEATURE_KINDS:
        raise ValueError(f'kind must be one of {FEATURE_KINDS}, got {kind!r}')
    frames = list(frames)
    if not frames:
        return []
    known = set(z_table(model))
    for index, atoms in enumerate(frames):
        unknown = sorted(set(int(z) for z in atoms.numbers) - known)
        if unknown:
            raise ValueError(f'frame {index} has elements the model was not trained on: Z={unknown}; '
                             f'model knows Z={sorted(known)}')
    head_name = _head(model, head)
    heads = list(getattr(model, 'heads', ['Default']))
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    table = AtomicNumberTable(z_table(model))
    # Configs carry no labels: features need positions, cell and species only.
    keys = mace_data.KeySpecification(info_keys={}, arrays_keys={})
    with torch_tools.default_dtype(dtype):
        graphs = [
            mace_data.AtomicData.from_config(
                mace_data.config_from_atoms(atoms, key_specification=keys, head_name=head_name),
                z_table=table, cutoff=float(model.r_max), heads=heads,
            )
            for atoms in frames
        ]  # fmt: skip

    captured: list[torch.Tensor] = []
    hooks = []
    if kind == 'last_layer':
        linears = [_readout_last_linear(readout) for readout in model.readouts]
        for linear in linears:
            hooks.append(linear.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach())))
    features: list[np.ndarray] = []
    try:
        loader = torch_geometric.dataloader.DataLoader(graphs, batch_size=batch_size, shuffle=False, drop_last=False)
        for batch in loader:
            captured.clear()
            batch = batch.to(device)
            with torch.no_grad():  # features only: no forces, so no graph to keep
                output = model(batch.to_dict(), compute_force=False, training=False)
            if kind == 'node':
                layers = [product.linear.irreps_out for product in model.products]
                widths = [irreps.dim for irreps in layers]
                parts = torch.split(output['node_feats'].detach(), widths, dim=-1)
                values = torch.cat([_scalars(part, irreps) for part, irreps in zip(parts, layers)], dim=-1)
            else:
                if len(captured) != len(linears):
                    raise RuntimeError(f'expected {len(linears)} readout inputs, captured {len(captured)}')
                values = torch.cat([_scalars(x, lin.irreps_in) for x, lin in zip(captured, linears)], dim=-1)
            values = values.cpu().numpy()
            counts = torch.bincount(batch['batch'], minlength=batch.num_graphs).cpu().numpy()
            features.extend(np.split(values, np.cumsum(counts)[:-1]))
    finally:
        for hook in hooks:
            hook.remove()
    return features
