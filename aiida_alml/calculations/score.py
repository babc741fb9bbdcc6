"""``alml.score``: a committee's predictions on labelled frames, computed in a job (``alml-md`` on the MD code's
computer) so that the daemon's machine never loads a model; the errors are computed from them by a calcfunction."""

from __future__ import annotations

import json

from aiida import orm
from aiida.common import datastructures
from aiida.engine import CalcJob

from aiida_alml.calculations.base import define_disk_full_exit_code, define_interruption_exit_code
from aiida_alml.calculations.md import STDOUT_FILE, check_committee, upload_committee
from aiida_alml.data import ConfigurationSet, MlipModel

__all__ = ('ScoreCalculation',)

INPUT_FILE = 'score.json'
FRAMES_FILE = 'frames.xyz'


def _validate_device(value, _):
    device = value.value
    if device != 'cpu' and not (device == 'cuda' or (device.startswith('cuda:') and device[5:].isdigit())):
        return f'device: must be cpu, cuda or cuda:N, got {device!r}'
    return None


def _validate_inputs(inputs, ctx):
    if 'frames' not in ctx or 'models' not in ctx:
        return None  # exposed in a workflow that checks its own
    models = [inputs['models'][key] for key in sorted(inputs.get('models', {}))]
    return check_committee(models, set(inputs['frames'].elements), name='models')


class ScoreCalculation(CalcJob):
    """Evaluate a committee of MACE models on ``frames``: output ``predictions`` (ArrayData) with per frame the mean
    ``energy`` and ``energy_sigma_per_atom``, per atom (frames concatenated) the mean ``forces`` and ``force_sigma``,
    and ``n_atoms``. Runs the ``alml-md`` executable (an ``alml.md`` code)."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input('frames', valid_type=ConfigurationSet, help='The frames to evaluate (e.g. a held-out test set).')
        spec.input_namespace('models', valid_type=MlipModel, dynamic=True, help='Committee members (two or more).')
        spec.input('device', valid_type=orm.Str, default=lambda: orm.Str('cpu'), validator=_validate_device,
                   help='Where the models run: cpu, cuda or cuda:N.')
        spec.inputs.validator = _validate_inputs
        spec.inputs['metadata']['options']['resources'].default = {'num_machines': 1, 'num_mpiprocs_per_machine': 1}
        spec.inputs['metadata']['options']['parser_name'].default = 'alml.score'
        spec.inputs['metadata']['options']['withmpi'].default = False

        spec.output('predictions', valid_type=orm.ArrayData, help='The committee\'s predictions on the frames.')

        define_interruption_exit_code(spec)
        spec.exit_code(300, 'ERROR_MISSING_OUTPUT', message='alml-md wrote no {filename}: it did not run or crashed. '
                                                            '{details}')
        spec.exit_code(301, 'ERROR_READING_OUTPUT', message='The output of alml-md could not be read: {error}')
        define_disk_full_exit_code(spec)
        spec.exit_code(310, 'ERROR_MODEL_HASH', message='A model file on the compute node did not match its SHA-256.')
        spec.exit_code(320, 'ERROR_WRONG_FRAMES', message='The predictions do not match the frames: {detail}')

    def prepare_for_submission(self, folder):
        from aiida_alml.atoms.configurations import write_extxyz

        members = [self.inputs.models[key] for key in sorted(self.inputs.models)]
        # Positions only matter: the labels stay in the database, where the errors are computed.
        write_extxyz(self.inputs.frames.configurations, folder.get_abs_path(FRAMES_FILE))
        spec = {
            'task': 'score',
            'frames': FRAMES_FILE,
            'models': upload_committee(folder, members),
            'dtype': members[0].dtype,
            'device': self.inputs.device.value,
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
        from aiida_alml.engines.score import SCORES_FILE

        calcinfo.retrieve_list = [SCORES_FILE, STDOUT_FILE]
        return calcinfo
