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
