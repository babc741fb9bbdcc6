"""The FHI-aims labeller of ``alml.label`` (``labeller='aims'``): one ``alml.aims.base`` per configuration.

Labelling is a single point at the given geometry: relaxation and MD keywords are refused. With
``aims.kpoints_distance`` the k-point mesh is fixed once per cell shape (:func:`fixed_kpoint_meshes`, made by the
calcfunction :func:`fixed_kpoints`) instead of being rebuilt for every strained cell.
"""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import calcfunction

from aiida_alml.calculations.aims import unchecked_keywords
from aiida_alml.data.configurations import ConfigurationSet
from aiida_alml.formats.aims_input import AimsInputError, run_changing_keywords, validate_keywords
from aiida_alml.workflows.aims_base import AimsBaseWorkChain, kpoints_mesh
from aiida_alml.workflows.submission import submit_once

__all__ = (
    'KPOINTS_CELL_TOLERANCE', 'fixed_kpoint_meshes', 'fixed_kpoints', 'aims_label_problem', 'prepare_aims',
    'submit_aims',
)

#: A cell shares the k-point mesh of a reference cell when it is that cell strained by at most this much: every
#: element of the deformation F (cell = reference @ F, rows are lattice vectors) within this of the identity's.
KPOINTS_CELL_TOLERANCE = 0.15


def fixed_kpoint_meshes(cells, periodic, distance: float, reference_cells=()) -> list[tuple[list[int], int] | None]:
    """One k-point mesh per cell shape: (mesh, index of its reference cell) per cell, None for a non-periodic one.

    ``kpoints_distance`` applied to every cell separately gives strained cells (NPT, finite-temperature frames)
    meshes that jump between neighbouring integers, and with them a discontinuous energy surface. Here the mesh of a
    cell is that of the first reference cell it is a strained copy of (within :data:`KPOINTS_CELL_TOLERANCE`); the
    references are ``reference_cells`` in order, then every cell that matches none before it (a supercell of another
    size or shape gets its own mesh). A reference's index counts ``reference_cells`` first.
    """
    references = [np.asarray(cell, dtype=float) for cell in reference_cells]
    meshes = [kpoints_mesh(cell, distance) for cell in references]
    chosen = []
    for cell, is_periodic in zip(cells, periodic):
        if not is_periodic:
            chosen.append(None)
            continue
        cell = np.asarray(cell, dtype=float)
        for index, reference in enumerate(references):
            deformation = np.linalg.solve(reference, cell)
            if np.abs(deformation - np.eye(3)).max() <= KPOINTS_CELL_TOLERANCE:
                chosen.append((meshes[index], index))
                break
        else:
            references.append(cell)
            meshes.append(kpoints_mesh(cell, distance))
            chosen.append((meshes[-1], len(references) - 1))
    return chosen


def _chosen_meshes(structures: ConfigurationSet, distance: float, reference: ConfigurationSet | None):
    """:func:`fixed_kpoint_meshes` of a set, the periodic cells of ``reference`` (if given) as the first references."""
    configurations = structures.configurations
    references = []
    if reference is not None:
        cells = reference.configurations
        references = [cell for cell, pbc in zip(cells.cells, cells.pbc) if pbc.all()]
    return fixed_kpoint_meshes(configurations.cells, configurations.pbc.all(axis=1), distance, references)


def _mesh_label(mesh) -> str:
    return 'mesh_' + 'x'.join(str(int(n)) for n in mesh)


@calcfunction
def fixed_kpoints(structures: ConfigurationSet, distance: orm.Float, reference: ConfigurationSet | None = None) -> dict:
    """One KpointsData per cell shape of the periodic ``structures`` (:func:`fixed_kpoint_meshes`, the periodic cells
    of ``reference`` taken as the first references), named ``mesh_<n1>x<n2>x<n3>``."""
    outputs = {}
    for entry in _chosen_meshes(structures, distance.value, reference):
        if entry is not None and _mesh_label(entry[0]) not in outputs:
            kpoints = orm.KpointsData()
            kpoints.set_kpoints_mesh([int(n) for n in entry[0]])
            outputs[_mesh_label(entry[0])] = kpoints
    return outputs


def aims_label_problem(inputs) -> str | None:
    """What makes the FHI-aims inputs unfit for labelling (single points at the given geometries), or None."""
    aims = inputs.get('aims', {})
    if 'code' not in aims.get('aims', {}):
        return 'aims.aims.code: the FHI-aims code is needed for labeller aims'
    parameters = aims['aims']['parameters'].get_dict() if 'parameters' in aims['aims'] else {}
    refused = run_changing_keywords(parameters)
    if refused:
        return (
            f'aims.aims.parameters: {", ".join(refused)} would make FHI-aims move the atoms (relaxation, molecular '
            'dynamics or a socket driver); labelling is a single point at the given geometry'
        )
    unchecked, problem = unchecked_keywords(aims['aims'].get('unchecked_keywords'))
    if problem:
        return f'aims.aims.{problem}'
    try:
        validate_keywords(parameters, unchecked)
    except AimsInputError as error:
        return f'aims.aims.{error}'
    species, species_dir = aims['aims'].get('species'), aims['aims'].get('species_dir')
    if (species is None) == (species_dir is None):
        return 'aims.aims.species, aims.aims.species_dir: give exactly one source of species defaults'
    if species_dir is not None and not species_dir.value.startswith('/'):
        return f'aims.aims.species_dir: {species_dir.value!r} must be an absolute path on the remote computer'
    if 'kpoints' in aims and 'kpoints_distance' in aims:
        return 'aims.kpoints, aims.kpoints_distance: give one (a fixed mesh, or the distance the mesh is derived from)'
    if 'kpoints_distance' in aims and 'k_grid' in parameters:
        return 'aims.kpoints_distance, aims.aims.parameters[k_grid]: give one'
    if 'kpoints_reference' in aims and 'kpoints_distance' not in aims:
        return 'aims.kpoints_reference: needs aims.kpoints_distance (the reference cells\' meshes are derived from it)'
    return None


def prepare_aims(process) -> None:
    """With ``aims.kpoints_distance``: fix the k-point meshes of the whole set once (``process.ctx.kpoints``)."""
    if 'kpoints_distance' in process.inputs.aims:
        process.ctx.kpoints = _fix_kpoints(process, process.inputs.aims.kpoints_distance.value)


def _fix_kpoints(process, distance: float) -> list[str | None]:
    """One KpointsData per cell shape (see :func:`fixed_kpoint_meshes`), made by :func:`fixed_kpoints`; its uuid
    per configuration."""
    reference = process.inputs.aims.get('kpoints_reference')
    chosen = _chosen_meshes(process.inputs.structures, distance, reference)
    nodes = {}
    if any(entry is not None for entry in chosen):
        extra = {'reference': reference} if reference is not None else {}
        nodes = fixed_kpoints(process.inputs.structures, process.inputs.aims.kpoints_distance,
                              metadata={'call_link_label': 'kpoints'}, **extra)
    uuids, users = [], {}
    for index, entry in enumerate(chosen):
        if entry is None:
            uuids.append(None)
            continue
        mesh = tuple(int(n) for n in entry[0])
        uuids.append(nodes[_mesh_label(mesh)].uuid)
        users.setdefault(mesh, []).append(index)
    for mesh, indices in users.items():
        process.report(f'k-point mesh {"x".join(map(str, mesh))} (kpoints_distance {distance} 1/Å, fixed per cell '
                       f'shape) for configurations {indices}')
    return uuids


def submit_aims(process, index: int):
    inputs = process.exposed_inputs(AimsBaseWorkChain, 'aims')
    inputs['aims'] = dict(inputs['aims'], structure=process.inputs.structures.get_structure(index))
    if process.ctx.kpoints is not None:
        # The mesh fixed for this cell's shape replaces the per-cell mesh AimsBaseWorkChain would build.
        inputs.pop('kpoints_distance')
        if process.ctx.kpoints[index] is not None:
            inputs['kpoints'] = orm.load_node(process.ctx.kpoints[index])
    inputs['metadata'] = {'call_link_label': f'aims_{index}'}
    return submit_once(process, AimsBaseWorkChain, **inputs)
