"""``alml.label``: label a ConfigurationSet with FHI-aims, an ASE calculator or any command-line program.

* ``labeller='aims'``: one ``alml.aims.base`` per configuration, at most ``max_concurrent`` running at once
  (:mod:`aiida_alml.workflows.labellers.aims`).
* ``labeller='ase'``: one batched ``alml.ase`` job for the whole set, or ``ase.jobs`` of them on consecutive pieces,
  each under an ``alml.ase.base`` that runs it again when the scheduler cancelled or lost it (``max_relaunches``;
  :mod:`aiida_alml.workflows.labellers.ase`).
* ``labeller='shell'``: one aiida-shell ``ShellJob`` per configuration, under an ``alml.shell.base``; the program
  reads the geometry file we write (placeholder ``{geometry}`` in its arguments) and writes an ASE-readable file with
  energy and forces (:mod:`aiida_alml.workflows.labellers.shell`).

This module holds the work chain and the table of labellers (:data:`LABELLERS`); each labeller's checks, submission
and calcfunctions are in its own module under :mod:`aiida_alml.workflows.labellers`.

The labelled configurations are gathered into one ConfigurationSet by :func:`merge_labelled`, a calcfunction whose
inputs are the per-calculation outputs, so each configuration stays linked to the calculation that made it; every
configuration's metadata also names that calculation (``source_calc_uuid``) and records the settings that made its
labels (``label_settings``, ``label_fingerprint``; see :mod:`aiida_alml.label_settings`): labels with other settings
are not merged. Failures are recorded in the ``failures`` output; the work chain fails only when their fraction
exceeds ``max_failed_fraction``.

FHI-aims labelling is a single point at the given geometry: relaxation and MD keywords are refused, and with
``aims.kpoints_distance`` the k-point mesh is fixed once per cell shape
(:func:`~aiida_alml.workflows.labellers.aims.fixed_kpoint_meshes`) instead of being rebuilt for every strained cell.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Callable

from aiida import orm
from aiida.engine import ToContext, WorkChain, if_, while_

from aiida_alml.data.configurations import ConfigurationSet
from aiida_alml.label_settings import inconsistent_settings
from aiida_alml.workflows.aims_base import AimsBaseWorkChain
from aiida_alml.workflows.base import define_relaunch_input, job_failure, last_job
from aiida_alml.workflows.functions.labels import merge_labelled, record_failures, with_kpoints_distance
from aiida_alml.workflows.labellers.aims import aims_label_problem, prepare_aims, submit_aims
from aiida_alml.workflows.labellers.ase import ase_label_problem, split_configurations, submit_ase
from aiida_alml.workflows.labellers.shell import GEOMETRY_PLACEHOLDER, collect_shell, shell_label_problem, submit_shell
from aiida_alml.workflows.namespaces import unknown_input_problem
from aiida_alml.workflows.protocols import ProtocolMixin
from aiida_alml.workflows.submission import EndsInterruptedFunctions

__all__ = ('LabelWorkChain', 'LABELLERS', 'Labeller', 'validate_label_inputs')


@dataclasses.dataclass(frozen=True)
class Labeller:
    """One way of making reference labels (see the module docstring): how its jobs are submitted and how a finished
    job's labels are read back.

    ``submit(work chain, index)`` returns the launched process (index None: the whole set in one job);
    ``collect(work chain, node, index)`` returns the labelled ConfigurationSet, or a failure description (a dict) when
    the finished job left none.
    """

    problem: Callable  # inputs of alml.label -> why they do not fit this labeller, or None (checked at launch)
    submit: Callable
    collect: Callable
    batched: bool = False  # one job for the whole set, instead of one per configuration
    prepare: Callable | None = None  # run once in setup, before anything is submitted


def _labelled_output(_process, node, _index):
    return node.outputs.labelled


LABELLERS = {
    'aims': Labeller(aims_label_problem, submit_aims, _labelled_output, prepare=prepare_aims),
    'ase': Labeller(ase_label_problem, submit_ase, _labelled_output, batched=True),
    'shell': Labeller(shell_label_problem, submit_shell, collect_shell),
}


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



class LabelWorkChain(EndsInterruptedFunctions, ProtocolMixin, WorkChain):
    """Label every configuration of ``structures`` with the chosen labeller and gather the labels in one set."""

    _protocol_name = 'label'

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
    def labeller(self) -> Labeller:
        return LABELLERS[self.inputs.labeller.value]

    def setup(self):
        self.ctx.total = self.inputs.structures.num_configurations
        self.ctx.next_index = 0
        self.ctx.kpoints = None
        if self.labeller.prepare is not None:
            self.labeller.prepare(self)

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
            submitted[f'batch_job_{k}'] = submit_ase(self, None, structures=part, link=f'ase_{k}')
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
            with_kpoints_distance(meta, distance.value if distance is not None else None)
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

    # ------------------------------------------------------------------ protocols
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


def _failure(node) -> dict:
    node = job_failure(node)  # a base work chain that gave up: its last job says why
    return {
        'pk': node.pk,
        'process_label': node.process_label,
        'exit_status': node.exit_status,
        'message': node.exit_message or ('excepted' if node.is_excepted else 'killed' if node.is_killed else ''),
    }
