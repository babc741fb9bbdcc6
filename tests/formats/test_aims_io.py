"""Input generation of ``alml.aims``: files against hand-checked references, determinism and input validation."""

import pytest
from aiida import orm
from aiida.engine import run_get_node
from helpers.aims import DATA, aims_inputs, mock_aims_code, silicon_structure, species_folder, water_structure

from aiida_alml.calculations.aims import AimsCalculation
from aiida_alml.formats.aims_input import AimsInputError, read_geometry_in, write_control_in

SI_PARAMETERS = {
    'xc': 'pbe',
    'relativistic': 'atomic_zora scalar',
    'occupation_type': 'gaussian 0.01',
    'sc_iter_limit': 200,
    'charge_mix_param': 0.05,
    'output': [['hirshfeld'], ['mulliken']],
}


def _kpoints(mesh=(4, 4, 4)):
    kpoints = orm.KpointsData()
    kpoints.set_kpoints_mesh(list(mesh))
    return kpoints


def _prepare(inputs, tmp_path):
    """Write the input files exactly as a submission would, without running anything."""
    from aiida.common.folders import Folder
    from aiida.engine.utils import instantiate_process
    from aiida.manage import get_manager

    process = instantiate_process(get_manager().get_runner(), AimsCalculation, **inputs)
    folder = Folder(str(tmp_path))
    calcinfo = process.prepare_for_submission(folder)
    return calcinfo, (tmp_path / 'control.in').read_text(), (tmp_path / 'geometry.in').read_text()


def test_files_match_hand_checked_references(aiida_code_installed, tmp_path):
    code = mock_aims_code(aiida_code_installed)
    inputs = aims_inputs(code, silicon_structure(), SI_PARAMETERS, kpoints=_kpoints())
    inputs['species'] = species_folder(('Si',))
    calcinfo, control, geometry = _prepare(inputs, tmp_path)
    assert control == (DATA / 'expected_control.in').read_text()
    assert geometry == (DATA / 'expected_geometry.in').read_text()
    assert 'aims.out' in calcinfo.retrieve_list


def test_same_inputs_give_byte_identical_files(aiida_code_installed, tmp_path):
    code = mock_aims_code(aiida_code_installed)
    reordered = dict(reversed(list(SI_PARAMETERS.items())))
    first = _prepare(aims_inputs(code, silicon_structure(), SI_PARAMETERS, kpoints=_kpoints()), tmp_path / 'a')[1:]
    second = _prepare(aims_inputs(code, silicon_structure(), reordered, kpoints=_kpoints()), tmp_path / 'b')[1:]
    assert first == second


def test_species_dir_is_concatenated_by_the_job_script(aiida_code_installed, tmp_path):
    code = mock_aims_code(aiida_code_installed)
    inputs = aims_inputs(code, water_structure())
    inputs.pop('species')
    inputs['species_dir'] = orm.Str('/opt/aims/species_defaults/defaults_2020/light')
    calcinfo, control, _ = _prepare(inputs, tmp_path)
    assert 'species' not in control.split('\n', 1)[1]
    assert 'cat /opt/aims/species_defaults/defaults_2020/light/08_O_default >> control.in' in calcinfo.prepend_text
    assert calcinfo.prepend_text.index('01_H_default') < calcinfo.prepend_text.index('08_O_default')


def test_geometry_round_trip():
    text = (DATA / 'expected_geometry.in').read_text()
    symbols, positions, cell = read_geometry_in(text)
    assert symbols == ['Si', 'Si'] and positions[1] == [1.3575, 1.3575, 1.3575] and cell[0] == [0.0, 2.715, 2.715]


@pytest.mark.parametrize(
    'parameters, structure, message',
    [
        ({'xc': 'pbe\nspecies Cu'}, 'water', "parameters['xc']"),
        ({'xc': 'pbe # comment'}, 'water', "parameters['xc']"),
        ({'Xc': 'pbe'}, 'water', "'Xc' is not a control.in keyword"),
        ({'xc pbe': True}, 'water', 'is not a control.in keyword'),
        ({'xc\n': 'pbe'}, 'water', 'is not a control.in keyword'),  # `$` of a regular expression matches before \n
        ({'compute_forces': False}, 'water', "parameters['compute_forces'] may not be set"),
        ({'compute_analytical_stress': False}, 'silicon', 'must stay .true.'),
        ({'sc_iter_limit': 0}, 'water', "parameters['sc_iter_limit'] must be a positive integer"),
        ({'sc_iter_limit': -5}, 'water', "parameters['sc_iter_limit'] must be a positive integer"),
        ({'charge_mix_param': 0.0}, 'water', "parameters['charge_mix_param'] must be a positive number"),
        ({'charge': 11.0}, 'water', 'electron count cannot be negative'),
        ({'spin': 'noncollinear'}, 'water', 'parameters[spin]'),
    ],
)
def test_bad_parameters_are_refused_before_running(aiida_code_installed, parameters, structure, message):
    code = mock_aims_code(aiida_code_installed)
    extra = {'kpoints': _kpoints()} if structure == 'silicon' else {}
    structure = silicon_structure() if structure == 'silicon' else water_structure()
    before = orm.QueryBuilder().append(AimsCalculation).count()
    with pytest.raises(ValueError, match=message.replace('[', r'\[').replace('(', r'\(')):
        run_get_node(AimsCalculation, **aims_inputs(code, structure, parameters, **extra))
    assert orm.QueryBuilder().append(AimsCalculation).count() == before  # refused before a process node existed


def test_charge_that_leaves_electrons_is_accepted(aiida_code_installed, tmp_path):
    code = mock_aims_code(aiida_code_installed)
    _, control, _ = _prepare(aims_inputs(code, water_structure(), {'xc': 'pbe', 'charge': 1.0}), tmp_path)
    assert 'charge 1.0\n' in control


def test_missing_species_file_in_node(aiida_code_installed):
    inputs = aims_inputs(mock_aims_code(aiida_code_installed), water_structure())
    inputs['species'] = species_folder(('H',))
    with pytest.raises(ValueError, match=r'species: no species default file for 08_O_default'):
        run_get_node(AimsCalculation, **inputs)


def test_periodic_structure_needs_kpoints(aiida_code_installed):
    inputs = aims_inputs(mock_aims_code(aiida_code_installed), silicon_structure())
    with pytest.raises(ValueError, match='kpoints: a periodic structure needs k-points'):
        run_get_node(AimsCalculation, **inputs)


def test_kpoints_and_k_grid_conflict(aiida_code_installed):
    inputs = aims_inputs(
        mock_aims_code(aiida_code_installed), silicon_structure(), {'xc': 'pbe', 'k_grid': [2, 2, 2]},
        kpoints=_kpoints(),
    )
    with pytest.raises(ValueError, match=r'kpoints: conflicts with parameters\[k_grid\]'):
        run_get_node(AimsCalculation, **inputs)


def test_both_or_no_species_source_refused(aiida_code_installed):
    inputs = aims_inputs(mock_aims_code(aiida_code_installed), water_structure())
    inputs['species_dir'] = orm.Str('/opt/species/light')
    with pytest.raises(ValueError, match='species, species_dir: give exactly one'):
        run_get_node(AimsCalculation, **inputs)


def test_mixed_periodicity_refused(aiida_code_installed):
    structure = water_structure()
    structure.pbc = (True, True, False)
    with pytest.raises(ValueError, match='structure: FHI-aims cells are periodic in all three directions or in none'):
        run_get_node(AimsCalculation, **aims_inputs(mock_aims_code(aiida_code_installed), structure))


def test_write_control_in_refuses_periodic_without_kpoints():
    with pytest.raises(AimsInputError, match='needs k-points'):
        write_control_in({'xc': 'pbe'}, periodic=True)
