"""Label a file of structures with EMT through `alml.ase` (`verdi run examples/label_with_emt.py structures.xyz`)."""

import sys

from aiida import orm
from aiida.engine import run_get_node

from aiida_alml.calculations.ase import AseLabelCalculation
from aiida_alml.data import ConfigurationSet

structures = ConfigurationSet.from_extxyz(sys.argv[1]) if len(sys.argv) > 1 else None
if structures is None:
    from aiida_alml.cli.demo import copper_cells

    structures = ConfigurationSet.from_ase(copper_cells(10, seed=0))
results, node = run_get_node(
    AseLabelCalculation,
    code=orm.load_code('alml-label@localhost'),
    structures=structures,
    calculator=orm.Dict({'name': 'emt'}),
    properties=orm.List(['energy', 'forces', 'stress']),
)
print(f'{node.process_label}<{node.pk}>: {results["output_parameters"]["num_succeeded"]} labelled')
results['labelled'].write_extxyz('labelled.xyz')
print('wrote labelled.xyz (REF_energy / REF_forces / REF_stress, as MACE reads them)')
