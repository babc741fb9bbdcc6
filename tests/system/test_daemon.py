"""Through a running daemon (ZeroMQ broker): submit, wait, compare with EMT evaluated here."""

import pytest
from aiida import orm
from ase.calculators.emt import EMT

from aiida_alml.calculations.ase import AseLabelCalculation
from aiida_alml.data import ConfigurationSet

pytestmark = [pytest.mark.storage, pytest.mark.daemon]


def test_daemon_labels_equal_in_process_emt(submit_and_await, label_code, cu_images):
    builder = AseLabelCalculation.get_builder()
    builder.code = label_code
    builder.structures = ConfigurationSet.from_ase(cu_images).store()
    builder.calculator = orm.Dict({'name': 'emt'})
    builder.properties = orm.List(['energy', 'forces', 'stress'])
    node = submit_and_await(builder, timeout=180)
    assert node.is_finished_ok, f'{node.exit_status}: {node.exit_message}'
    for atoms, labelled in zip(cu_images, node.outputs.labelled.to_ase()):
        atoms.calc = EMT()
        assert labelled.get_potential_energy() == atoms.get_potential_energy()
        assert labelled.get_forces().tobytes() == atoms.get_forces().tobytes()
        assert labelled.get_stress().tobytes() == atoms.get_stress().tobytes()


def test_daemon_xtb_labelling_absorbs_a_failed_scf(submit_and_await, label_code):
    """GFN2-xTB through the daemon with the SCF capped at 3 cycles (the retries give 6, then 12): two water molecules
    need the second retry, O2 the first, and a water molecule torn apart fails all three: a failed label with its
    reason and attempts, never a NaN. The rescued frames carry tblite's own converged numbers, and the labelling
    finishes with what succeeded."""
    import numpy as np
    from ase import Atoms
    from ase.build import molecule
    from tblite.ase import TBLite

    from aiida_alml.workflows.label import LabelWorkChain

    pair = molecule('H2O') + molecule('H2O')
    pair.positions[3:] += (2.8, 0.3, 0.0)
    torn = molecule('H2O')
    torn.positions[1] += (2.5, 0.5, 0.0)
    torn.positions[2] -= (1.0, 1.0, 0.0)
    frames = [pair, Atoms('O2', positions=[(0, 0, 0), (1.21, 0, 0)]), torn]
    for frame in frames:
        frame.set_cell([7.0, 7.0, 7.0])
        frame.pbc = True
        frame.center()
    inputs = {
        'structures': ConfigurationSet.from_ase(frames).store(), 'labeller': orm.Str('ase'),
        'max_failed_fraction': orm.Float(0.5),
        'ase': {'code': label_code, 'calculator': orm.Dict({'name': 'gfn2-xtb', 'kwargs': {'max_iterations': 3}})},
    }
    node = submit_and_await(LabelWorkChain, timeout=300, **inputs)
    assert node.is_finished_ok, f'{node.exit_status}: {node.exit_message}'
    job = next(child for child in node.called_descendants if child.process_label == 'AseLabelCalculation')
    records = job.outputs.output_parameters['configurations']
    assert [(record['status'], len(record['attempts'])) for record in records] == [('ok', 2), ('ok', 1), ('failed', 3)]
    assert 'SCF not converged in 12 cycles' in records[2]['error']
    assert list(node.outputs.failures.get_dict()) == ['2']
    labelled = node.outputs.labelled
    assert [meta['input_index'] for meta in labelled.configurations.metadata] == [0, 1]
    for index, atoms in enumerate(frames[:2]):
        atoms = atoms.copy()
        atoms.calc = TBLite(method='GFN2-xTB', verbosity=0)
        assert abs(labelled.get_atoms(index).get_potential_energy() - atoms.get_potential_energy()) < 1e-5
        assert np.all(np.isfinite(labelled.get_atoms(index).get_forces()))
