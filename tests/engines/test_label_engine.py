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
