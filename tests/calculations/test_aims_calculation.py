"""``alml.aims`` through the engine: CalcJob -> local scheduler -> MOCK FHI-aims (tests/helpers/mock_aims) -> parser.

The mock replays recorded real FHI-aims outputs; these tests check our plumbing, not FHI-aims.
"""

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from helpers.aims import aims_inputs, mock_aims_code, water_structure

from aiida_alml.calculations.aims import AimsCalculation


def test_single_point_through_the_mock(aiida_code_installed):
    results, node = run_get_node(AimsCalculation, **aims_inputs(mock_aims_code(aiida_code_installed), water_structure()))
    assert node.is_finished_ok, node.exit_message
    labelled = results['labelled']
    assert labelled.num_configurations == 1 and labelled.labels == ['energy', 'forces']
    meta = labelled.configurations.metadata[0]
    assert meta['source_calc_uuid'] == node.uuid
    assert meta['label_settings']['xc'] == 'pbe'
    assert labelled.get_atoms(0).calc.results['energy'] == pytest.approx(-2063.02072675943)
    np.testing.assert_allclose(labelled.get_atoms(0).positions, water_structure().get_ase().positions)
    # The files FHI-aims read are the ones we wrote, kept in the node's repository.
    control = node.base.repository.get_object_content('control.in')
    assert 'compute_forces .true.' in control and 'species        O' in control


def test_missing_species_file_on_the_remote(aiida_code_installed, tmp_path):
    (tmp_path / '01_H_default').write_text('  species H\n')
    inputs = aims_inputs(mock_aims_code(aiida_code_installed), water_structure())
    inputs.pop('species')
    inputs['species_dir'] = orm.Str(str(tmp_path))
    _, node = run_get_node(AimsCalculation, **inputs)
    assert node.exit_status == AimsCalculation.exit_codes.ERROR_MISSING_SPECIES.status
    assert '08_O_default' in node.exit_message


def test_md_run_is_not_labelled_at_the_input_geometry(aiida_code_installed):
    # alml.aims itself accepts MD keywords; the mock then replays a real water MD run (data/aims/md.out), whose last
    # forces belong to a later MD step. The parser notices and refuses to label.
    inputs = aims_inputs(mock_aims_code(aiida_code_installed), water_structure(),
                         {'xc': 'pbe', 'relativistic': 'atomic_zora scalar', 'md_run': '0.005 NVE'})
    results, node = run_get_node(AimsCalculation, **inputs)
    assert node.exit_status == AimsCalculation.exit_codes.ERROR_GEOMETRY_MISMATCH.status
    assert 'FHI-aims moved to' in node.exit_message
    assert 'labelled' not in results


def test_species_dir_contents_are_hashed_on_the_computer(aiida_code_installed, tmp_path):
    import hashlib
    import shutil

    from helpers.aims import DATA

    for name in ('01_H_default', '08_O_default'):
        shutil.copy(DATA / 'species' / name, tmp_path / name)
    inputs = aims_inputs(mock_aims_code(aiida_code_installed), water_structure())
    inputs.pop('species')
    inputs['species_dir'] = orm.Str(str(tmp_path))
    results, node = run_get_node(AimsCalculation, **inputs)
    assert node.is_finished_ok, node.exit_message
    settings = results['labelled'].configurations.metadata[0]['label_settings']
    assert settings['species_hashes'] == {
        name: hashlib.sha256((DATA / 'species' / name).read_bytes()).hexdigest() for name in ('01_H_default', '08_O_default')
    }
    assert 'species_dir' not in settings  # the contents decide, not where they lie
    # The same files uploaded as a node give the same settings, hence the same fingerprint.
    uploaded, _ = run_get_node(AimsCalculation, **aims_inputs(mock_aims_code(aiida_code_installed), water_structure()))
    assert uploaded['labelled'].label_fingerprints == results['labelled'].label_fingerprints
