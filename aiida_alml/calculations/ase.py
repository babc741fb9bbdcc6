"""``alml.ase``: label a ConfigurationSet with an ASE calculator, running ``alml-label`` on the compute node."""

from __future__ import annotations

import json

import numpy as np
from aiida import orm
from aiida.common import datastructures
from aiida.engine import CalcJob

from aiida_alml.calculations.base import define_disk_full_exit_code, define_interruption_exit_code
from aiida_alml.data import ConfigurationSet
from aiida_alml.engines.calculators import CalculatorSpecError, validate_spec

__all__ = ('AseLabelCalculation',)

STRUCTURES_FILE = 'structures.npz'
CALCULATOR_FILE = 'calculator.json'
LABELLED_FILE = 'labelled.npz'
REPORT_FILE = 'report.json'


def _validate_calculator(value, _):
    if value is None:
        return None
    try:
        validate_spec(value.get_dict(), ['energy'])
    except CalculatorSpecError as exception:
        return f'calculator: {exception}'
    return None


def _validate_inputs(inputs, _):
    """Cross-input checks: the calculator must deliver every requested property for every structure."""
    properties = inputs['properties'].get_list() if 'properties' in inputs else ['energy', 'forces']
    try:
        validate_spec(inputs['calculator'].get_dict(), properties)
    except CalculatorSpecError as exception:
        return f'calculator/properties: {exception}'
    if 'stress' in properties:
        pbc = inputs['structures'].configurations.pbc
        nonperiodic = np.flatnonzero(~pbc.all(axis=1))
        if len(nonperiodic):
            return (
                f'properties: stress was asked for but configurations {nonperiodic[:10].tolist()} are not periodic '
                'in all three directions'
            )
    return None


class AseLabelCalculation(CalcJob):
    """Compute reference energies, forces and (optionally) stress of every configuration with an ASE calculator.

    The calculator is built on the compute node from ``calculator`` = ``{'name': 'emt' | 'pkg.module:Class',
    'kwargs': {...}}``. A configuration whose evaluation raises or gives non-finite numbers is recorded as failed in
    ``output_parameters`` and left out of ``labelled``; the job fails only when none succeeds.
    """

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input('structures', valid_type=ConfigurationSet, help='The configurations to label.')
        spec.input(
            'calculator',
            valid_type=orm.Dict,
            validator=_validate_calculator,
            help="ASE calculator: {'name': short name (emt, lj, morse, gfn2-xtb, gfn1-xtb) or one registered in the "
                 "alml.calculators entry-point group, 'kwargs': {...}}.",
        )
        spec.input(
            'properties',
            valid_type=orm.List,
            default=lambda: orm.List(['energy', 'forces']),
            help='Properties to compute: energy, forces, stress (energy is always computed).',
        )
        spec.inputs.validator = _validate_inputs
        spec.inputs['metadata']['options']['resources'].default = {'num_machines': 1, 'num_mpiprocs_per_machine': 1}
        spec.inputs['metadata']['options']['parser_name'].default = 'alml.ase'
        spec.inputs['metadata']['options']['withmpi'].default = False

        spec.output('labelled', valid_type=ConfigurationSet, required=False, help='The configurations that succeeded.')
        spec.output('output_parameters', valid_type=orm.Dict, help='Per-configuration status and timings.')

        define_interruption_exit_code(spec)

        spec.exit_code(300, 'ERROR_MISSING_OUTPUT', message='The engine wrote no report: it did not run or crashed.')
        spec.exit_code(301, 'ERROR_READING_OUTPUT', message='The engine output could not be read: {error}')
        define_disk_full_exit_code(spec)
        spec.exit_code(310, 'ERROR_ALL_CONFIGURATIONS_FAILED', message='Not one configuration could be labelled.')

    def prepare_for_submission(self, folder):
        structures: ConfigurationSet = self.inputs.structures
        properties = list(self.inputs.properties.get_list())
        if 'energy' not in properties:
            properties.insert(0, 'energy')
        with folder.open(STRUCTURES_FILE, 'wb') as handle:
            # Labels and metadata are dropped on purpose: the engine needs only the geometry.
            geometry = structures.configurations.replace(energy=None, forces=None, stress=None, metadata=None)
            handle.write(geometry.to_npz_bytes())
        with folder.open(CALCULATOR_FILE, 'w', encoding='utf-8') as handle:
            json.dump(self.inputs.calculator.get_dict(), handle, sort_keys=True, indent=1)

        codeinfo = datastructures.CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = [
            '--structures', STRUCTURES_FILE, '--calculator', CALCULATOR_FILE,
            '--output', LABELLED_FILE, '--report', REPORT_FILE, '--properties', *properties,
        ]
        codeinfo.stdout_name = 'alml-label.out'

        calcinfo = datastructures.CalcInfo()
        calcinfo.codes_info = [codeinfo]
        calcinfo.retrieve_list = [LABELLED_FILE, REPORT_FILE, 'alml-label.out']
        return calcinfo
