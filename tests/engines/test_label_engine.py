"""The ``alml-label`` engine on its own: a plain program reading and writing files, no AiiDA involved."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT

from aiida_alml.atoms.configurations import Configurations

ENGINE = str(pathlib.Path(sys.executable).parent / 'alml-label')


def _run(tmp_path, configurations, spec, properties=('energy', 'forces'), env=None):
    (tmp_path / 'structures.npz').write_bytes(configurations.to_npz_bytes())
    (tmp_path / 'calculator.json').write_text(json.dumps(spec))
    result = subprocess.run(
        [ENGINE, '--properties', *properties], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    report = json.loads((tmp_path / 'report.json').read_text()) if (tmp_path / 'report.json').exists() else None
    labelled = None
    if (tmp_path / 'labelled.npz').exists():
        with open(tmp_path / 'labelled.npz', 'rb') as handle:
            labelled = Configurations.from_npz(handle)
    return result, report, labelled


def test_engine_labels_equal_in_process_emt(tmp_path, cu_images):
    result, report, labelled = _run(tmp_path, Configurations.from_ase(cu_images), {'name': 'emt'},
                                    ('energy', 'forces', 'stress'))
    assert result.returncode == 0, result.stderr
    assert report['num_succeeded'] == 6 and report['num_failed'] == 0
    assert all(record['wall_time'] >= 0 for record in report['configurations'])
    for index, atoms in enumerate(cu_images):
        atoms.calc = EMT()
        assert labelled.energy[index] == atoms.get_potential_energy()
        assert labelled.forces[labelled.atom_slice(index)].tobytes() == atoms.get_forces().tobytes()
        assert labelled.stress[index].tobytes() == atoms.get_stress().tobytes()
    assert [meta['source_index'] for meta in labelled.metadata] == list(range(6))


def test_engine_keeps_going_past_failures(tmp_path, cu_images):
    silicon = bulk('Si', 'diamond', a=5.43)  # EMT has no parameters for Si: it raises for this one
    images = [cu_images[0], silicon, cu_images[1]]
    result, report, labelled = _run(tmp_path, Configurations.from_ase(images), {'name': 'emt'})
    assert result.returncode == 0, result.stderr
    statuses = [record['status'] for record in report['configurations']]
    assert statuses == ['ok', 'failed', 'ok']
    assert 'NotImplementedError' in report['configurations'][1]['error']
    assert [meta['source_index'] for meta in labelled.metadata] == [0, 2]


def test_engine_records_non_finite_results(tmp_path, cu_images):
    spec = {'name': 'alml_test.nan_for_heavy_cells', 'kwargs': {'max_atoms': 4}}
    _, report, labelled = _run(tmp_path, Configurations.from_ase(cu_images), spec)
    failed = [record for record in report['configurations'] if record['status'] == 'failed']
    assert len(failed) == 3 and all('energy is not finite' in record['error'] for record in failed)
    assert len(labelled) == 3 and np.all(labelled.n_atoms == 4)


def test_engine_refuses_a_bad_calculator(tmp_path, cu_images):
    result, report, _ = _run(tmp_path, Configurations.from_ase(cu_images), {'name': 'dft-of-my-dreams'})
    assert result.returncode == 2 and report is None
    assert 'unknown calculator' in result.stderr and 'emt' in result.stderr


def test_engine_refuses_import_paths_even_from_a_spec_file(tmp_path, cu_images):
    """The spec file is data: a class named by import path is not imported, so its module never runs."""
    marker = tmp_path / 'ran'
    (tmp_path / 'payload.py').write_text(f'import pathlib\npathlib.Path({str(marker)!r}).write_text("x")\n'
                                         'class Calc:\n    get_potential_energy = None\n')
    # importable on purpose: an engine that imported it would run it
    env = {**os.environ, 'PYTHONPATH': str(tmp_path)}
    result, report, _ = _run(tmp_path, Configurations.from_ase(cu_images), {'name': 'payload:Calc'}, env=env)
    assert result.returncode == 2 and report is None
    assert 'import paths are not accepted' in result.stderr and not marker.exists()


# ---------------------------------------------------------------------- GFN-xTB through tblite
def _water_box(seed=0):
    """Two water molecules in a 6 Å periodic box, slightly rattled (6 atoms: a second per xTB single point)."""
    from ase.build import molecule

    first, second = molecule('H2O'), molecule('H2O')
    second.translate((3.0, 0.2, 0.1))
    box = first + second
    box.set_cell([6.0, 6.0, 6.0])
    box.pbc = True
    box.center()
    box.rattle(0.05, seed=seed)
    return box


def test_engine_labels_equal_tblite_own_calculator(tmp_path):
    """gfn2-xtb and gfn1-xtb through the engine give tblite's own ASE calculator's numbers, with the method fixed by
    the name and the CPU seconds and tblite's version reported."""
    from tblite.ase import TBLite

    images = [_water_box(seed) for seed in (0, 1)]
    for name, method in (('gfn2-xtb', 'GFN2-xTB'), ('gfn1-xtb', 'GFN1-xTB')):
        folder = tmp_path / name
        folder.mkdir()
        spec = {'name': name, 'kwargs': {'accuracy': 0.5, 'electronic_temperature': 500.0}}
        result, report, labelled = _run(folder, Configurations.from_ase(images), spec)
        assert result.returncode == 0, result.stderr
        assert report['num_succeeded'] == 2
        assert report['calculator_package']['name'] == 'tblite' and report['calculator_package']['version']
        assert all(record['cpu_time'] > 0 for record in report['configurations'])
        for index, atoms in enumerate(images):
            atoms = atoms.copy()
            atoms.calc = TBLite(method=method, accuracy=0.5, electronic_temperature=500.0, verbosity=0)
            np.testing.assert_allclose(labelled.energy[index], atoms.get_potential_energy(), rtol=0, atol=1e-8)
            np.testing.assert_allclose(labelled.forces[labelled.atom_slice(index)], atoms.get_forces(), atol=1e-8)


def test_engine_scf_failure_is_retried_then_recorded(tmp_path):
    """A capped SCF (max_iterations 2) fails on every rung of the retry ladder: each attempt is recorded, the frame is
    a failed label with its reason, never a NaN, and the job goes on (exit 0)."""
    images = [_water_box(0), _water_box(1)]
    spec = {'name': 'gfn2-xtb', 'kwargs': {'max_iterations': 2}}
    result, report, labelled = _run(tmp_path, Configurations.from_ase(images), spec)
    assert result.returncode == 0, result.stderr
    assert report['num_failed'] == 2 and labelled is None
    record = report['configurations'][0]
    assert record['status'] == 'failed' and 'SCF not converged in 8 cycles' in record['error']  # the last try's
    assert [attempt['changes'] for attempt in record['attempts']] == [
        {}, {'mixer_damping': 0.2, 'max_iterations': 4}, {'mixer_damping': 0.1, 'guess': 'eeq', 'max_iterations': 8}]


def test_engine_scf_retries_rescue_frames_with_the_labels_of_a_converged_scf(tmp_path):
    """With 5 SCF cycles a water box needs the first retry and one with a stretched O-H bond the second; their labels
    are those of an SCF converged with tblite's defaults: a retry changes the path to the solution, not the solution."""
    from tblite.ase import TBLite

    good = _water_box(0)
    stretched = _water_box(0)
    stretched.positions[1] += (0.9, 0.3, 0.0)
    spec = {'name': 'gfn2-xtb', 'kwargs': {'max_iterations': 5}}
    result, report, labelled = _run(tmp_path, Configurations.from_ase([good, stretched]), spec)
    assert result.returncode == 0, result.stderr
    assert [record['status'] for record in report['configurations']] == ['ok', 'ok']
    assert [len(record['attempts']) for record in report['configurations']] == [1, 2]
    for index, atoms in enumerate((good, stretched)):
        atoms = atoms.copy()
        atoms.calc = TBLite(method='GFN2-xTB', verbosity=0)
        assert abs(labelled.energy[index] - atoms.get_potential_energy()) < 1e-5
        np.testing.assert_allclose(labelled.forces[labelled.atom_slice(index)], atoms.get_forces(), atol=1e-3)


def test_xtb_labels_do_not_depend_on_the_frames_labelled_before(tmp_path):
    """A frame's labels are the same in any batch: each configuration gets a new calculator (tblite would otherwise
    start its SCF from the previous frame's solution and move forces by ~1e-4 eV/Å)."""
    first, second = _water_box(0), _water_box(1)
    spec = {'name': 'gfn2-xtb'}
    runs = []
    for name, images in (('ab', [first, second]), ('ba', [second, first])):
        (tmp_path / name).mkdir()
        result, _, labelled = _run(tmp_path / name, Configurations.from_ase(images), spec)
        assert result.returncode == 0, result.stderr
        runs.append(labelled)
    # Equal to the last bits but one: tblite's threaded sums are not bit-reproducible.
    np.testing.assert_allclose(runs[0].forces[runs[0].atom_slice(1)], runs[1].forces[runs[1].atom_slice(0)],
                               rtol=0, atol=1e-10)
    assert abs(runs[0].energy[0] - runs[1].energy[1]) < 1e-10
