"""The ``alml.ase`` CalcJob through ``run`` (and its input validation, before anything runs)."""

import pytest
from aiida import orm
from aiida.engine import run_get_node
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from aiida_alml.calculations.ase import AseLabelCalculation
from aiida_alml.data import ConfigurationSet

pytestmark = pytest.mark.storage


def _inputs(code, images, name='emt', properties=('energy', 'forces'), **kwargs):
    return {
        'code': code,
        'structures': ConfigurationSet.from_ase(images),
        'calculator': orm.Dict({'name': name, 'kwargs': kwargs}),
        'properties': orm.List(list(properties)),
    }


def test_labels_equal_in_process_emt(label_code, cu_images):
    results, node = run_get_node(AseLabelCalculation, **_inputs(label_code, cu_images, properties=['energy', 'forces', 'stress']))
    assert node.is_finished_ok, node.exit_message
    labelled = results['labelled']
    assert labelled.labels == ['energy', 'forces', 'stress'] and len(labelled) == 6
    for atoms, reference in zip(cu_images, labelled.to_ase()):
        atoms.calc = EMT()
        assert reference.get_potential_energy() == atoms.get_potential_energy()
        assert reference.get_forces().tobytes() == atoms.get_forces().tobytes()
        assert reference.get_stress().tobytes() == atoms.get_stress().tobytes()
        assert reference.info['tag'] == atoms.info['tag'] and reference.info['labelled_by'] == node.uuid
    parameters = results['output_parameters'].get_dict()
    assert parameters['num_succeeded'] == 6 and parameters['calculator'] == {'name': 'emt', 'kwargs': {}}
    # provenance: the labelled set was created by this calculation from these structures
    assert labelled.creator.pk == node.pk and node.inputs.structures.labels == []


def test_partial_failure_is_recorded(label_code, cu_images):
    silicon = bulk('Si', 'diamond', a=5.43)
    results, node = run_get_node(AseLabelCalculation, **_inputs(label_code, [cu_images[0], silicon]))
    assert node.is_finished_ok
    records = results['output_parameters']['configurations']
    assert [record['status'] for record in records] == ['ok', 'failed']
    assert len(results['labelled']) == 1 and results['labelled'].to_ase()[0].info['source_index'] == 0


def test_all_failed_has_its_exit_code(label_code, cu_images):
    inputs = _inputs(label_code, cu_images[1:2], name='alml_test.nan_for_heavy_cells', max_atoms=4)
    results, node = run_get_node(AseLabelCalculation, **inputs)
    assert node.exit_status == AseLabelCalculation.exit_codes.ERROR_ALL_CONFIGURATIONS_FAILED.status
    assert 'labelled' not in results and results['output_parameters']['num_failed'] == 1


@pytest.mark.parametrize(
    'name, properties, message',
    [
        ('dft-of-my-dreams', ['energy'], r"unknown calculator 'dft-of-my-dreams': use one of .*emt, gfn1-xtb, gfn2-xtb, lj, morse"),
        ('ase.calculators.emt:EMT', ['energy'], 'import paths are not accepted'),
        ('ase.calculators.gulp:GULP', ['energy'], r"'ase.calculators.gulp:GULP': import paths are not accepted"),
        ('alml_test.runs_a_program', ['energy'], 'runs an external program: configure that program as an AiiDA code'),
        (5, ['energy'], 'calculator name must be a non-empty string, not 5'),
        ('alml_test.energy_only', ['energy', 'stress'], r"cannot compute \['stress'\]"),
        ('emt', ['energy', 'magmoms'], r"properties \['magmoms'\] are not supported"),
        ('emt', [], 'properties must name at least one'),
    ],
)
def test_bad_calculator_or_properties_refused_before_running(label_code, cu_images, name, properties, message):
    jobs_before = orm.QueryBuilder().append(orm.CalcJobNode).count()
    with pytest.raises(ValueError, match=message):
        run_get_node(AseLabelCalculation, **_inputs(label_code, cu_images, name=name, properties=properties))
    assert orm.QueryBuilder().append(orm.CalcJobNode).count() == jobs_before, 'nothing may run on bad input'


def test_stress_of_non_periodic_structure_refused(label_code):
    with pytest.raises(ValueError, match=r'stress was asked for but configurations \[0\] are not periodic'):
        run_get_node(AseLabelCalculation, **_inputs(label_code, [molecule('H2O')], properties=['energy', 'stress']))


def test_unknown_calculator_keys_refused(label_code, cu_images):
    inputs = _inputs(label_code, cu_images)
    inputs['calculator'] = orm.Dict({'name': 'emt', 'kwarg': {}})
    with pytest.raises(ValueError, match=r"unknown keys \['kwarg'\]"):
        run_get_node(AseLabelCalculation, **inputs)
