"""An ASE calculator for a campaign's final committee: ``committee_calculator(run)``.

.. code-block:: python

    from aiida import load_profile
    from aiida_alml import committee_calculator

    load_profile()
    atoms.calc = committee_calculator(1234)      # PK of an alml.active_learning run (or its node, or ...)
    atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc.results['force_sigma']            # per-atom force σ of the committee (eV/Å)

The models are read through :meth:`MlipModel.verified_path <aiida_alml.data.MlipModel.verified_path>` (each file's
SHA-256 checked against the node before it is read) and loaded by the loader the MD engine uses
(:func:`~aiida_alml.engines.committee_loading.load_committee`: our format, no pickle). The calculator is the engine's
own :class:`~aiida_alml.engines.committee.CommitteeCalculator`, which the campaign's MD ran with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from ase.calculators.calculator import all_changes

from aiida_alml.engines.committee import CommitteeCalculator
from aiida_alml.engines.committee_loading import load_committee

__all__ = ('CampaignCommitteeCalculator', 'committee_calculator', 'committee_models')

#: ``process_type`` of an ``alml.committee`` run (its workflow entry point).
COMMITTEE = 'aiida.workflows:alml.committee'


def committee_models(source: Any) -> dict[str, Any]:
    """{member key: MlipModel} of ``source``: a PK, UUID or node of an ``alml.active_learning`` or ``alml.committee``
    run (its ``models`` outputs), or a mapping of names to ``MlipModel`` nodes."""
    from aiida import orm

    from aiida_alml.data import MlipModel
    from aiida_alml.workflows.links import ACTIVE_LEARNING

    if isinstance(source, (int, str)) and not isinstance(source, bool):
        source = orm.load_node(source)
    if isinstance(source, Mapping):
        models = dict(source)
        what = 'the mapping'
    elif isinstance(source, orm.WorkflowNode) and source.process_type in (ACTIVE_LEARNING, COMMITTEE):
        what = f'{source.process_label}<{source.pk}>'
        if 'models' not in source.outputs:
            state = source.process_state.value if source.process_state else 'created'
            raise ValueError(f'{what} ({state}) has no output `models`: has it finished?')
        models = dict(source.outputs.models.items())
    else:
        kind = getattr(source, 'process_type', None) or type(source).__name__
        raise TypeError(f'expected an alml.active_learning or alml.committee run (PK, UUID or node) or a mapping of '
                        f'names to MlipModel nodes, got {kind}')
    if not models:
        raise ValueError(f'{what} holds no model')
    wrong = sorted(str(key) for key, model in models.items() if not isinstance(model, MlipModel))
    if wrong:
        raise TypeError(f'{what}: {", ".join(wrong)} {"is" if len(wrong) == 1 else "are"} not MlipModel nodes')
    return {str(key): models[key] for key in sorted(models, key=_member_order)}


def _member_order(key) -> tuple:
    """``member_2`` before ``member_10``; other names after, alphabetically."""
    prefix, _, number = str(key).rpartition('_')
    return (0, int(number), '') if prefix == 'member' and number.isdigit() else (1, 0, str(key))


def committee_calculator(source: Any, device: str = 'cpu', default_dtype: str = 'float64', **options):
    """The committee of ``source`` as an ASE calculator (:class:`~aiida_alml.engines.committee.CommitteeCalculator`).

    :param source: an ``alml.active_learning`` run (its final committee: outputs ``models``) or an ``alml.committee``
        run, as PK, UUID or node; or a mapping of names to ``MlipModel`` nodes.
    :param device: torch device (``'cpu'``, ``'cuda'``).
    :param default_dtype: ``'float64'`` or ``'float32'``.
    :param options: passed on to ``CommitteeCalculator`` (``strategy``, ``head``, ``radial``, ``convolution``,
        ``product_basis``).

    ``calc.results`` holds the committee means ``energy``, ``free_energy``, ``forces`` (and ``stress`` for periodic
    cells), the members' values (``energy_comm``, ``forces_comm``), their variances (``energy_var``, ``forces_var``),
    the per-atom force σ ``force_sigma`` = sqrt(Σ_xyz var(F)) and the energy σ ``energy_sigma`` = sqrt(energy_var)
    (population variances over the members). σ is the committee's own spread, not scaled by the campaign's
    calibration factor (``learning_curve['final_calibration_factor']``, fitted on earlier committees).
    """
    models = committee_models(source)
    with contextlib.ExitStack() as stack:
        # Each file is copied out of the repository and hashed there; the copy that was checked is the one loaded,
        # and it is hashed once more by the loader.
        paths = [stack.enter_context(model.verified_path()) for model in models.values()]
        members = load_committee(paths, device, default_dtype, expected_sha256=[m.sha256 for m in models.values()])
    calculator = CampaignCommitteeCalculator(models=members, device=device, **options)
    calculator.members = {key: model.uuid for key, model in models.items()}
    return calculator


class CampaignCommitteeCalculator(CommitteeCalculator):
    """The engine's committee calculator, with ``energy_sigma`` in ``results`` and the members' node UUIDs in
    ``members`` ({key: uuid})."""

    implemented_properties = [*CommitteeCalculator.implemented_properties, 'energy_sigma']

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.members: dict[str, str] = {}

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results['energy_sigma'] = float(np.sqrt(self.results['energy_var']))
