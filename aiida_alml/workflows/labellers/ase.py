"""The ASE labeller of ``alml.label`` (``labeller='ase'``): one batched ``alml.ase`` job for the whole set, or
``ase.jobs`` of them on consecutive pieces (:func:`split_configurations`), each under an ``alml.ase.base`` that runs
it again when the scheduler cancelled or lost it (``max_relaunches``)."""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import calcfunction
from aiida.plugins import CalculationFactory

from aiida_alml.data.configurations import ConfigurationSet
from aiida_alml.workflows.ase_base import AseBaseWorkChain
from aiida_alml.workflows.base import base_inputs
from aiida_alml.workflows.job_resources import job_options_problem
from aiida_alml.workflows.submission import submit_once

__all__ = ('MAX_ASE_JOBS', 'split_configurations', 'ase_label_problem', 'submit_ase')

#: At most this many alml.ase jobs per labelling (``ase.jobs``): each is submitted at once.
MAX_ASE_JOBS = 256


@calcfunction
def split_configurations(structures: ConfigurationSet, parts: orm.Int) -> dict:
    """``parts`` consecutive pieces of ``structures`` (``part_<k>``), as equal in size as they come."""
    pieces = np.array_split(np.arange(structures.num_configurations), parts.value)
    return {f'part_{k}': ConfigurationSet(structures.configurations.select(piece.tolist()))
            for k, piece in enumerate(pieces)}


def ase_label_problem(inputs) -> str | None:
    """The checks alml.ase makes on its inputs, made here so that a campaign fails at launch, not in the daemon."""
    from aiida_alml.engines.calculators import validate_spec

    ase = inputs.get('ase', {})
    if 'code' not in ase or 'calculator' not in ase:
        return 'ase.code, ase.calculator: both are needed for labeller ase'

    spec = ase['calculator'].get_dict()
    properties = ase['properties'].get_list() if 'properties' in ase else ['energy', 'forces']
    # The calculator alone first (energy is always computed), then what it is asked to compute.
    for name, wanted in (('ase.calculator', ['energy']), ('ase.properties', properties)):
        try:
            validate_spec(spec, wanted)
        except (ValueError, TypeError, ImportError) as error:
            # CalculatorSpecError is a ValueError; TypeError and ImportError: what an odd name makes importlib raise.
            return f'{name}: {error}'
    if 'jobs' in ase and not 1 <= ase['jobs'].value <= MAX_ASE_JOBS:
        return f'ase.jobs: must be 1 to {MAX_ASE_JOBS} jobs, got {ase["jobs"].value}'
    if 'options' in ase:
        return job_options_problem(CalculationFactory('alml.ase'), ase['options'], 'ase.options', ase['code'])
    return None


def submit_ase(process, _index: None, structures: ConfigurationSet | None = None, link: str = 'ase'):
    ase = process.inputs.ase
    inputs = {
        'code': ase.code,
        'structures': structures if structures is not None else process.inputs.structures,
        'calculator': ase.calculator,
        'metadata': {'options': ase.options.get_dict() if 'options' in ase else {}},
    }
    if 'properties' in ase:
        inputs['properties'] = ase.properties
    return submit_once(process, AseBaseWorkChain, **base_inputs('ase', inputs, process.inputs.max_relaunches, link))
