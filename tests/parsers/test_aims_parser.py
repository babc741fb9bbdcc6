"""``alml.aims`` parser on REAL FHI-aims outputs (data/aims, from the ASE test data), checked against ASE's reader."""

import numpy as np
import pytest
from aiida import orm
from aiida.common import LinkType
from helpers.aims import DATA, silicon_structure, water_structure

from aiida_alml.formats.aims_output import parse_aims_output
from aiida_alml.parsers.aims import AimsParser

SLURM_TIMEOUT = 'slurmstepd: error: *** JOB 4242 ON node07 CANCELLED AT 2024-05-03T10:24:41 DUE TO TIME LIMIT ***\n'


def ase_reference(name):
    """All images of ASE's own aims-output reader: the independent reference for our numbers."""
    import warnings

    from ase.io import read

    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # ASE announces its aims reader is moving to a plugin
        return read(DATA / name, ':', format='aims-output')


@pytest.mark.parametrize('name', ['singlepoint.out', 'relax.out', 'md.out', 'numerical_stress.out'])
def test_energies_forces_stress_agree_with_ase(name):
    out = parse_aims_output((DATA / name).read_text())
    atoms = ase_reference(name)[-1]
    assert out.completed
    assert out.last.free_energy == pytest.approx(atoms.calc.results['free_energy'], abs=1e-9)
    if 'forces' in atoms.calc.results:
        np.testing.assert_allclose(out.last.forces, atoms.get_forces(), atol=1e-12)
    if 'stress' in atoms.calc.results:
        s = out.last.stress
        voigt = [s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]]
        np.testing.assert_allclose(voigt, atoms.get_stress(), atol=1e-12)


@pytest.mark.parametrize('name, restarts', [('relax.out', 1), ('md.out', 1), ('socket.out', 0)])
def test_number_of_force_evaluations_matches_ase_trajectory(name, restarts):
    # FHI-aims evaluates the first geometry twice when it restarts the mixer ("No geometry change - only restart of
    # scf mixer"); ASE keeps one image per geometry, we keep every evaluation and label the last.
    out = parse_aims_output((DATA / name).read_text())
    assert len(out.evaluations) == len(ase_reference(name)) + restarts


def test_header_build_timings_and_spin_moment():
    out = parse_aims_output((DATA / 'issue_3345_spin_md_light.out').read_text())
    assert out.version == '221103'
    assert out.build['Commit number'] == 'cd81235a3'
    assert out.build['Fortran compiler'].startswith('/opt/homebrew/bin/mpifort (GNU) version 13.2.0')
    assert 'Using MPI' in out.build_features
    assert out.num_tasks == 8 and out.num_spin_channels == 2
    assert out.magnetic_moment == pytest.approx(1.0)
    assert out.scf_iterations == 6 and out.scf_converged
    assert out.timings['total_time'] == {'cpu_s': 0.570, 'wall_s': 0.765}


def test_relaxation_final_geometry():
    out = parse_aims_output((DATA / 'relax.out').read_text())
    assert out.is_relaxation
    assert out.final_structure['symbols'] == ['Si', 'Si']
    np.testing.assert_allclose(out.final_structure['positions'][1], [1.35477068] * 3)
    np.testing.assert_allclose(out.final_structure['cell'][0], [0.00006390, 2.70950938, 2.70950938])
    np.testing.assert_allclose(out.final_structure['positions'], ase_reference('relax.out')[-1].positions, atol=1e-7)


def test_hirshfeld_block():
    # The block layout printed by FHI-aims' hirshfeld analysis (spin-polarised run), appended to a real output.
    block = (
        '  Performing Hirshfeld analysis of fragment charges and moments.\n'
        '  ----------------------------------------------------------------------\n'
        '  | Atom     1: Na\n'
        '  |   Hirshfeld charge        :      0.20898543\n'
        '  |   Free atom volume        :     82.26734086\n'
        '  |   Hirshfeld volume        :     73.39467444\n'
        '  |   Hirshfeld spin moment   :      0.00000000\n'
        '  |   Hirshfeld dipole vector :      0.00000000       0.00000000      -0.00000000\n'
    )
    text = (DATA / 'singlepoint.out').read_text().replace('          Have a nice day.', block + '  Have a nice day.')
    out = parse_aims_output(text)
    assert out.hirshfeld_charges == [pytest.approx(0.20898543)]
    assert out.hirshfeld_volumes == [pytest.approx(73.39467444)]
    assert out.hirshfeld_spin_moments == [0.0]


# ---------------------------------------------------------------------- the AiiDA parser and its exit codes
def _calc_node(aiida_localhost, structure, files, parameters=None, exit_status=None, kpoints=None):
    node = orm.CalcJobNode(computer=aiida_localhost, process_type='aiida.calculations:alml.aims')
    if kpoints is not None:
        node.base.links.add_incoming(kpoints.store(), LinkType.INPUT_CALC, 'kpoints')
    node.set_option('resources', {'num_machines': 1})
    code = orm.InstalledCode(label='aims', computer=aiida_localhost, filepath_executable='/opt/aims/bin/aims.x')
    node.base.links.add_incoming(code.store(), LinkType.INPUT_CALC, 'code')
    node.base.links.add_incoming(structure.store(), LinkType.INPUT_CALC, 'structure')
    node.base.links.add_incoming(
        orm.Dict(parameters or {'xc': 'pbe', 'relativistic': 'atomic_zora scalar'}).store(), LinkType.INPUT_CALC,
        'parameters',
    )
    node.store()
    if exit_status is not None:
        node.set_exit_status(exit_status)
    retrieved = orm.FolderData()
    for name, content in files.items():
        retrieved.base.repository.put_object_from_bytes(content.encode(), name)
    retrieved.base.links.add_incoming(node, LinkType.CREATE, 'retrieved')
    retrieved.store()
    return node


def _parse(node):
    results, calcfunction = AimsParser.parse_from_node(node, store_provenance=False)
    return results, calcfunction.exit_status


def test_parser_success_on_real_single_point(aiida_localhost):
    node = _calc_node(aiida_localhost, water_structure(), {'aims.out': (DATA / 'singlepoint.out').read_text()})
    results, status = _parse(node)
    assert status == 0
    atoms = ase_reference('singlepoint.out')[-1]
    labelled = results['labelled'].get_atoms(0)
    assert labelled.calc.results['energy'] == pytest.approx(atoms.get_potential_energy(), abs=1e-9)
    np.testing.assert_allclose(results['forces'].get_array('forces'), atoms.get_forces())
    assert results['labelled'].configurations.metadata[0]['source_calc_uuid'] == node.uuid
    params = results['output_parameters'].get_dict()
    assert params['scf_converged'] and params['num_force_evaluations'] == 2
    assert params['total_energy'] == pytest.approx(-2063.02072675943)


def test_parser_relaxation_gives_output_structure_and_stress(aiida_localhost):
    node = _calc_node(
        aiida_localhost, silicon_structure(a=5.806), {'aims.out': (DATA / 'relax.out').read_text()},
        {'xc': 'pbe', 'relax_geometry': 'bfgs 1e-2'},
    )
    results, status = _parse(node)
    assert status == 0
    atoms = ase_reference('relax.out')[-1]
    np.testing.assert_allclose(results['output_structure'].get_ase().positions, atoms.positions, atol=1e-7)
    np.testing.assert_allclose(results['labelled'].get_atoms(0).get_stress(), atoms.get_stress(), atol=1e-12)


def _truncated(name='singlepoint.out', marker='  Self-consistency cycle converged.'):
    return (DATA / name).read_text().split(marker)[0]


@pytest.mark.parametrize(
    'files, exit_status, expected',
    [
        ({}, None, 'ERROR_OUTPUT_MISSING'),
        ({'aims.out': (DATA / 'preamble_fail.out').read_text()}, None, 'ERROR_OUTPUT_INCOMPLETE'),
        ({'aims.out': _truncated()}, None, 'ERROR_OUTPUT_INCOMPLETE'),
        ({'aims.out': _truncated() + '\n  *** scf_solver: SCF cycle not converged.\n'}, None, 'ERROR_SCF_NOT_CONVERGED'),
        ({'aims.out': _truncated(), '_scheduler-stderr.txt': SLURM_TIMEOUT}, None, 'ERROR_OUT_OF_WALLTIME'),
        ({'aims.out': _truncated()}, 120, 'ERROR_OUT_OF_WALLTIME'),
        ({'aims.err': 'ALML-MISSING-SPECIES: 08_O_default\n'}, None, 'ERROR_MISSING_SPECIES'),
        ({'aims.out': _truncated(), '_scheduler-stderr.txt': 'slurmstepd: error: Detected 1 oom-kill event(s)'},
         None, 'ERROR_OUT_OF_MEMORY'),
        ({'aims.out': _truncated(), 'aims.err': 'forrtl: severe (41): insufficient virtual memory\n'
          'Cannot allocate memory\n'}, None, 'ERROR_OUT_OF_MEMORY'),
    ],
    ids=['missing', 'preamble', 'incomplete', 'scf', 'walltime-slurm', 'walltime-scheduler', 'species', 'oom', 'oom2'],
)
def test_parser_exit_codes(aiida_localhost, files, exit_status, expected):
    from aiida_alml.calculations.aims import AimsCalculation

    node = _calc_node(aiida_localhost, water_structure(), files, exit_status=exit_status)
    _, status = _parse(node)
    assert status == AimsCalculation.exit_codes[expected].status


def test_walltime_stopped_relaxation_gives_the_restart_structure(aiida_localhost):
    # The relaxation was stopped at the walltime: the parser makes the geometry to continue from out of the last
    # geometry.in.next_step FHI-aims wrote (alml.aims.base restarts from it); a single point gets none.
    from aiida_alml.calculations.aims import AimsCalculation

    next_step = ('# written by FHI-aims\natom 0.0 0.0 0.1 O\natom 0.76 0.59 0.0 H\natom -0.76 0.59 0.0 H\n')
    files = {'aims.out': _truncated(), '_scheduler-stderr.txt': SLURM_TIMEOUT, 'geometry.in.next_step': next_step}
    relaxing = {'xc': 'pbe', 'relativistic': 'atomic_zora scalar', 'relax_geometry': 'bfgs 1e-2'}
    results, status = _parse(_calc_node(aiida_localhost, water_structure(), files, relaxing))
    assert status == AimsCalculation.exit_codes.ERROR_OUT_OF_WALLTIME.status
    restart = results['restart_structure'].get_ase()
    assert restart.get_chemical_symbols() == ['O', 'H', 'H'] and not restart.pbc.any()
    np.testing.assert_allclose(restart.positions[0], [0.0, 0.0, 0.1])
    results, _ = _parse(_calc_node(aiida_localhost, water_structure(), files))
    assert 'restart_structure' not in results


def test_parser_refuses_forces_for_another_structure(aiida_localhost):
    node = _calc_node(aiida_localhost, silicon_structure(), {'aims.out': (DATA / 'singlepoint.out').read_text()})
    _, status = _parse(node)
    assert status == 351


# ---------------------------------------------------------------------- labelled positions are the input positions
def _water_node(aiida_localhost, name='singlepoint.out', **water_kwargs):
    from helpers.aims import water

    structure = orm.StructureData(ase=water(**water_kwargs))
    return _calc_node(aiida_localhost, structure, {'aims.out': (DATA / name).read_text()})


def test_input_geometry_is_read_from_the_output():
    from helpers.aims import WATER_POSITIONS

    out = parse_aims_output((DATA / 'singlepoint.out').read_text())
    assert out.input_geometry['symbols'] == ['O', 'H', 'H'] and out.input_geometry['cell'] is None
    np.testing.assert_allclose(out.input_geometry['positions'], WATER_POSITIONS)
    assert out.later_geometries == []
    periodic = parse_aims_output((DATA / 'relax.out').read_text())
    np.testing.assert_allclose(periodic.input_geometry['cell'], silicon_structure(a=5.806).cell)
    # MD and socket-driver runs print the geometry of every step: the atoms moved.
    assert len(parse_aims_output((DATA / 'md.out').read_text()).later_geometries) == 5
    assert len(parse_aims_output((DATA / 'socket.out').read_text()).later_geometries) == 6


@pytest.mark.parametrize('shift, ok', [(5e-5, True), (3e-4, False), (0.05, False)])
def test_parser_refuses_labels_of_another_geometry(aiida_localhost, shift, ok):
    # FHI-aims printed the recorded water geometry; the input structure has its second H moved by `shift` Å.
    _, status = _parse(_water_node(aiida_localhost, shift=shift))
    from aiida_alml.calculations.aims import AimsCalculation

    assert status == (0 if ok else AimsCalculation.exit_codes.ERROR_GEOMETRY_MISMATCH.status)


def test_geometry_mismatch_message_names_the_atom(aiida_localhost):
    node = _water_node(aiida_localhost, shift=0.05)
    results, calcfunction = AimsParser.parse_from_node(node, store_provenance=False)
    assert calcfunction.exit_status == 352
    assert 'atom 2 (H)' in calcfunction.exit_message and 'the input geometry FHI-aims read' in calcfunction.exit_message
    assert 'labelled' not in results and 'forces' not in results


@pytest.mark.parametrize('name', ['md.out', 'socket.out'])
def test_parser_refuses_runs_that_moved_the_atoms(aiida_localhost, name):
    # Both start from the water geometry of the input, then MD (or an i-PI driver) moves the atoms: the last forces
    # belong to another geometry.
    node = _water_node(aiida_localhost, name)
    results, calcfunction = AimsParser.parse_from_node(node, store_provenance=False)
    assert calcfunction.exit_status == 352
    assert 'FHI-aims moved to' in calcfunction.exit_message
    assert 'labelled' not in results


def test_periodic_positions_are_compared_modulo_the_cell(aiida_localhost):
    from ase.build import bulk

    atoms = bulk('Si', 'diamond', a=5.806)
    atoms.positions[1] += atoms.cell[0] - atoms.cell[2]  # the same crystal, the atom one lattice vector away
    node = _calc_node(aiida_localhost, orm.StructureData(ase=atoms), {'aims.out': (DATA / 'relax.out').read_text()},
                      {'xc': 'pbe', 'relax_geometry': 'bfgs 1e-2'})
    assert _parse(node)[1] == 0
    atoms.set_cell(atoms.cell * 1.01, scale_atoms=True)
    node = _calc_node(aiida_localhost, orm.StructureData(ase=atoms), {'aims.out': (DATA / 'relax.out').read_text()},
                      {'xc': 'pbe', 'relax_geometry': 'bfgs 1e-2'})
    results, calcfunction = AimsParser.parse_from_node(node, store_provenance=False)
    assert calcfunction.exit_status == 352 and 'the cell of the input geometry' in calcfunction.exit_message


# ---------------------------------------------------------------------- recorded label settings
def test_label_settings_are_complete(aiida_localhost):
    parameters = {
        'xc': 'pbe', 'relativistic': 'atomic_zora scalar', 'occupation_type': 'gaussian  0.01', 'charge_mix_param': 0.05,
        'sc_accuracy_rho': 1e-5, 'sc_accuracy_forces': 1e-4, 'mixer': 'pulay', 'sc_iter_limit': 100,
    }
    node = _calc_node(aiida_localhost, water_structure(), {'aims.out': (DATA / 'singlepoint.out').read_text()},
                      parameters)
    results, _ = _parse(node)
    meta = results['labelled'].configurations.metadata[0]
    settings = meta['label_settings']
    assert settings['code'] == f'aims@{aiida_localhost.label}' and settings['plugin'] == 'alml.aims'
    assert settings['fhi_aims_version'] == parse_aims_output((DATA / 'singlepoint.out').read_text()).version
    assert settings['occupation_type'] == 'gaussian 0.01' and settings['spin'] == 'none'
    assert settings['sc_accuracy_rho'] == 1e-5 and settings['sc_accuracy_forces'] == 1e-4
    # Keywords that only steer the SCF do not change the converged labels: a restart may change them.
    assert not {'charge_mix_param', 'mixer', 'sc_iter_limit'} & set(settings)
    # No species node in this hand-made calculation: nothing known about the species files.
    assert 'species_hashes' not in settings
    from aiida_alml.label_settings import label_fingerprint

    assert meta['label_fingerprint'] == label_fingerprint(settings)
    assert results['labelled'].label_fingerprints == [meta['label_fingerprint']]


def test_species_digests_from_the_job_script():
    from aiida_alml.parsers.aims import _species_digests

    text = f'{"a" * 64}  /opt/aims/species_defaults/light/08_O_default\n{"b" * 64} */x/01_H_default\nsha256sum: oops\n'
    assert _species_digests(text) == {'08_O_default': 'a' * 64, '01_H_default': 'b' * 64}


def test_k_grid_keyword_is_recorded_like_a_kpoints_mesh(aiida_localhost):
    from aiida_alml.parsers.aims import label_settings

    structure = silicon_structure(a=5.806)
    node = _calc_node(aiida_localhost, structure, {}, {'xc': 'pbe', 'k_grid': '4 4  4', 'k_offset': '0 0 0'})
    from_keyword = label_settings(node)
    kpoints = orm.KpointsData()
    kpoints.set_kpoints_mesh([4, 4, 4])
    node = _calc_node(aiida_localhost, structure, {}, {'xc': 'pbe'}, kpoints=kpoints)
    assert from_keyword == label_settings(node) and from_keyword['k_grid'] == [4, 4, 4]
