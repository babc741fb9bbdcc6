"""Shared builders for the FHI-aims tests (structures of the recorded outputs, species node, the mock code)."""

from __future__ import annotations

import pathlib

DATA = pathlib.Path(__file__).parent / 'data' / 'aims'
MOCK_AIMS = pathlib.Path(__file__).parent / 'mock_aims'

#: Geometry of the real water single point in data/aims/singlepoint.out (its "Input geometry" block).
WATER_POSITIONS = [(0.0, 0.0, 0.0), (0.9584, 0.0, 0.0), (-0.24, 0.9279, 0.0)]


def water(stretch: float = 0.0, shift: float = 0.0):
    """Water as ASE Atoms; ``stretch`` lengthens the first O-H bond (the mock's hard SCF case above 1.3 Å)."""
    from ase import Atoms

    positions = [list(p) for p in WATER_POSITIONS]
    positions[1][0] += stretch
    positions[2][1] += shift
    return Atoms('OH2', positions=positions)


def water_structure(**kwargs):
    from aiida import orm

    return orm.StructureData(ase=water(**kwargs))


def silicon_structure(a: float = 5.43):
    """Diamond silicon; ``a=5.806`` is the starting geometry of the real relaxation in data/aims/relax.out."""
    from aiida import orm
    from ase.build import bulk

    return orm.StructureData(ase=bulk('Si', 'diamond', a=a))


def species_folder(elements=('H', 'O', 'Si')):
    """FolderData with the species files of data/aims/species (stubs, and H as echoed by a real run)."""
    from aiida import orm

    folder = orm.FolderData()
    for path in sorted((DATA / 'species').iterdir()):
        if path.name.split('_')[1] in elements:
            folder.base.repository.put_object_from_file(str(path), path.name)
    return folder.store()


def mock_aims_code(aiida_code_installed):
    """The MOCK FHI-aims (tests/helpers/mock_aims) as an InstalledCode on localhost; it replays recorded outputs."""
    return aiida_code_installed(
        label='mock-aims',
        default_calc_job_plugin='alml.aims',
        filepath_executable=str(MOCK_AIMS.resolve()),
    )


def aims_inputs(code, structure, parameters=None, **extra):
    from aiida import orm

    inputs = {
        'code': code,
        'structure': structure,
        'parameters': orm.Dict(parameters or {'xc': 'pbe', 'relativistic': 'atomic_zora scalar'}),
        'species': species_folder(),
        'metadata': {'options': {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1}}},
    }
    inputs.update(extra)
    return inputs
