"""``alml.mace.train``: input checks (no training), a trained model, warm start and restart after a walltime kill."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_alml.calculations.mace_train import MaceTrainCalculation
from aiida_alml.data import ConfigurationSet, MlipModel
from aiida_alml.formats.mace_options import MaceOptionError, check_parameters, to_command_line
from aiida_alml.parsers.mace_train import parse_error_tables


def _refused(inputs, match):
    """The calculation must be refused at validation, before anything is written or run."""
    with pytest.raises(ValueError, match=match):
        run_get_node(MaceTrainCalculation, **inputs)


# ---------------------------------------------------------------------- options
def test_unknown_option_names_the_closest_known_ones():
    with pytest.raises(MaceOptionError, match=r'`num_chanels` is not an option.*did you mean num_channels'):
        check_parameters({'num_chanels': 8})


def test_reserved_option_says_which_input_to_use():
    with pytest.raises(MaceOptionError, match=r'`train_file` is set by the calculation itself: use the `training_set`'):
        check_parameters({'train_file': 'mine.xyz'})
    with pytest.raises(MaceOptionError, match=r'`foundation_model`.*`parent_model`'):
        check_parameters({'foundation_model': 'small'})


def test_values_are_checked_with_mace_types():
    with pytest.raises(MaceOptionError, match='batch_size'):
        check_parameters({'batch_size': 'ten'})
    with pytest.raises(MaceOptionError, match='on/off flag'):
        check_parameters({'swa': 'yes'})


@pytest.mark.parametrize(('parameters', 'message'), [
    ({'model': 'BOTNet'}, r"`model` 'BOTNet' cannot be trained here: the model file format \(alml.mace.v1\) holds "
                          r'ScaleShiftMACE, which MACE builds for `model` MACE or ScaleShiftMACE'),
    ({'distributed': True}, r'`distributed` may not be set: multi-process training \(torch.distributed\)'),
    ({'launcher': 'torchrun'}, r'`launcher` may not be set: multi-process training'),
    ({'dry_run': True}, r'`dry_run` may not be set: MACE would stop before training and write no model'),
    ({'config_type_weights': {'Default': 1.0}}, r'`config_type_weights` may not be set: the training files carry no '
                                                r'config_type'),
    ({'config': 'options.yaml'}, r'`config` may not be set: reads options from a YAML file'),
    ({'statistics_file': '/etc/shadow'}, r'`statistics_file` may not be set: reads a file on the compute node'),
    ({'pt_train_file': 'mp'}, r'`pt_train_file` may not be set: reads \(or, given `mp`, downloads\)'),
    ({'pt_valid_file': 'pt.xyz'}, r'`pt_valid_file` may not be set: reads pretraining data'),
    ({'heads': {'extra': {'train_file': '/etc/passwd'}}}, r'`heads` may not be set: defines heads with their own '
                                                          r'train_file'),
    ({'les_arguments': 'les.yaml'}, r'`les_arguments` may not be set: reads a YAML file'),
    ({'downloads_dir': 'd'}, r'`downloads_dir` may not be set: nothing may be downloaded'),
    ({'foundation_model_kwargs': {'model': 'x'}}, r'`foundation_model_kwargs` may not be set'),
    ({'wandb': True}, r'`wandb` may not be set: Weights & Biases'),
    ({'wandb_project': 'p'}, r'`wandb_project` may not be set: Weights & Biases'),
    ({'fixedpoint_update_config': '{}'}, r'`fixedpoint_update_config` may not be set: configures PolarMACE only'),
    ({'swa': True, 'stage_two': True}, r'`stage_two` and `swa` are the same option of mace_run_train: give one'),
])
def test_options_that_read_fetch_or_cannot_be_stored_are_refused(parameters, message):
    with pytest.raises(MaceOptionError, match=message):
        check_parameters(parameters)


@pytest.mark.parametrize(('parameters', 'message'), [
    ({'max_num_epochs': 10**9}, r'`max_num_epochs`: must be <= 100000, got 1000000000'),
    ({'num_channels': 2048}, r'`num_channels`: must be <= 1024'),
    ({'r_max': 25.0}, r'`r_max`: must be <= 20.0'),
    ({'max_L': 5}, r'`max_L`: must be <= 4'),
    ({'correlation': 6}, r'`correlation`: must be <= 5'),
    ({'num_interactions': 9}, r'`num_interactions`: must be <= 8'),
    ({'batch_size': 10**6}, r'`batch_size`: must be <= 4096'),
    ({'lora_rank': 10**30}, r'`lora_rank`: must be between -2147483647 and 2147483647'),
])
def test_sizes_have_upper_bounds(parameters, message):
    with pytest.raises(MaceOptionError, match=message):
        check_parameters(parameters)


def test_refusals_go_by_the_option_not_its_spelling(monkeypatch):
    """A spelling MACE may add for a refused option (argparse ``dest``) is refused too; a new text option is refused
    until reviewed, since it may take a path."""
    import argparse

    from aiida_alml.formats import mace_options

    options = dict(mace_options.known_options())
    options['stats_file'] = options['statistics_file']  # another spelling, same dest
    options['foundation'] = options['foundation_model']
    extra = argparse.ArgumentParser()
    options['new_source'] = extra.add_argument('--new_source', type=str)
    monkeypatch.setattr(mace_options, 'known_options', lambda: options)
    with pytest.raises(MaceOptionError, match=r'`stats_file` may not be set: reads a file on the compute node'):
        check_parameters({'stats_file': 'x'})
    with pytest.raises(MaceOptionError, match=r'`foundation` is set by the calculation itself: use the `parent_model`'):
        check_parameters({'foundation': 'x'})
    with pytest.raises(MaceOptionError, match=r'`new_source` may not be set: takes text that alml-train does not know'):
        check_parameters({'new_source': 'x'})


def test_production_settings_pass():
    """What real trainings use stays allowed: both model names our format holds, flags switched off, big models."""
    check_parameters({'model': 'MACE', 'num_channels': 256, 'max_L': 2, 'r_max': 6.0, 'correlation': 3,
                      'num_interactions': 2, 'batch_size': 64, 'max_num_epochs': 5000, 'distributed': False,
                      'wandb': False, 'radial_MLP': [64, 64, 64], 'MLP_irreps': '16x0e', 'lr': 0.01})
    check_parameters({'model': 'ScaleShiftMACE', 'stage_two': True})


def test_command_line_mapping():
    arguments = to_command_line({'swa': True, 'ema': False, 'radial_MLP': [8, 8], 'max_num_epochs': 3, 'plot': False})
    assert arguments == ['--max_num_epochs', '3', '--plot', 'False', '--radial_MLP', '[8, 8]', '--swa']


def test_error_table_parsing():
    log = """x INFO: Error-table on TRAIN and VALID:
+---------------+---------------------+------------------+-------------------+
|  config_type  | RMSE E / meV / atom | RMSE F / meV / A | relative F RMSE % |
+---------------+---------------------+------------------+-------------------+
| train_Default |         3134.1      |        202.1     |         42.26     |
| valid_Default |         3132.9      |        255.0     |         40.54     |
+---------------+---------------------+------------------+-------------------+"""
    tables = parse_error_tables(log)
    assert tables['train']['rmse_e_per_atom'] == pytest.approx(3.1341)
    assert tables['valid']['rmse_f'] == pytest.approx(0.255)


# ---------------------------------------------------------------------- bad inputs, refused before running
def test_unknown_parameter_refused_by_the_calculation(tiny_mace_inputs):
    _refused(tiny_mace_inputs(max_L=0, num_chanels=8), 'did you mean num_channels')


def test_training_set_without_forces(tiny_mace_inputs, emt_labelled):
    images = []
    for atoms in emt_labelled:
        image = atoms.copy()  # the copy has no calculator, so no forces
        image.info['REF_energy'] = atoms.get_potential_energy()
        images.append(image)
    energies_only = ConfigurationSet.from_ase(images)
    assert energies_only.labels == ['energy']
    _refused({**tiny_mace_inputs(), 'training_set': energies_only}, r'training_set: .*no forces')


def test_fewer_configurations_than_a_batch(tiny_mace_inputs):
    # 20 cells, 20 % split off for validation: 16 are left, fewer than a batch of 32.
    _refused(tiny_mace_inputs(batch_size=32), r'training_set: 16 configurations .* batch_size is 32')


def test_e0s_must_cover_the_elements(tiny_mace_inputs):
    _refused({**tiny_mace_inputs(), 'e0s': orm.Dict({'Ag': -0.1})}, r"e0s: no isolated-atom energy for \['Cu'\]")
    _refused({**tiny_mace_inputs(), 'e0s': orm.Str('guess')}, r'e0s: a string must be "average"')


def test_parent_model_with_a_changed_file_is_refused(tiny_mace_inputs, tmp_path):
    from helpers.mace import model_file

    path = model_file(tmp_path / 'fake.alml', seed=1)
    parent = MlipModel(file=path)
    path.write_bytes(b'tampered bytes')
    parent.base.repository.put_object_from_file(str(path), parent.filename)
    _refused({**tiny_mace_inputs(), 'parent_model': parent}, r'parent_model: .*does not match|parent_model: .*SHA-256')


def test_parent_model_r_max_conflict(tiny_mace_inputs, tmp_path):
    from helpers.mace import model_file

    parent = MlipModel(file=model_file(tmp_path / 'parent.alml', r_max=5.0))
    _refused({**tiny_mace_inputs(), 'parent_model': parent}, r'r_max 4.0 differs from the parent model r_max 5.0')


# ---------------------------------------------------------------------- trained models
def test_a_refusal_of_alml_train_is_its_own_exit_code(tiny_mace_inputs):
    """A model file planted in the job folder before training: alml-train refuses it (it would be loaded unpickled
    as the result) and the calculation says so, instead of 'wrote no log'."""
    inputs = tiny_mace_inputs()
    inputs['metadata']['options']['prepend_text'] = 'echo planted > mace.model'
    _, node = run_get_node(MaceTrainCalculation, **inputs)
    assert node.exit_status == MaceTrainCalculation.exit_codes.ERROR_REFUSED_BY_ALML_TRAIN.status
    assert 'mace.model exists before training and would be taken for its result' in node.exit_message
    assert 'model' not in node.outputs


@pytest.mark.slow
def test_committee_members_are_trained_models(trained_committee):
    node, models = trained_committee
    summary = node.outputs.summary.get_dict()
    assert [summary[f'member_{i}']['seed'] for i in range(2)] == [1, 2]
    for index, model in enumerate(models):
        assert model.architecture == 'MACE'
        assert model.elements == ['Cu']
        assert model.r_max == pytest.approx(4.0)
        assert model.dtype == 'float64'
        assert model.seed == index + 1
        model.verify()
        metrics = summary[f'member_{index}']['metrics']
        for subset in ('train', 'valid'):
            assert np.isfinite(metrics[subset]['rmse_f']) and metrics[subset]['rmse_f'] > 0
        assert {'rmse_e_per_atom', 'mae_e_per_atom', 'rmse_f', 'mae_f'} <= set(metrics['valid'])
    assert models[0].sha256 != models[1].sha256  # different seeds give different weights
    calc = next(child for child in node.called_descendants if child.process_class is MaceTrainCalculation)
    curve = calc.outputs.training_curve
    # The initial evaluation (epoch -1) and one per epoch.
    assert curve.get_array('epoch').tolist() == [-1, 0, 1, 2]
    log = calc.outputs.retrieved.base.repository.get_object_content(f'logs/mace_run-{calc.inputs.seed.value}.log')
    # E0 from the IsolatedAtom configuration of the set, not MACE's average.
    e0 = cu_e0()
    assert f'{{29: {e0!r}}}' in log


def cu_e0():
    from ase import Atoms
    from ase.calculators.emt import EMT

    atom = Atoms('Cu', positions=[[0.0, 0.0, 0.0]], cell=[12.0, 12.0, 12.0], pbc=False)
    atom.calc = EMT()
    return float(atom.get_potential_energy())


@pytest.mark.slow
def test_warm_start_continues_from_the_parent(trained_committee, tiny_mace_inputs):
    parent_work, models = trained_committee
    parent = models[0]
    parent_calc = parent.creator
    _, child = run_get_node(
        MaceTrainCalculation, **{**tiny_mace_inputs(max_num_epochs=1), 'parent_model': parent, 'seed': orm.Int(1)}
    )
    assert child.is_finished_ok, child.exit_message
    parent_curve, child_curve = parent_calc.outputs.training_curve, child.outputs.training_curve
    best = parent_calc.outputs.metrics['best_epoch']
    parent_epochs = parent_curve.get_array('epoch')
    parent_best_rmse_f = parent_curve.get_array('rmse_f')[parent_epochs == best][0]
    # Same seed, same split: before its first update the child is the parent's best model on the same validation set.
    assert child_curve.get_array('rmse_f')[0] == pytest.approx(parent_best_rmse_f, rel=1e-6)
    # A fresh start begins far worse: the parent needed `best + 1` epochs to get where the child starts.
    assert child_curve.get_array('rmse_f')[0] < 0.8 * parent_curve.get_array('rmse_f')[0]
    assert best >= 0


@pytest.mark.slow
def test_walltime_kill_then_restart_continues_from_checkpoints(tiny_mace_inputs):
    inputs = tiny_mace_inputs(max_num_epochs=2)
    inputs['seed'] = orm.Int(5)
    # What SLURM does at the time limit: the trainer dies before writing the model, the message goes to stderr.
    inputs['metadata']['options']['append_text'] = (
        'rm -f mace.model\necho "slurmstepd: *** JOB 1 CANCELLED AT 2026-01-01 DUE TO TIME LIMIT ***" >&2\n'
    )
    _, killed = run_get_node(MaceTrainCalculation, **inputs)
    assert killed.exit_status == MaceTrainCalculation.exit_codes.ERROR_OUT_OF_WALLTIME.status
    assert 'restart_folder' in killed.exit_message

    restart = tiny_mace_inputs(max_num_epochs=4)
    restart.update(seed=orm.Int(5), restart_folder=killed.outputs.remote_folder)
    _, node = run_get_node(MaceTrainCalculation, **restart)
    assert node.is_finished_ok, node.exit_message
    epochs = node.outputs.training_curve.get_array('epoch')
    # Continued: no epoch 0 again, the first trained epoch follows the checkpointed one.
    assert epochs[0] == -1 and epochs[1] >= 1 and epochs[-1] == 3
    assert node.outputs.metrics['epochs'] == len(epochs) - 1


def test_restart_with_another_seed_is_refused(trained_committee, tiny_mace_inputs):
    member = trained_committee[1][0].creator
    inputs = {**tiny_mace_inputs(), 'seed': orm.Int(99), 'restart_folder': member.outputs.remote_folder}
    _refused(inputs, r'restart_folder: comes from a run with seed 1, this one has seed 99')


# ---------------------------------------------------------------------- E0s and the energy weight (issue 28)
def test_average_e0s_are_maces_least_squares_on_the_current_set(emt_labelled):
    """``e0s: average`` is computed here, on the set this training gets, the way MACE computes it."""
    from types import SimpleNamespace

    from ase.build import bulk
    from ase.calculators.emt import EMT
    from mace.data.utils import compute_average_E0s
    from mace.tools import AtomicNumberTable

    from aiida_alml.calculations.mace_train import average_e0s

    images = []
    for index, atoms in enumerate([bulk('Cu', 'fcc', a=3.6, cubic=True), bulk('Au', 'fcc', a=4.08, cubic=True)] * 3):
        atoms = atoms.repeat((1, 1, 1 + index % 2))
        for swap in range(index):
            atoms[swap].symbol = 'Au' if atoms[swap].symbol == 'Cu' else 'Cu'
        atoms.rattle(0.05, seed=index)
        atoms.calc = EMT()
        atoms.info['REF_energy'] = atoms.get_potential_energy()
        atoms.arrays['REF_forces'] = atoms.get_forces()
        atoms.calc = None
        images.append(atoms)
    node = ConfigurationSet.from_ase(images)
    ours = average_e0s(node.configurations)
    collection = [SimpleNamespace(properties={'energy': atoms.info['REF_energy']}, atomic_numbers=atoms.numbers)
                  for atoms in images]
    theirs = compute_average_E0s(collection, AtomicNumberTable([29, 79]))
    assert ours == pytest.approx({'Cu': theirs[29], 'Au': theirs[79]}, abs=1e-10)
    assert ours['Cu'] != pytest.approx(ours['Au'], abs=1e-3)  # two elements, two different E0s


def _dry_run_command_line(inputs) -> str:
    inputs = {**inputs, 'metadata': {**inputs['metadata'], 'dry_run': True, 'store_provenance': False}}
    _, node = run_get_node(MaceTrainCalculation, **inputs)
    import pathlib

    return (pathlib.Path(node.dry_run_info['folder']) / '_aiidasubmit.sh').read_text()


def test_stage_two_is_on_unless_switched_off(tiny_mace_inputs, tmp_path, monkeypatch):
    """MACE's recipe for energies (energy weight raised for the last epochs) is the default from 8 epochs on;
    ``swa: false`` (or ``stage_two: false``) leaves it out. E0s always reach MACE as numbers."""
    monkeypatch.chdir(tmp_path)  # a dry run writes its folder under the working directory
    script = _dry_run_command_line({**tiny_mace_inputs(max_num_epochs=8), 'e0s': orm.Str('average')})
    assert "'--swa'" in script or ' --swa' in script
    assert "'--E0s' '{29:" in script  # average computed here, passed as a number
    for switch in ('swa', 'stage_two'):
        assert '--swa' not in _dry_run_command_line(tiny_mace_inputs(max_num_epochs=8, **{switch: False}))
    # with 7 epochs or fewer MACE would begin stage two after the first: forces would hardly be trained
    assert '--swa' not in _dry_run_command_line(tiny_mace_inputs(max_num_epochs=7))


def test_stage_two_budget_of_a_final_training():
    """At least the asked gradient steps in stage two (MACE drops the incomplete batch), never shorter than MACE's
    last quarter, and at the first stage's learning rate unless swa_lr is given."""
    from aiida_alml.calculations.mace_train import stage_two_budget

    warm = {'max_num_epochs': 10, 'batch_size': 4, 'valid_fraction': 0.15}
    # 30 configurations, 4 for validation, 26 // 4 = 6 steps an epoch: 67 epochs for 400 steps after epoch 6
    assert stage_two_budget(warm, 30, 400) == {'start_swa': 6, 'max_num_epochs': 73, 'swa_lr': 0.01}
    assert stage_two_budget({**warm, 'lr': 0.005, 'swa_lr': 0.002}, 30, 400) == {'start_swa': 6, 'max_num_epochs': 73}
    assert stage_two_budget({**warm, 'lr': 0.005}, 30, 400)['swa_lr'] == 0.005
    # a large dataset: MACE's own stage two (the last quarter of 200 epochs) is already longer than 400 steps
    assert stage_two_budget({'max_num_epochs': 200, 'batch_size': 5}, 5000, 400)['max_num_epochs'] == 200
    # MACE's defaults (batch 10, 10 % validation) when the parameters do not say
    assert stage_two_budget({'max_num_epochs': 4}, 100, 45) == {'start_swa': 3, 'max_num_epochs': 8, 'swa_lr': 0.01}


def test_alml_train_accepts_the_calculations_command_line(tiny_mace_inputs, tmp_path, monkeypatch):
    """What prepare_for_submission writes passes alml-train's own check word for word (warm start included)."""
    import shlex

    from helpers.mace import model_file

    from mace.tools import build_default_arg_parser

    from aiida_alml.engines.train import argv_problems

    monkeypatch.chdir(tmp_path)
    parent = MlipModel(file=model_file(tmp_path / 'parent.alml', r_max=4.0))
    inputs = {**tiny_mace_inputs(max_num_epochs=8, radial_MLP=[8, 8], plot=False), 'parent_model': parent}
    line = next(line for line in _dry_run_command_line(inputs).splitlines() if 'alml-train' in line)
    words = shlex.split(line)
    argv = words[words.index(next(word for word in words if word.endswith('alml-train'))) + 1:words.index('>')]
    assert '--foundation_model' in argv and '--swa' in argv
    assert argv_problems(argv, build_default_arg_parser()) == []


@pytest.mark.slow
def test_warm_start_trains_with_the_given_e0s_not_the_parents(trained_committee, tiny_mace_inputs):
    """MACE copies every buffer of the foundation model, E0s included: the E0s given to a warm start were logged but
    never used. The child must hold (and record) the E0s it was given."""
    parent = trained_committee[1][0]
    assert parent.creator.outputs.metrics['e0s'] == {'Cu': pytest.approx(cu_e0())}
    shifted = cu_e0() - 0.25
    inputs = {**tiny_mace_inputs(max_num_epochs=2), 'parent_model': parent, 'e0s': orm.Dict({'Cu': shifted})}
    _, child = run_get_node(MaceTrainCalculation, **inputs)
    assert child.is_finished_ok, child.exit_message
    assert child.outputs.metrics['e0s'] == {'Cu': pytest.approx(shifted)}
    from aiida_alml.engines.model_format import read_header

    with child.outputs.model.verified_path() as path:
        assert read_header(path)['e0s'] == {'Cu': pytest.approx(shifted)}


def _demo_energy_sets():
    """The demo's data, labelled in-process with EMT: its 16 perturbed initial cells (scratch training), those plus
    14 frames of vacancy-cell MD at 300 and 600 K (warm start), and its held-out frames (900 K)."""
    import pathlib

    import aiida_alml
    from ase import units
    from ase.calculators.emt import EMT
    from ase.io import read
    from ase.md.langevin import Langevin

    from aiida_alml.atoms.perturb import perturbed_copies

    demo = pathlib.Path(aiida_alml.__file__).parent / 'protocols' / 'demo'

    def labelled(atoms):
        atoms = atoms.copy()
        atoms.calc = EMT()
        atoms.info['REF_energy'] = atoms.get_potential_energy()
        atoms.arrays['REF_forces'] = atoms.get_forces()
        atoms.calc = None
        return atoms

    initial = [labelled(atoms) for atoms in perturbed_copies(read(demo / 'copper_initial.xyz', ':'), count=16,
                                                             rattle_std=0.04, max_strain=0.02, seed=1)]
    frames = []
    for temperature, seed in ((300.0, 1), (600.0, 2)):
        atoms = read(demo / 'copper_vacancy.xyz')
        atoms.calc = EMT()
        dynamics = Langevin(atoms, 2 * units.fs, temperature_K=temperature, friction=0.02,
                            rng=np.random.default_rng(seed))
        for _ in range(7):
            dynamics.run(15)
            frames.append(labelled(atoms))
    return initial, initial + frames, ConfigurationSet.from_extxyz(demo / 'copper_test.xyz')


def _energy_errors(model: MlipModel, node: ConfigurationSet) -> np.ndarray:
    """Per-atom energy errors (eV) of ``model`` on a labelled set, with MACE's own calculator."""
    from aiida_alml.engines.committee import CommitteeCalculator

    with model.verified_path() as path:
        calculator = CommitteeCalculator(model_paths=[str(path)] * 2, default_dtype='float64')
        errors = []
        for index, atoms in enumerate(node.to_ase()):
            atoms.calc = calculator
            errors.append((atoms.get_potential_energy() - node.configurations.energy[index]) / len(atoms))
    return np.array(errors)


@pytest.mark.slow
def test_a_final_training_reproduces_its_own_training_energies(mace_train_code):
    """Issue 28, on the demo's data and model: a scratch model, then a warm start on more data as the campaign's final
    training makes it (isolated-atom E0s, a stage two of at least 400 steps at the first stage's learning rate).
    Before: the warm start kept the parent's E0s and the energy weighed 1 against forces 100, and models missed their
    own training energies by a near-constant 60-175 meV/atom; with MACE's stage two (28 steps at swa_lr 1e-3) they
    still missed them by 17 meV/atom, following the cell volume (E(V) is learned from energies alone)."""
    from conftest import mace_train_options

    from aiida_alml.calculations.mace_train import stage_two_budget

    initial, grown, held_out = _demo_energy_sets()
    e0s = orm.Dict({'Cu': cu_e0()})
    parameters = {'model': 'ScaleShiftMACE', 'num_channels': 16, 'max_L': 0, 'r_max': 4.5, 'num_interactions': 2,
                  'correlation': 2, 'batch_size': 4, 'valid_batch_size': 8, 'valid_fraction': 0.15,
                  'max_num_epochs': 25, 'default_dtype': 'float64', 'device': 'cpu'}
    common = {'code': mace_train_code, 'e0s': e0s, 'metadata': {'options': mace_train_options()}}
    first_set = ConfigurationSet.from_ase(initial).store()
    _, parent = run_get_node(MaceTrainCalculation, training_set=first_set, parameters=orm.Dict(parameters), **common)
    assert parent.is_finished_ok, parent.exit_message
    grown_set = ConfigurationSet.from_ase(grown).store()
    warm = {**parameters, 'max_num_epochs': 10}  # the demo's warm_start_parameters
    final = {**warm, **stage_two_budget(warm, len(grown), 400)}  # what the campaign's final training gets
    _, child = run_get_node(MaceTrainCalculation, training_set=grown_set, parent_model=parent.outputs.model,
                            parameters=orm.Dict(final), **common)
    assert child.is_finished_ok, child.exit_message
    assert child.outputs.metrics['stage_two'] and child.outputs.metrics['e0s'] == {'Cu': pytest.approx(cu_e0())}

    in_sample = _energy_errors(child.outputs.model, grown_set)
    outside = _energy_errors(child.outputs.model, held_out)
    rmse_in, rmse_out = np.sqrt(np.mean(in_sample**2)), np.sqrt(np.mean(outside**2))
    print(f'in-sample mean {in_sample.mean() * 1000:+.1f}, RMSE {rmse_in * 1000:.1f}; held-out mean '
          f'{outside.mean() * 1000:+.1f}, RMSE {rmse_out * 1000:.1f} meV/atom')
    # Measured outside AiiDA with the same settings: 1.1 meV/atom in-sample (mean +0.7), 4.8 held-out (900 K frames,
    # hotter than any training frame). No offset, and E(V) learned: no error grows with the cell volume.
    assert abs(in_sample.mean()) < 0.003, in_sample
    assert rmse_in < 0.004, rmse_in
    assert rmse_out < 0.010, (rmse_out, rmse_in)  # the goal for held-out frames (EMT)
