"""Label a few water geometries with FHI-aims through ``alml.label``.  Run: ``verdi run examples/label_with_aims.py``.

Set ALML_AIMS_CODE to the label of an FHI-aims code (see examples/aims_code.yaml) and ALML_SPECIES_ROOT to its
species_defaults directory. Without them this example uses the MOCK executable tests/helpers/mock_aims, which only replays a
recorded FHI-aims output: the numbers it produces are NOT an FHI-aims calculation of these geometries.
"""

import os
import pathlib
import sys

from aiida import orm
from aiida.engine import run_get_node
from ase import Atoms

import aiida_alml
from aiida_alml.data.configurations import ConfigurationSet
from aiida_alml.workflows.aims_base import AimsBaseWorkChain
from aiida_alml.workflows.label import LabelWorkChain

# The repository checkout (the package is installed editable); verdi run does not give a reliable __file__.
ROOT = pathlib.Path(aiida_alml.__file__).resolve().parent.parent


def mock_code():
    print('!' * 78, '\n!!! FHI-aims not configured: using the MOCK executable tests/helpers/mock_aims, which replays a recorded\n'
          '!!! output. The labels below are NOT FHI-aims results for these geometries.\n' + '!' * 78, file=sys.stderr)
    computer = orm.load_computer('localhost')
    return orm.InstalledCode(computer=computer, filepath_executable=str(ROOT / 'tests' / 'mock_aims'),
                             label='mock-aims', default_calc_job_plugin='alml.aims').store()


def mock_species():
    folder = orm.FolderData()
    for path in sorted((ROOT / 'tests' / 'data' / 'aims' / 'species').iterdir()):
        folder.base.repository.put_object_from_file(str(path), path.name)
    return folder.store()


images = [Atoms('OH2', positions=[(0, 0, 0), (0.9584 + d, 0, 0), (-0.24, 0.9279, 0)]) for d in (0.0, 0.02, 0.04)]
structures = ConfigurationSet.from_ase(images)

if os.environ.get('ALML_AIMS_CODE'):
    code, overrides, species_root = orm.load_code(os.environ['ALML_AIMS_CODE']), {}, os.environ['ALML_SPECIES_ROOT']
else:
    code, overrides, species_root = mock_code(), {'species': mock_species()}, None

options = {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1}, 'max_wallclock_seconds': 3600}
template = AimsBaseWorkChain.get_builder_from_protocol(
    code, orm.StructureData(ase=images[0]), protocol='fast', overrides=overrides, options=options,
    species_root=species_root,
)
aims_inputs = template._inputs(prune=True)
aims_inputs['aims'].pop('structure')

results, node = run_get_node(
    LabelWorkChain, structures=structures, labeller=orm.Str('aims'), max_concurrent=orm.Int(2), aims=aims_inputs
)
print(f'LabelWorkChain<{node.pk}> exit status {node.exit_status}')
if 'labelled' in results:
    labelled = results['labelled']
    for meta, energy in zip(labelled.configurations.metadata, labelled.configurations.energy):
        print(f"configuration {meta['input_index']}: E = {energy:.6f} eV from calculation {meta['source_calc_uuid']}")
