"""Choosing and timing the batched-inference strategy of :class:`~aiida_alml.engines.committee.CommitteeCalculator`.

Two evaluation strategies give identical results (to round-off):

``"vmap"``
    The members' parameters are stacked with ``torch.func.stack_module_state`` (:func:`stack_members`)
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
keeps the faster (see :class:`StrategyTimer`); it uses ``"sequential"`` whenever
the members cannot be stacked (:func:`structure_signature`).
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
from collections.abc import Sequence

import torch
from torch.func import stack_module_state
from torch.overrides import TorchFunctionMode

__all__ = ['AUTO_VMAP_MAX_EDGE_MEMBERS', 'StrategyTimer', 'VmapFriendlyScatter', 'choose_strategy', 'stack_members',
           'structure_signature']

#: The calculator's logger: everything the committee reports goes to one logger.
LOGGER = logging.getLogger('aiida_alml.engines.committee')

#: ``strategy='auto'`` does not even try vmap above this many edges x members:
#: vmap materialises every edge tensor for all members at once (GBs for big
#: cells and models).  With the fused convolution no per-edge message tensors
#: exist, and on 2 CPU threads vmap was still the faster at 9,000 edges x 4.
AUTO_VMAP_MAX_EDGE_MEMBERS = 1 << 17


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


def structure_signature(model: torch.nn.Module) -> list:
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


def stack_members(members: Sequence[torch.nn.Module]) -> tuple[torch.nn.Module, dict, dict]:
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


class VmapFriendlyScatter(TorchFunctionMode):
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


class StrategyTimer:
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


def choose_strategy(requested: str, can_vmap: bool, num_edges: int, num_models: int, timer: StrategyTimer) -> str:
    """The strategy for a structure of ``num_edges`` edges: ``requested`` unless it is ``'auto'``, then
    ``'sequential'`` where vmap cannot or should not be used, else what ``timer`` picks."""
    if requested != 'auto':
        return requested
    if not can_vmap or num_edges * num_models > AUTO_VMAP_MAX_EDGE_MEMBERS:
        return 'sequential'
    return timer.pick(num_edges)
