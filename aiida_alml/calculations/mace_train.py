"""``alml.mace.train``: train one MACE model with ``mace_run_train`` on labelled ConfigurationSets."""

from __future__ import annotations

import json
import math
import shutil
from typing import NamedTuple

import numpy as np
from aiida import orm
from aiida.common import datastructures
from aiida.engine import CalcJob

from aiida_alml.calculations.base import define_disk_full_exit_code, define_interruption_exit_code
from aiida_alml.data import ConfigurationSet, MlipModel, ModelIntegrityError
from aiida_alml.data.configurations import _ARRAYS_FILE  # the file of a flat set's repository that holds its arrays
# ISOLATED_ATOM and is_isolated_atom are defined with alml-train (no AiiDA there) and imported from here by others.
from aiida_alml.engines.train import (  # noqa: F401
    ISOLATED_ATOM, PARTS_FORMAT, PARTS_OPTION, is_isolated_atom, trained_indices,
)
from aiida_alml.formats.mace_options import MaceOptionError, check_parameters, known_options, to_command_line

__all__ = ('MaceTrainCalculation', 'TrainingSplit', 'average_e0s', 'isolated_atom_energies', 'stage_two_budget',
           'training_split')

MODEL_NAME = 'mace'  # mace_run_train --name: MACE writes mace.model, alml-train converts it to mace.alml
MODEL_FILE = f'{MODEL_NAME}.alml'
TRAIN_FILE = 'train.xyz'
VALID_FILE = 'valid.xyz'
TEST_FILE = 'test.xyz'
PARENT_FILE = 'parent.alml'
STDOUT_FILE = 'mace_run_train.out'
#: The plan from which alml-train writes train.xyz on the compute node, and the name of each part's copy there.
PARTS_PLAN_FILE = 'train_parts.json'
PART_FILE = 'train_part_{:05d}.npz'
# MACE defaults used by the input checks (they do not change between 0.3.x versions).
DEFAULT_BATCH_SIZE = 10
DEFAULT_VALID_FRACTION = 0.1
#: mace_run_train's names of the stage-two switch; stage two is on unless ``parameters`` sets one of them, or
#: trains for fewer than MIN_EPOCHS_STAGE_TWO epochs (MACE starts stage two at 3/4 of them, but after epoch 1 at
#: the latest).
STAGE_TWO_SWITCHES = ('swa', 'stage_two')
MIN_EPOCHS_STAGE_TWO = 8


class TrainingSplit(NamedTuple):
    """What MACE trains on per epoch: configurations, batch size and gradient steps (the incomplete batch dropped)."""

    configurations: int
    batch_size: int
    steps_per_epoch: int


def training_split(parameters: dict, num_configurations: int, validation_set: bool = False) -> TrainingSplit:
    """The training split of ``num_configurations`` (isolated atoms not counted) under ``parameters``: without a
    ``validation_set`` MACE keeps ``N - int(valid_fraction * N)`` for training; it drops the last incomplete batch."""
    n_train = num_configurations
    if not validation_set:
        n_train -= int(parameters.get('valid_fraction', DEFAULT_VALID_FRACTION) * n_train)
    batch_size = int(parameters.get('batch_size', DEFAULT_BATCH_SIZE))
    return TrainingSplit(n_train, batch_size, n_train // batch_size)


def stage_two_budget(parameters: dict, num_configurations: int, steps: int) -> dict:
    """``max_num_epochs``, ``start_swa`` and ``swa_lr`` for a training with ``parameters`` whose stage two has at least ``steps``
    gradient steps on ``num_configurations`` training configurations (isolated atoms not counted; the validation split
    by ``valid_fraction``). Stage one keeps MACE's length (3/4 of ``max_num_epochs``); stage two is MACE's last
    quarter or longer. Energies need it: a model learns E(V) and defect energies from energy labels alone (forces do
    not constrain them), and that happens in stage two."""
    epochs = int(parameters.get('max_num_epochs', known_options()['max_num_epochs'].default))
    stage_one = max(1, epochs // 4 * 3)  # MACE's start_swa when none is given
    steps_per_epoch = max(1, training_split(parameters, num_configurations).steps_per_epoch)
    stage_two = max(epochs - stage_one, -(-int(steps) // steps_per_epoch))
    budget = {'start_swa': stage_one, 'max_num_epochs': stage_one + stage_two}
    if 'swa_lr' not in parameters:
        # Stage two at the first stage's learning rate, not MACE's ten times lower swa_lr: at 1e-3, 400 steps hardly
        # moved the energies (demo data: 14.5 meV/atom in-sample, 1.1 at 1e-2). Not for the loop's short warm starts:
        # a few dozen steps at 1e-2 made their energies jump between iterations.
        budget['swa_lr'] = float(parameters.get('lr', known_options()['lr'].default))
    return budget


def isolated_atom_energies(configurations) -> dict[str, float]:
    """E0 per element from the configurations whose metadata says ``config_type: IsolatedAtom``."""
    from ase.data import chemical_symbols

    energies = {}
    if configurations.energy is None:
        return energies
    for index, meta in enumerate(configurations.metadata):
        if is_isolated_atom(meta, int(configurations.n_atoms[index])):
            number = int(configurations.numbers[configurations.atom_slice(index)][0])
            energies[chemical_symbols[number]] = float(configurations.energy[index])
    return energies


def average_e0s(configurations) -> dict[str, float]:
    """E0 per element fitted to the labelled energies (least squares of energy on composition), as MACE's ``--E0s
    average`` does: the E0s of ``e0s: average``, computed here on the whole current set and passed to MACE as numbers,
    so that they are recorded and a warm start uses them (MACE would keep the parent model's)."""
    from ase.data import chemical_symbols

    numbers = sorted({int(z) for z in configurations.numbers})
    counts = np.zeros((len(configurations), len(numbers)))
    for index in range(len(configurations)):
        present = configurations.numbers[configurations.atom_slice(index)]
        counts[index] = [np.count_nonzero(present == z) for z in numbers]
    solution, *_ = np.linalg.lstsq(counts, np.asarray(configurations.energy, dtype=np.float64), rcond=None)
    return {chemical_symbols[z]: float(energy) for z, energy in zip(numbers, solution)}


def _trained_count(training_set: ConfigurationSet) -> int:
    """How many configurations of ``training_set`` are trained on (not isolated atoms), from its attributes when it
    records its isolated atoms (sets stored before that attribute existed are loaded)."""
    isolated = training_set.isolated_atoms
    if isolated is None:
        return len(trained_indices(training_set.configurations))
    return training_set.num_configurations - isolated


def _check_labels(name: str, node: ConfigurationSet) -> str | None:
    missing = [label for label in ('energy', 'forces') if label not in node.labels]
    if missing:
        return f'{name}: MACE training needs energy and forces labels, the set has no {" and no ".join(missing)}'
    return None


def _resolve_e0s(inputs, training_set) -> dict[str, float] | str:
    """The E0s to use: the `e0s` input, else IsolatedAtom configurations, else 'average'. Raises ValueError.

    Only the IsolatedAtom case reads ``training_set``'s configurations; the others need its elements alone."""
    elements = set(training_set.elements)
    if 'e0s' in inputs:
        value = inputs['e0s']
        if isinstance(value, orm.Str):
            if value.value != 'average':
                raise ValueError(f'e0s: a string must be "average", got {value.value!r}')
            return 'average'
        e0s = value.get_dict()
        from ase.data import atomic_numbers

        unknown = [key for key in e0s if key not in atomic_numbers]
        if unknown:
            raise ValueError(f'e0s: keys must be element symbols, got {unknown}')
        bad = [key for key, energy in e0s.items()
               if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not math.isfinite(energy)]
        if bad:
            raise ValueError(f'e0s: energies of {bad} are not finite numbers')
        missing = sorted(elements - set(e0s))
        if missing:
            raise ValueError(f'e0s: no isolated-atom energy for {missing} (elements of the training set)')
        return {key: float(e0s[key]) for key in sorted(elements)}
    from_set = isolated_atom_energies(training_set.configurations)
    if from_set:
        missing = sorted(elements - set(from_set))
        if missing:
            raise ValueError(
                f'training_set: has IsolatedAtom configurations but none for {missing}; add them or give `e0s`'
            )
        return from_set
    return 'average'


def _e0s_problem(value) -> str | None:
    """What is wrong with ``e0s`` on its own (the elements it must cover are checked once the training set is known)."""
    from types import SimpleNamespace

    try:
        _resolve_e0s({'e0s': value}, SimpleNamespace(elements=()))
    except ValueError as error:
        return str(error)
    return None


def _validate_inputs(inputs, _):
    """Every check that needs more than one input, run before anything is written or submitted."""
    parameters = inputs['parameters'].get_dict() if 'parameters' in inputs else {}
    try:
        check_parameters(parameters)
    except MaceOptionError as error:
        return f'parameters: {error}'
    for name in ('training_set', 'validation_set', 'test_set'):
        if name in inputs and (message := _check_labels(name, inputs[name])):
            return message
    if 'e0s' in inputs and (message := _e0s_problem(inputs['e0s'])):
        return message
    if 'training_set' not in inputs:
        return None  # exposed by a workflow that supplies the training set later (it is a required port here)
    training = inputs['training_set']  # its attributes, not its arrays, where they suffice (issue 26)
    elements = set(training.elements)
    for name in ('validation_set', 'test_set'):
        if name in inputs and not set(inputs[name].elements) <= elements:
            extra = sorted(set(inputs[name].elements) - elements)
            return f'{name}: has elements {extra} that the training set does not contain'
    try:
        _resolve_e0s(inputs, training)
    except ValueError as error:
        return str(error)

    # MACE drops the last incomplete batch: with fewer configurations than one batch nothing is trained.
    split = training_split(parameters, _trained_count(training), validation_set='validation_set' in inputs)
    if split.steps_per_epoch < 1:
        return (
            f'training_set: {split.configurations} configurations are left for training (after the validation split '
            f'and without isolated atoms) but batch_size is {split.batch_size}: give more configurations or a '
            'smaller batch_size'
        )

    if 'restart_folder' in inputs:
        # Checkpoints are named after the seed: another seed would silently start over instead of continuing.
        creator = inputs['restart_folder'].creator
        previous = creator.inputs.seed.value if creator is not None and 'seed' in creator.inputs else None
        seed = inputs['seed'].value if 'seed' in inputs else 1
        if previous is not None and previous != seed:
            return f'restart_folder: comes from a run with seed {previous}, this one has seed {seed}: they must agree'

    if 'parent_model' in inputs:
        parent: MlipModel = inputs['parent_model']
        try:
            parent.verify()
        except ModelIntegrityError as error:
            return f'parent_model: {error}'
        if parent.architecture != 'MACE':
            return f'parent_model: a MACE model is needed to continue training, got {parent.architecture!r}'
        if not elements <= set(parent.elements):
            return f'parent_model: was trained on {parent.elements}, the training set also has {sorted(elements - set(parent.elements))}'
        if 'r_max' in parameters and not math.isclose(float(parameters['r_max']), parent.r_max):
            return f'parameters: r_max {parameters["r_max"]} differs from the parent model r_max {parent.r_max}'
        dtype = parameters.get('default_dtype', 'float64')
        if dtype != parent.dtype:
            return f'parameters: default_dtype {dtype} differs from the parent model dtype {parent.dtype}'
    return None


class MaceTrainCalculation(CalcJob):
    """Train a MACE model with ``mace_run_train``.

    ``parameters`` are ``mace_run_train`` options without dashes (``{'num_channels': 8, 'max_L': 0, ...}``); on/off
    flags take true/false. Files, seed, keys, E0s, warm start and restart are set through their own inputs so that
    each is a node in the provenance graph. On a GPU node give ``device: cuda`` and the scheduler's GPU request in
    ``metadata.options.custom_scheduler_commands`` (see docs/mace.md).

    ``train.xyz`` is written in one of two ways, and the command line of the submit script says which:

    * a composed ``training_set`` (a merged training set) with ``e0s`` given as numbers: AiiDA copies each part's
      npz file into the job folder (``train_part_00000.npz``, ...) and alml-train writes train.xyz from them on the
      compute node, as ``--alml_train_parts train_parts.json`` on the command line shows (the plan lists the files
      with the size and content hash of each part; the job's output says
      ``alml-train: assembled train.xyz from K parts, N configurations``). The daemon reads none of the arrays, so
      its work per training does not grow with the training set, and train.xyz is not stored in the job's node;
    * otherwise (a flat set, or E0s that need the configurations: ``average`` or the set's IsolatedAtom ones), the
      daemon writes train.xyz itself. Both give the same file, byte for byte.
    """

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input('training_set', valid_type=ConfigurationSet, help='Labelled configurations (energy and forces).')
        spec.input('validation_set', valid_type=ConfigurationSet, required=False,
                   help='Validation configurations; without it MACE splits off `valid_fraction` of the training set.')
        spec.input('test_set', valid_type=ConfigurationSet, required=False, help='Test configurations.')
        spec.input('parameters', valid_type=orm.Dict, default=lambda: orm.Dict({}),
                   help='mace_run_train options, e.g. {"num_channels": 8, "max_L": 0, "max_num_epochs": 5}.')
        spec.input('seed', valid_type=orm.Int, default=lambda: orm.Int(1), help='Seed of the initial weights and split.')
        spec.input('e0s', valid_type=(orm.Dict, orm.Str), required=False,
                   help='Isolated-atom energies {symbol: eV} or "average"; default: the IsolatedAtom configurations '
                   'of the training set, else "average".')
        spec.input('parent_model', valid_type=MlipModel, required=False,
                   help='Warm start: continue from this model (mace_run_train --foundation_model).')
        spec.input('restart_folder', valid_type=orm.RemoteData, required=False,
                   help='Remote folder of an interrupted run: its checkpoints are copied and training continues.')
        spec.inputs.validator = _validate_inputs
        spec.inputs['metadata']['options']['resources'].default = {'num_machines': 1, 'num_mpiprocs_per_machine': 1}
        spec.inputs['metadata']['options']['parser_name'].default = 'alml.mace.train'
        spec.inputs['metadata']['options']['withmpi'].default = False

        spec.output('model', valid_type=MlipModel, help='The trained model (hash-pinned).')
        spec.output('metrics', valid_type=orm.Dict, help='Final RMSE/MAE of energy per atom and forces per set.')
        spec.output('training_curve', valid_type=orm.ArrayData, help='Validation errors per epoch.')

        define_interruption_exit_code(spec)

        spec.exit_code(300, 'ERROR_MISSING_OUTPUT', message='mace_run_train wrote no log: it did not run or crashed.')
        spec.exit_code(301, 'ERROR_REFUSED_BY_ALML_TRAIN',
                       message='alml-train refused the command line or a file before training: {details}')
        define_disk_full_exit_code(spec)
        spec.exit_code(310, 'ERROR_NO_MODEL', message='mace_run_train wrote no model file: {details}')
        spec.exit_code(320, 'ERROR_NAN_LOSS', message='The loss became NaN at epoch {epoch}.')
        spec.exit_code(400, 'ERROR_OUT_OF_WALLTIME',
                       message='Training ran out of walltime at epoch {epoch}: restart with `restart_folder` set to '
                       'this job\'s remote_folder to continue from its checkpoints.')

    def prepare_for_submission(self, folder):
        training_set = self.inputs.training_set
        e0s = _resolve_e0s(self.inputs, training_set)
        calcinfo = datastructures.CalcInfo()
        calcinfo.local_copy_list = []
        if training_set.is_composed and isinstance(self.inputs.get('e0s'), orm.Dict):
            # Nothing here needs the arrays: the parts go to the job as they are stored, alml-train writes train.xyz.
            calcinfo.local_copy_list, plan = _parts_plan(training_set)
            with folder.open(PARTS_PLAN_FILE, 'w', encoding='utf-8') as handle:
                json.dump(plan, handle, indent=1)
            arguments = [PARTS_OPTION, PARTS_PLAN_FILE]
        else:
            training = training_set.configurations
            # Isolated atoms give the E0s; MACE would drop them from training anyway (keep_isolated_atoms=False).
            # trained_indices is alml-train's own rule, so both routes leave out the same configurations.
            trained = training.select(trained_indices(training))
            if e0s == 'average':
                e0s = average_e0s(trained)
            from aiida_alml.atoms.configurations import write_extxyz

            write_extxyz(trained, folder.get_abs_path(TRAIN_FILE))
            arguments = []
        arguments += ['--name', MODEL_NAME, '--seed', str(self.inputs.seed.value), '--train_file', TRAIN_FILE]
        if 'validation_set' in self.inputs:
            self.inputs.validation_set.write_extxyz(folder.get_abs_path(VALID_FILE))
            arguments += ['--valid_file', VALID_FILE]
        if 'test_set' in self.inputs:
            self.inputs.test_set.write_extxyz(folder.get_abs_path(TEST_FILE))
            arguments += ['--test_file', TEST_FILE]
        arguments += ['--E0s', repr(_by_atomic_number(e0s))]
        arguments += ['--energy_key', 'REF_energy', '--forces_key', 'REF_forces', '--stress_key', 'REF_stress']
        arguments += ['--work_dir', '.']
        if 'parent_model' in self.inputs:
            # Copy through verified_path: what is checked against the hash is exactly what is uploaded.
            with self.inputs.parent_model.verified_path() as path:
                shutil.copyfile(path, folder.get_abs_path(PARENT_FILE))
            arguments += ['--foundation_model', PARENT_FILE]
        calcinfo.remote_copy_list = []
        if 'restart_folder' in self.inputs:
            remote = self.inputs.restart_folder
            calcinfo.remote_copy_list.append(
                (remote.computer.uuid, f'{remote.get_remote_path()}/checkpoints', 'checkpoints')
            )
            arguments.append('--restart_latest')
        parameters = self.inputs.parameters.get_dict()
        epochs = int(parameters.get('max_num_epochs', known_options()['max_num_epochs'].default))
        if not any(name in parameters for name in STAGE_TWO_SWITCHES) and epochs >= MIN_EPOCHS_STAGE_TWO:
            # MACE's recipe for learning energies: the last quarter of the epochs with energy weight 1000 (forces
            # 100). With the first stage's weights alone (energy 1, forces 100) energies were not learned: models
            # missed their own training energies by 60-175 meV/atom (issue 28). Not for a few epochs: MACE would
            # start stage two after the first, and forces would hardly be trained.
            arguments.append('--swa')
        arguments += to_command_line(parameters)

        codeinfo = datastructures.CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = arguments
        codeinfo.stdout_name = STDOUT_FILE
        # MACE logs to stderr too; keep it in the same file so that nothing is lost.
        codeinfo.join_files = True

        calcinfo.codes_info = [codeinfo]
        # Checkpoints stay in the remote folder (they can be large): a restart copies them from there.
        # Only our model file comes back: MACE's own pickle stays on the compute node (loading a pickle runs code).
        calcinfo.retrieve_list = [MODEL_FILE, 'logs', 'results', STDOUT_FILE]
        return calcinfo


def _parts_plan(training_set: ConfigurationSet) -> tuple[list[tuple[str, str, str]], dict]:
    """The ``local_copy_list`` entries that copy each part's npz file into the job folder, and the plan that lists
    them for alml-train, in order, with the size and content hash recorded for each part (attributes only)."""
    parts = training_set.part_nodes()  # one query; refuses parts that are missing or changed
    copies = [(part.uuid, _ARRAYS_FILE, PART_FILE.format(index)) for index, part in enumerate(parts)]
    plan = {'format': PARTS_FORMAT, 'parts': [
        {'file': PART_FILE.format(index), 'num_configurations': part.num_configurations,
         'content_hash': part.content_hash} for index, part in enumerate(parts)]}
    return copies, plan


def _by_atomic_number(e0s: dict[str, float]) -> dict[int, float]:
    from ase.data import atomic_numbers

    return {atomic_numbers[symbol]: float(np.float64(energy)) for symbol, energy in e0s.items()}
