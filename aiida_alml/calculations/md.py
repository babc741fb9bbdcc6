"""``alml.md``: MD with a MACE committee (``alml-md`` on the compute node), recording per-atom uncertainty."""

from __future__ import annotations

import json
import math
import shutil

from aiida import orm
from aiida.common import datastructures
from aiida.engine import CalcJob

from aiida_alml.calculations.base import define_disk_full_exit_code, define_interruption_exit_code
from aiida_alml.data import MlipModel, ModelIntegrityError
from aiida_alml.engines.md import SUMMARY_FILE, TRAJECTORY_FILE, MdParameterError, validate_parameters

__all__ = ('MdCalculation', 'check_committee', 'check_md_grid', 'upload_committee')

INPUT_FILE = 'md.json'
STRUCTURE_FILE = 'structure.xyz'
STDOUT_FILE = 'alml-md.out'


def upload_committee(folder, members: list[MlipModel]) -> list[dict]:
    """Copy the members' model files into ``models/`` of the job's folder; their entries for the engine's input."""
    folder.get_subfolder('models', create=True)
    models = []
    for index, model in enumerate(members):
        path = f'models/member_{index}.model'
        # Copied through verified_path: the bytes that are uploaded are the ones whose hash was checked; the engine
        # checks them again on the node before loading (the file crossed a file system).
        with model.verified_path() as source:
            shutil.copyfile(source, folder.get_abs_path(path))
        models.append({'path': path, 'sha256': model.sha256, 'uuid': model.uuid})
    return models


def check_committee(models: list[MlipModel], elements: set[str] | None = None, name: str = 'models') -> str | None:
    """Why these models cannot form a committee (for ``elements``), or None. Checks the files' hashes too."""
    if len(models) < 2:
        return f'{name}: a committee needs at least two members to estimate an uncertainty, got {len(models)}'
    reference = models[0]
    for index, model in enumerate(models):
        for attribute in ('architecture', 'elements', 'dtype'):
            if getattr(model, attribute) != getattr(reference, attribute):
                return (
                    f'{name}: members disagree on {attribute}: {getattr(reference, attribute)!r} (member 0) vs '
                    f'{getattr(model, attribute)!r} (member {index})'
                )
        if not math.isclose(model.r_max, reference.r_max):
            return f'{name}: members disagree on r_max: {reference.r_max} (member 0) vs {model.r_max} (member {index})'
        try:
            model.verify()
        except ModelIntegrityError as error:
            return f'{name}: member {index}: {error}'
    if elements is not None and not elements <= set(reference.elements):
        return f'structure: has elements {sorted(elements - set(reference.elements))} the committee was not trained on'
    return None


def check_md_grid(inputs) -> str | None:
    """Why a workflow's ``structures`` namespace and ``md.models`` committee cannot run MD together, or None."""
    if not inputs.get('structures'):
        return 'structures: give at least one starting structure'
    models = [inputs['md']['models'][key] for key in sorted(inputs['md'].get('models', {}))]
    elements = set().union(*(structure.get_symbols_set() for structure in inputs['structures'].values()))
    return check_committee(models, elements, name='md.models')


def _validate_parameters(value, _):
    try:
        validate_parameters(value.get_dict())
    except MdParameterError as error:
        return f'parameters: {error}'
    return None


def _validate_inputs(inputs, ctx):
    if 'structure' not in ctx or 'models' not in ctx:
        return None  # exposed in a workflow without `structure`/`models`: the workflow checks its own
    models = [inputs['models'][key] for key in sorted(inputs.get('models', {}))]
    return check_committee(models, set(inputs['structure'].get_symbols_set()))


class MdCalculation(CalcJob):
    """Run MD with a committee of MACE models; stop early on high uncertainty, close contacts or non-finite numbers.

    ``parameters`` are those of :data:`aiida_alml.engines.md.DEFAULTS` (ensemble, temperature or a ramp, pressure,
    timestep in fs, steps, sample_interval, seed, stop_max_force_sigma, stop_patience, min_distance, ...).
    """

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input('structure', valid_type=orm.StructureData, help='Starting structure.')
        spec.input_namespace('models', valid_type=MlipModel, dynamic=True, help='Committee members (two or more).')
        spec.input('parameters', valid_type=orm.Dict, validator=_validate_parameters, help='MD settings.')
        spec.inputs.validator = _validate_inputs
        spec.inputs['metadata']['options']['resources'].default = {'num_machines': 1, 'num_mpiprocs_per_machine': 1}
        spec.inputs['metadata']['options']['parser_name'].default = 'alml.md'
        spec.inputs['metadata']['options']['withmpi'].default = False

        spec.output('trajectory', valid_type=orm.TrajectoryData, help='Sampled frames with uncertainty arrays.')
        spec.output('summary', valid_type=orm.Dict, help='Steps done, frames, stop reason, steps per second.')

        define_interruption_exit_code(spec)

        spec.exit_code(300, 'ERROR_MISSING_OUTPUT', message='alml-md wrote no {filename}: it did not run or crashed. {details}')
        spec.exit_code(301, 'ERROR_READING_OUTPUT', message='The output of alml-md could not be read: {error}')
        define_disk_full_exit_code(spec)
        spec.exit_code(310, 'ERROR_MODEL_HASH', message='A model file on the compute node did not match its SHA-256.')
        spec.exit_code(320, 'ERROR_NO_FRAMES', message='alml-md kept no frame: {reason}')

    def prepare_for_submission(self, folder):
        from aiida_alml.atoms.configurations import Configurations, write_extxyz

        members = [self.inputs.models[key] for key in sorted(self.inputs.models)]
        # Our writer keeps every bit of the positions (ASE's rounds to 8 decimals): the run starts where recorded.
        write_extxyz(Configurations.from_ase([self.inputs.structure.get_ase()]), folder.get_abs_path(STRUCTURE_FILE))
        spec = {
            'structure': STRUCTURE_FILE,
            'models': upload_committee(folder, members),
            'dtype': members[0].dtype,
            'parameters': self.inputs.parameters.get_dict(),
        }
        with folder.open(INPUT_FILE, 'w', encoding='utf-8') as handle:
            json.dump(spec, handle, indent=1, sort_keys=True)

        codeinfo = datastructures.CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = [INPUT_FILE]
        codeinfo.stdout_name = STDOUT_FILE
        codeinfo.join_files = True  # tracebacks land in the retrieved output

        calcinfo = datastructures.CalcInfo()
        calcinfo.codes_info = [codeinfo]
        calcinfo.retrieve_list = [TRAJECTORY_FILE, SUMMARY_FILE, STDOUT_FILE]
        return calcinfo
