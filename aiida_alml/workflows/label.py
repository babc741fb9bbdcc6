"""``alml.label``: label a ConfigurationSet with FHI-aims, an ASE calculator or any command-line program.

* ``labeller='aims'``: one ``alml.aims.base`` per configuration, at most ``max_concurrent`` running at once.
* ``labeller='ase'``: one batched ``alml.ase`` job for the whole set, or ``ase.jobs`` of them on consecutive pieces,
  each under an ``alml.ase.base`` that runs it again when the scheduler cancelled or lost it (``max_relaunches``).
* ``labeller='shell'``: one aiida-shell ``ShellJob`` per configuration, under an ``alml.shell.base``; the program
  reads the geometry file we write (placeholder ``{geometry}`` in its arguments) and writes an ASE-readable file with
  energy and forces.

The labelled configurations are gathered into one ConfigurationSet by :func:`merge_labelled`, a calcfunction whose
inputs are the per-calculation outputs, so each configuration stays linked to the calculation that made it; every
configuration's metadata also names that calculation (``source_calc_uuid``) and records the settings that made its
labels (``label_settings``, ``label_fingerprint``; see :mod:`aiida_alml.label_settings`): labels with other settings
are not merged. Failures are recorded in the ``failures`` output; the work chain fails only when their fraction
exceeds ``max_failed_fraction``.

FHI-aims labelling is a single point at the given geometry: relaxation and MD keywords are refused, and with
``aims.kpoints_distance`` the k-point mesh is fixed once per cell shape (:func:`fixed_kpoint_meshes`) instead of
being rebuilt for every strained cell.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Callable

import numpy as np
from aiida import orm
from aiida.engine import ToContext, WorkChain, calcfunction, if_, while_
from aiida.plugins import CalculationFactory

from aiida_alml.calculations.aims import unchecked_keywords
from aiida_alml.data.configurations import ConfigurationSet
from aiida_alml.formats.aims_input import AimsInputError, run_changing_keywords, validate_keywords
from aiida_alml.label_settings import SETTINGS_KEY, inconsistent_settings, labels_mismatch, with_label_settings
from aiida_alml.atoms.suggest import did_you_mean
from aiida_alml.job_options import scheduler_option_problem
from aiida_alml.workflows.aims_base import AimsBaseWorkChain, kpoints_mesh
from aiida_alml.workflows.ase_base import AseBaseWorkChain
from aiida_alml.workflows.base import base_inputs, define_relaunch_input, job_failure, last_job
from aiida_alml.workflows.job_resources import resources_problem
from aiida_alml.workflows.namespaces import unknown_input_problem
from aiida_alml.workflows.shell_labelling import GEOMETRY_PLACEHOLDER, shell_label_problem
from aiida_alml.workflows.submission import EndsInterruptedFunctions, submit_once

__all__ = (
    'LabelWorkChain', 'merge_labelled', 'parse_shell_labels', 'declare_label_settings', 'inconsistent_settings',
    'labels_mismatch', 'fixed_kpoint_meshes', 'fixed_kpoints', 'record_failures',
)

#: At most this many alml.ase jobs per labelling (``ase.jobs``): each is submitted at once.
MAX_ASE_JOBS = 256

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


def _recorded(meta: dict, kpoints_distance: float | None) -> dict:
    """One labelled configuration's metadata with the k-point distance its fixed mesh came from added to its settings.

    The calculation saw only the mesh; the density rule is the work chain's, so the work chain records it (periodic
    configurations only: a molecule has no k-points).
    """
    settings = meta.get(SETTINGS_KEY)
    if kpoints_distance is None or not settings or 'k_grid' not in settings:
        return meta
    return with_label_settings(meta, {**settings, 'kpoints_distance': kpoints_distance})


@calcfunction
def split_configurations(structures: ConfigurationSet, parts: orm.Int) -> dict:
    """``parts`` consecutive pieces of ``structures`` (``part_<k>``), as equal in size as they come."""
    pieces = np.array_split(np.arange(structures.num_configurations), parts.value)
    return {f'part_{k}': ConfigurationSet(structures.configurations.select(piece.tolist()))
            for k, piece in enumerate(pieces)}


@calcfunction
def merge_labelled(
    structures: ConfigurationSet, indices: orm.List, kpoints_distance: orm.Float | None = None, **labelled
) -> ConfigurationSet:
    """One ConfigurationSet of every labelled configuration, in input order, each knowing its source calculation.

    ``labelled`` maps ``set_<k>`` to the labelled ConfigurationSet of the k-th entry of ``indices`` (the input
    positions it covers). ``kpoints_distance``: the density the fixed FHI-aims k-meshes were derived from, added to
    the recorded settings of the periodic configurations. Refuses to merge labels computed with inconsistent settings.
    """
    from aiida_alml.atoms.configurations import Configurations

    distance = kpoints_distance.value if kpoints_distance is not None else None
    positions = indices.get_list()
    images, metadata, order = [], [], []
    for key in sorted(labelled, key=lambda name: int(name.split('_')[1])):
        node = labelled[key]
        covered = positions[int(key.split('_')[1])]
        creator = node.creator
        for atoms, source_index in zip(node.to_ase(), covered):
            meta = dict(atoms.info)
            meta.setdefault('source_calc_uuid', meta.get('labelled_by') or (creator.uuid if creator else None))
            original = structures.configurations.metadata[source_index]
            images.append(atoms)
            metadata.append(_recorded({**original, **meta, 'input_index': source_index}, distance))
            order.append(source_index)
    problem = inconsistent_settings(metadata)
    if problem:
        raise ValueError(f'refusing to merge labels computed with inconsistent settings: {problem}')
    ranked = sorted(range(len(order)), key=order.__getitem__)
    merged = Configurations.from_ase([images[i] for i in ranked], metadata=[metadata[i] for i in ranked])
    return ConfigurationSet(merged)


@calcfunction
def record_failures(failures: orm.Dict) -> orm.Dict:
    """The ``failures`` of a labelling: input index -> the pk, process label, exit status and message of the process
    that did not label it, in the order of the input indices."""
    facts = failures.get_dict()
    return orm.Dict({key: facts[key] for key in sorted(facts, key=int)})


@calcfunction
def parse_shell_labels(output_file: orm.SinglefileData, file_format: orm.Str) -> ConfigurationSet:
    """Our parser of a reference program's output: an ASE-readable file with energy and forces of one geometry."""
    import pathlib
    import tempfile

    from ase.io import read

    # ASE guesses a format from the file name, so read it under its own name (its last part only: a node from an
    # imported archive may carry any name, and the file must stay in the temporary folder).
    with tempfile.TemporaryDirectory() as directory:
        path = pathlib.Path(directory) / (pathlib.PurePath(output_file.filename).name or 'output')
        path.write_bytes(output_file.get_content(mode='rb'))
        atoms = read(path, index=-1, format=file_format.value or None)
    results = getattr(atoms.calc, 'results', {}) or {}
    missing = [name for name in ('energy', 'forces') if name not in results]
    if missing:
        raise ValueError(f'{output_file.filename}: no {" and ".join(missing)} in the program output')
    creator = output_file.creator
    meta = {'labeller': 'shell', 'source_calc_uuid': creator.uuid if creator else None}
    if creator is not None:
        # What decides the numbers: the program (its code) and its command line; the output format only says how
        # to read them, but a different reader could round differently.
        settings = {
            'labeller': 'shell',
            'code': creator.inputs.code.full_label,
            'plugin': creator.process_type.rsplit(':', 1)[-1],
            'arguments': creator.inputs.arguments.get_list() if 'arguments' in creator.inputs else [],
            'output_format': file_format.value,
        }
        meta = with_label_settings(meta, settings)
    return ConfigurationSet.from_ase([atoms], metadata=[meta])


@calcfunction
def declare_label_settings(labelled: ConfigurationSet, settings: orm.Dict) -> ConfigurationSet:
    """The same labels, declared to have been computed with ``settings`` (recorded, with their fingerprint).

    For labels made elsewhere (an extxyz file, another database) that should join a training set whose labels
    record their settings: copy the settings of a configuration made here
    (``node.configurations.metadata[0]['label_settings']``) once you have made sure the other labels were computed
    the same way. The claim is in the provenance (this calcfunction). Configurations that already record other
    settings are refused.
    """
    declared = settings.get_dict()
    metadata = []
    for index, meta in enumerate(labelled.configurations.metadata):
        recorded = meta.get(SETTINGS_KEY)
        if recorded and recorded != declared:
            problem = labels_mismatch([{SETTINGS_KEY: recorded}], [{SETTINGS_KEY: declared}])
            raise ValueError(f'configuration {index} already records other label settings: {problem}')
        metadata.append(with_label_settings(meta, declared))
    return ConfigurationSet(labelled.configurations.replace(metadata=metadata))


def validate_label_inputs(inputs, namespace):
    if (problem := unknown_input_problem(namespace, inputs)):
        return problem
    labeller = inputs['labeller'].value
    if labeller not in LABELLERS:
        return f'labeller: {labeller!r} is not one of {tuple(LABELLERS)}'
    unused = sorted(name for name in LABELLERS if name != labeller and inputs.get(name))
    if unused:
        # A block the chosen labeller ignores is a mistake (settings the user believes apply), never harmless.
        return f'{unused[0]}: settings for labeller {unused[0]!r}, but labeller is {labeller!r}: remove one of them'
    if (problem := LABELLERS[labeller].problem(inputs)):
        return problem
    fraction = inputs['max_failed_fraction'].value
    if not 0.0 <= fraction < 1.0:
        return f'max_failed_fraction: must be in [0, 1), got {fraction}'
    if inputs['max_concurrent'].value < 1:
        return f'max_concurrent: must be at least 1, got {inputs["max_concurrent"].value}'
    return None


def _shell_label_problem(inputs) -> str | None:
    return shell_label_problem(inputs, _options_problem)


def _options_problem(process_class, options: orm.Dict, name: str, code=None) -> str | None:
    """Why ``options`` cannot be the ``metadata.options`` of a ``process_class`` job of ``code`` (unknown key, wrong
    type, a word that would end a line of the job script, resources the computer's scheduler does not take)."""
    namespace = process_class.spec().inputs['metadata']['options']
    given = options.get_dict()
    unknown = sorted(set(given) - set(namespace))
    if unknown:
        return f'{name}.{unknown[0]}: not a job option{did_you_mean(unknown[0], namespace)}'
    if (problem := scheduler_option_problem(given, name)):
        return problem
    error = namespace.validate(namespace.pre_process(given))
    if error is None:
        return resources_problem(code, given, name)
    key = error.port.split('.', 1)[1] if '.' in error.port else ''
    return f'{name}{"." + key if key else ""}: {error.message}'


def _ase_label_problem(inputs) -> str | None:
    """The checks alml.ase makes on its inputs, made here so that a campaign fails at launch, not in the daemon."""
    from aiida_alml.engines.calculators import validate_spec

    ase = inputs.get('ase', {})
    if 'code' not in ase or 'calculator' not in ase:
        return 'ase.code, ase.calculator: both are needed for labeller ase'

    spec = ase['calculator'].get_dict()
    properties = ase['properties'].get_list() if 'properties' in ase else ['energy', 'forces']
    # The calculator alone first (energy is always computed), then what it is asked to compute.
    for name, wanted in (('ase.calculator', ['energy']), ('ase.properties', properties)):
        try:
            validate_spec(spec, wanted)
        except (ValueError, TypeError, ImportError) as error:
            # CalculatorSpecError is a ValueError; TypeError and ImportError: what an odd name makes importlib raise.
            return f'{name}: {error}'
    if 'jobs' in ase and not 1 <= ase['jobs'].value <= MAX_ASE_JOBS:
        return f'ase.jobs: must be 1 to {MAX_ASE_JOBS} jobs, got {ase["jobs"].value}'
    if 'options' in ase:
        return _options_problem(CalculationFactory('alml.ase'), ase['options'], 'ase.options', ase['code'])
    return None


def _aims_label_problem(inputs) -> str | None:
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


class LabelWorkChain(EndsInterruptedFunctions, WorkChain):
    """Label every configuration of ``structures`` with the chosen labeller and gather the labels in one set."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input('structures', valid_type=ConfigurationSet, help='The configurations to label.')
        spec.input('labeller', valid_type=orm.Str, help="'aims', 'ase' or 'shell'.")
        spec.input('max_concurrent', valid_type=orm.Int, default=lambda: orm.Int(10),
                   help='At most this many FHI-aims or shell jobs run at once.')
        spec.input('max_failed_fraction', valid_type=orm.Float, default=lambda: orm.Float(0.05),
                   help='The work chain fails when more than this fraction of configurations failed.')
        spec.expose_inputs(
            AimsBaseWorkChain, namespace='aims', exclude=('aims.structure',),
            namespace_options={'required': False, 'populate_defaults': False},
        )
        spec.input(
            'aims.kpoints_reference', valid_type=ConfigurationSet, required=False,
            help='Cells whose k-point meshes (from aims.kpoints_distance) the strained copies among the structures '
            'share; pass the same set to every alml.label of a campaign to fix its meshes once. Default: the first '
            'structure of each cell shape.',
        )
        spec.input_namespace('ase', required=False, populate_defaults=False)
        spec.input('ase.code', valid_type=orm.AbstractCode, required=False)
        spec.input('ase.calculator', valid_type=orm.Dict, required=False, help="{'name': 'emt', 'kwargs': {}}")
        spec.input('ase.properties', valid_type=orm.List, required=False)
        spec.input('ase.jobs', valid_type=orm.Int, required=False,
                   help='Split the configurations into this many alml.ase jobs that run at once (default 1: one job). '
                        'Threads per job: options.environment_variables.OMP_NUM_THREADS.')
        spec.input('ase.options', valid_type=orm.Dict, required=False, help='metadata.options of the job.')
        spec.input_namespace('shell', required=False, populate_defaults=False)
        spec.input('shell.code', valid_type=orm.AbstractCode, required=False, help='The reference program.')
        spec.input('shell.arguments', valid_type=orm.List, required=False,
                   help=f'Command-line arguments; {GEOMETRY_PLACEHOLDER} is replaced by the geometry file name.')
        spec.input('shell.geometry_filename', valid_type=orm.Str, default=lambda: orm.Str('geometry.xyz'),
                   help='Name of the geometry file written for the program.')
        spec.input('shell.geometry_format', valid_type=orm.Str, default=lambda: orm.Str('extxyz'),
                   help='ASE format of the geometry file.')
        spec.input('shell.output_filename', valid_type=orm.Str, required=False,
                   help='File the program writes with energy and forces (ASE-readable).')
        spec.input('shell.output_format', valid_type=orm.Str, default=lambda: orm.Str(''),
                   help='ASE format of the output file; empty: guessed from the name.')
        spec.input('shell.options', valid_type=orm.Dict, required=False, help='metadata.options of the jobs.')
        define_relaunch_input(spec)
        spec.inputs.validator = validate_label_inputs

        spec.outline(
            cls.setup,
            if_(cls.is_batched)(cls.run_batch).else_(
                while_(cls.has_unsubmitted)(cls.submit_wave),
            ),
            cls.gather,
        )
        spec.output('labelled', valid_type=ConfigurationSet, required=False)
        spec.output('failures', valid_type=orm.Dict, help='input index -> process pk, exit status and message.')
        spec.exit_code(400, 'ERROR_TOO_MANY_FAILURES', message='{failed} of {total} configurations failed (> {limit}).')
        spec.exit_code(401, 'ERROR_INCONSISTENT_SETTINGS', message='Labels with inconsistent settings: {detail}')
        spec.exit_code(402, 'ERROR_NOTHING_LABELLED', message='No configuration was labelled.')

    # ------------------------------------------------------------------ outline
    @property
    def labeller(self) -> 'Labeller':
        return LABELLERS[self.inputs.labeller.value]

    def setup(self):
        self.ctx.total = self.inputs.structures.num_configurations
        self.ctx.next_index = 0
        self.ctx.kpoints = None
        if self.labeller.prepare is not None:
            self.labeller.prepare(self)

    def _fix_kpoints(self, distance: float) -> list[str | None]:
        """One KpointsData per cell shape (see :func:`fixed_kpoint_meshes`), made by :func:`fixed_kpoints`; its uuid
        per configuration."""
        reference = self.inputs.aims.get('kpoints_reference')
        chosen = _chosen_meshes(self.inputs.structures, distance, reference)
        nodes = {}
        if any(entry is not None for entry in chosen):
            extra = {'reference': reference} if reference is not None else {}
            nodes = fixed_kpoints(self.inputs.structures, self.inputs.aims.kpoints_distance,
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
            self.report(f'k-point mesh {"x".join(map(str, mesh))} (kpoints_distance {distance} 1/Å, fixed per cell '
                        f'shape) for configurations {indices}')
        return uuids

    def is_batched(self):
        return self.labeller.batched

    def has_unsubmitted(self):
        return self.ctx.next_index < self.ctx.total

    def _batch_jobs(self) -> int:
        """How many jobs label the set: ``ase.jobs`` (1 unless given), never more than there are configurations."""
        jobs = self.inputs.ase.jobs.value if 'jobs' in self.inputs.get('ase', {}) else 1
        return max(1, min(jobs, self.ctx.total))

    def run_batch(self):
        jobs = self._batch_jobs()
        if jobs == 1:
            node = self.labeller.submit(self, None)
            self.report(f'labelling {self.ctx.total} configurations in one {node.process_label} <{node.pk}>')
            return ToContext(batch_job=node)
        parts = split_configurations(self.inputs.structures, orm.Int(jobs), metadata={'call_link_label': 'split'})
        submitted, offset, self.ctx.batch_offsets = {}, 0, []
        for k in range(jobs):
            part = parts[f'part_{k}']
            submitted[f'batch_job_{k}'] = _submit_ase(self, None, structures=part, link=f'ase_{k}')
            self.ctx.batch_offsets.append(offset)
            offset += part.num_configurations
        self.report(f'labelling {self.ctx.total} configurations in {jobs} parallel jobs '
                    f'<{", ".join(str(node.pk) for node in submitted.values())}>')
        return ToContext(**submitted)

    def submit_wave(self):
        """Submit the next ``max_concurrent`` configurations and wait for them (a wave-based throttle)."""
        stop = min(self.ctx.total, self.ctx.next_index + self.inputs.max_concurrent.value)
        submitted = {}
        for index in range(self.ctx.next_index, stop):
            node = self.labeller.submit(self, index)
            node.base.extras.set('alml_input_index', index)
            submitted[f'child_{index}'] = node
        self.report(f'submitted configurations {self.ctx.next_index}..{stop - 1} of {self.ctx.total}')
        self.ctx.next_index = stop
        return ToContext(**submitted)

    def gather(self):
        successes, failures = self._collect()
        self.out('failures', record_failures(orm.Dict({str(k): v for k, v in sorted(failures.items())}),
                                             metadata={'call_link_label': 'failures'}))
        failed, total = len(failures), self.ctx.total
        for index, failure in sorted(failures.items()):
            self.report(f'configuration {index} failed: {json.dumps(failure)}')
        if not successes:
            return self.exit_codes.ERROR_NOTHING_LABELLED
        distance = self.inputs.aims.kpoints_distance if self.ctx.kpoints is not None else None
        metadata = [
            _recorded(meta, distance.value if distance is not None else None)
            for node, _ in successes for meta in node.configurations.metadata
        ]
        problem = inconsistent_settings(metadata)
        if problem:
            return self.exit_codes.ERROR_INCONSISTENT_SETTINGS.format(detail=problem)
        sets = {f'set_{k}': node for k, (node, _) in enumerate(successes)}
        recorded = {'kpoints_distance': distance} if distance is not None else {}
        indices = orm.List([covered for _, covered in successes])
        merged = merge_labelled(
            self.inputs.structures, indices, metadata={'call_link_label': 'merge'}, **recorded, **sets
        )
        # What succeeded is attached even when too much failed: a caller (the active-learning loop) may keep it.
        self.out('labelled', merged)
        self.report(f'labelled {len(merged)} of {total} configurations ({failed} failed)')
        if failed / total > self.inputs.max_failed_fraction.value:
            return self.exit_codes.ERROR_TOO_MANY_FAILURES.format(
                failed=failed, total=total, limit=self.inputs.max_failed_fraction.value
            )
        return None

    def _collect(self):
        """(labelled set, input indices it covers) per success; input index -> failure description."""
        if self.labeller.batched:
            jobs = self._batch_jobs()
            names = ['batch_job'] if jobs == 1 else [f'batch_job_{k}' for k in range(jobs)]
            offsets = [0] if jobs == 1 else self.ctx.batch_offsets
            ends = [*offsets[1:], self.ctx.total]
            successes, failures = [], {}
            for name, start, end in zip(names, offsets, ends):
                node = self.ctx[name]
                if not node.is_finished_ok:
                    failures.update({i: _failure(node) for i in range(start, end)})
                    continue
                labelled = self.labeller.collect(self, node, None)
                covered = [start + int(meta['source_index']) for meta in labelled.configurations.metadata]
                missing = {'pk': last_job(node).pk, 'exit_status': None, 'message': 'not labelled by the batch job'}
                failures.update({i: dict(missing) for i in sorted(set(range(start, end)) - set(covered))})
                successes.append((labelled, covered))
            return successes, failures
        successes, failures = [], {}
        for index in range(self.ctx.total):
            node = self.ctx[f'child_{index}']
            labelled = self.labeller.collect(self, node, index) if node.is_finished_ok else _failure(node)
            if isinstance(labelled, dict):
                failures[index] = labelled
            else:
                successes.append((labelled, [index]))
        return successes, failures


# ---------------------------------------------------------------------- the labellers
# How each labeller's jobs are submitted and how a finished job's labels are read back. ``submit(work chain, index)``
# returns the launched process (index None: the whole set in one job); ``collect(work chain, node, index)`` returns the
# labelled ConfigurationSet, or a failure description (a dict) when the finished job left none.

    # ------------------------------------------------------------------ protocols
    @classmethod
    def get_available_protocols(cls) -> dict:
        """``{protocol: {'description': ...}}`` of ``aiida_alml/protocols/label.yaml``."""
        from aiida_alml.protocols import get_available_protocols

        return get_available_protocols('label')

    @classmethod
    def get_default_protocol(cls) -> str:
        from aiida_alml.protocols import get_default_protocol

        return get_default_protocol('label')

    @classmethod
    def get_protocol_inputs(cls, protocol: str | None = None, overrides: dict | None = None) -> dict:
        """The inputs of ``protocol`` (default: moderate) with ``overrides`` merged in, as plain values."""
        from aiida_alml.workflows.protocols import label_inputs

        return label_inputs(protocol, overrides)

    @classmethod
    def get_builder_from_protocol(cls, code, structures, calculator=None, protocol=None, overrides=None, options=None, labeller=None,
                                  species_root=None):
        """A builder that labels ``structures`` (a ConfigurationSet or ASE Atoms) with ``code``.

        The labeller follows the code's plugin (``alml.ase``, ``alml.aims``, ``core.shell``) unless ``labeller`` names
        it. ASE: ``calculator`` is the reference (``'emt'`` or ``{'name': ..., 'kwargs': {...}}``). FHI-aims: the
        FHI-aims protocol of the same name, species from ``species_root`` (or the code extra ``alml_species_root``).
        Shell: ``overrides['shell']`` gives the arguments and output file. ``options``: the jobs'
        ``metadata.options``. See docs/python.md.
        """
        from aiida_alml.workflows.protocols import label_builder

        return label_builder(cls, code, structures, calculator=calculator, protocol=protocol, overrides=overrides,
                             options=options, labeller=labeller, species_root=species_root)


def _prepare_aims(process) -> None:
    if 'kpoints_distance' in process.inputs.aims:
        process.ctx.kpoints = process._fix_kpoints(process.inputs.aims.kpoints_distance.value)


def _submit_aims(process, index: int):
    inputs = process.exposed_inputs(AimsBaseWorkChain, 'aims')
    inputs['aims'] = dict(inputs['aims'], structure=process.inputs.structures.get_structure(index))
    if process.ctx.kpoints is not None:
        # The mesh fixed for this cell's shape replaces the per-cell mesh AimsBaseWorkChain would build.
        inputs.pop('kpoints_distance')
        if process.ctx.kpoints[index] is not None:
            inputs['kpoints'] = orm.load_node(process.ctx.kpoints[index])
    inputs['metadata'] = {'call_link_label': f'aims_{index}'}
    return submit_once(process, AimsBaseWorkChain, **inputs)


def _submit_ase(process, _index: None, structures: ConfigurationSet | None = None, link: str = 'ase'):
    ase = process.inputs.ase
    inputs = {
        'code': ase.code,
        'structures': structures if structures is not None else process.inputs.structures,
        'calculator': ase.calculator,
        'metadata': {'options': ase.options.get_dict() if 'options' in ase else {}},
    }
    if 'properties' in ase:
        inputs['properties'] = ase.properties
    return submit_once(process, AseBaseWorkChain, **base_inputs('ase', inputs, process.inputs.max_relaunches, link))


def _submit_shell(process, index: int):
    import io

    from ase.io import write

    from aiida_alml.workflows.shell_base import ShellBaseWorkChain

    shell = process.inputs.shell
    buffer = io.StringIO()
    atoms = process.inputs.structures.get_atoms(index)
    atoms.calc = None
    write(buffer, atoms, format=shell.geometry_format.value)
    filename = shell.geometry_filename.value
    geometry = orm.SinglefileData(io.BytesIO(buffer.getvalue().encode()), filename=filename)
    options = shell.options.get_dict() if 'options' in shell else {}
    # ShellJob fails with exit status 410 on any stderr output; many programs print warnings there.
    options.setdefault('redirect_stderr', True)
    options.setdefault('resources', {'num_machines': 1})
    inputs = {
        'code': shell.code,
        # aiida-shell replaces {geometry} by the file name of the node passed under `nodes['geometry']`.
        'arguments': shell.arguments,
        'nodes': {'geometry': geometry},
        'filenames': {'geometry': filename},
        'outputs': orm.List([shell.output_filename.value]),
        'metadata': {'options': options},
    }
    return submit_once(process, ShellBaseWorkChain, **base_inputs(
        'shell', inputs, process.inputs.max_relaunches, f'shell_{index}'))


def _labelled_output(_process, node, _index):
    return node.outputs.labelled


def _collect_shell(process, node, index: int):
    job = last_job(node)  # the ShellJob that ran last under alml.shell.base
    output = ShellJobOutput.output_file(job, process.inputs.shell.output_filename.value)
    if output is None:
        return {'pk': job.pk, 'exit_status': None, 'message': 'no output file'}
    return parse_shell_labels(output, process.inputs.shell.output_format,
                              metadata={'call_link_label': f'parse_{index}'})


@dataclasses.dataclass(frozen=True)
class Labeller:
    """One way of making reference labels (see the module docstring)."""

    problem: Callable  # inputs of alml.label -> why they do not fit this labeller, or None (checked at launch)
    submit: Callable
    collect: Callable
    batched: bool = False  # one job for the whole set, instead of one per configuration
    prepare: Callable | None = None  # run once in setup, before anything is submitted


LABELLERS = {
    'aims': Labeller(_aims_label_problem, _submit_aims, _labelled_output, prepare=_prepare_aims),
    'ase': Labeller(_ase_label_problem, _submit_ase, _labelled_output, batched=True),
    'shell': Labeller(_shell_label_problem, _submit_shell, _collect_shell),
}


class ShellJobOutput:
    """Where aiida-shell puts an output file: a SinglefileData under its name with non-word characters as ``_``."""

    @staticmethod
    def output_file(node, filename: str):
        from aiida_shell.parsers.shell import ShellParser

        label = ShellParser.format_link_label(filename)
        return node.outputs[label] if label in node.outputs else None


def _failure(node) -> dict:
    node = job_failure(node)  # a base work chain that gave up: its last job says why
    return {
        'pk': node.pk,
        'process_label': node.process_label,
        'exit_status': node.exit_status,
        'message': node.exit_message or ('excepted' if node.is_excepted else 'killed' if node.is_killed else ''),
    }
