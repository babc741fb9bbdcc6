"""``alml.label``: label a ConfigurationSet with FHI-aims, an ASE calculator or any command-line program.

* ``labeller='aims'``: one ``alml.aims.base`` per configuration, at most ``max_concurrent`` running at once.
* ``labeller='ase'``: one batched ``alml.ase`` job for the whole set.
* ``labeller='shell'``: one aiida-shell ``ShellJob`` per configuration; the program reads the geometry file we write
  (placeholder ``{geometry}`` in its arguments) and writes an ASE-readable file with energy and forces.

The labelled configurations are gathered into one ConfigurationSet by :func:`merge_labelled`, a calcfunction whose
inputs are the per-calculation outputs, so each configuration stays linked to the calculation that made it; every
configuration's metadata also names that calculation (``source_calc_uuid``). Failures are recorded in the
``failures`` output; the work chain fails only when their fraction exceeds ``max_failed_fraction``.
"""

from __future__ import annotations

import json

from aiida import orm
from aiida.engine import ToContext, WorkChain, append_, calcfunction, if_, while_
from aiida.plugins import CalculationFactory

from aiida_alml.data.configurations import ConfigurationSet
from aiida_alml.workflows.aims_base import AimsBaseWorkChain

__all__ = ('LabelWorkChain', 'merge_labelled', 'parse_shell_labels', 'inconsistent_settings')

LABELLERS = ('aims', 'ase', 'shell')
GEOMETRY_PLACEHOLDER = '{geometry}'


def inconsistent_settings(metadata: list[dict]) -> str | None:
    """Why labels with these metadata may not share one training set, or None when they may.

    Labels are comparable only when computed with the same functional, relativity, smearing, spin treatment and the
    same species defaults. Species files are compared per element: two sets using different elements are fine as long
    as any element they share has the same file.
    """
    reference: dict | None = None
    species: dict[str, tuple[str, int]] = {}
    for index, meta in enumerate(metadata):
        settings = dict(meta.get('label_settings') or {})
        for name, digest in (settings.pop('species_hashes', None) or {}).items():
            seen = species.setdefault(name, (digest, index))
            if seen[0] != digest:
                return f'configuration {index} used a different species file {name} than configuration {seen[1]}'
        if reference is None:
            reference = (settings, index)
            continue
        for key in sorted(set(settings) | set(reference[0])):
            if settings.get(key) != reference[0].get(key):
                return (
                    f'configuration {index} was labelled with {key}={settings.get(key)!r} but configuration '
                    f'{reference[1]} with {key}={reference[0].get(key)!r}'
                )
    return None


@calcfunction
def merge_labelled(structures: ConfigurationSet, indices: orm.List, **labelled) -> ConfigurationSet:
    """One ConfigurationSet of every labelled configuration, in input order, each knowing its source calculation.

    ``labelled`` maps ``set_<k>`` to the labelled ConfigurationSet of the k-th entry of ``indices`` (the input
    positions it covers). Refuses to merge labels computed with inconsistent settings.
    """
    from aiida_alml.configurations import Configurations

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
            metadata.append({**original, **meta, 'input_index': source_index})
            order.append(source_index)
    problem = inconsistent_settings(metadata)
    if problem:
        raise ValueError(f'refusing to merge labels computed with inconsistent settings: {problem}')
    ranked = sorted(range(len(order)), key=order.__getitem__)
    merged = Configurations.from_ase([images[i] for i in ranked], metadata=[metadata[i] for i in ranked])
    return ConfigurationSet(merged)


@calcfunction
def parse_shell_labels(output_file: orm.SinglefileData, file_format: orm.Str) -> ConfigurationSet:
    """Our parser of a reference program's output: an ASE-readable file with energy and forces of one geometry."""
    import pathlib
    import tempfile

    from ase.io import read

    # ASE guesses a format from the file name, so read it under its own name.
    with tempfile.TemporaryDirectory() as directory:
        path = pathlib.Path(directory) / output_file.filename
        path.write_bytes(output_file.get_content(mode='rb'))
        atoms = read(path, index=-1, format=file_format.value or None)
    results = getattr(atoms.calc, 'results', {}) or {}
    missing = [name for name in ('energy', 'forces') if name not in results]
    if missing:
        raise ValueError(f'{output_file.filename}: no {" and ".join(missing)} in the program output')
    creator = output_file.creator
    meta = {'labeller': 'shell', 'source_calc_uuid': creator.uuid if creator else None}
    return ConfigurationSet.from_ase([atoms], metadata=[meta])


def validate_label_inputs(inputs, _):
    labeller = inputs['labeller'].value
    if labeller not in LABELLERS:
        return f'labeller: {labeller!r} is not one of {LABELLERS}'
    if labeller == 'aims' and 'code' not in inputs.get('aims', {}).get('aims', {}):
        return 'aims.aims.code: the FHI-aims code is needed for labeller aims'
    if labeller == 'ase' and ('code' not in inputs.get('ase', {}) or 'calculator' not in inputs.get('ase', {})):
        return 'ase.code, ase.calculator: both are needed for labeller ase'
    if labeller == 'shell':
        shell = inputs.get('shell', {})
        for name in ('code', 'arguments', 'output_filename'):
            if name not in shell:
                return f'shell.{name}: needed for labeller shell'
        if not any(GEOMETRY_PLACEHOLDER in arg for arg in shell['arguments'].get_list()):
            return f'shell.arguments: none contains the placeholder {GEOMETRY_PLACEHOLDER} for the geometry file'
    fraction = inputs['max_failed_fraction'].value
    if not 0.0 <= fraction < 1.0:
        return f'max_failed_fraction: must be in [0, 1), got {fraction}'
    if inputs['max_concurrent'].value < 1:
        return f'max_concurrent: must be at least 1, got {inputs["max_concurrent"].value}'
    return None


class LabelWorkChain(WorkChain):
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
        spec.input_namespace('ase', required=False, populate_defaults=False)
        spec.input('ase.code', valid_type=orm.AbstractCode, required=False)
        spec.input('ase.calculator', valid_type=orm.Dict, required=False, help="{'name': 'emt', 'kwargs': {}}")
        spec.input('ase.properties', valid_type=orm.List, required=False)
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
        spec.inputs.validator = validate_label_inputs

        spec.outline(
            cls.setup,
            if_(cls.is_batched)(cls.run_ase).else_(
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
    def setup(self):
        self.ctx.labeller = self.inputs.labeller.value
        self.ctx.total = self.inputs.structures.num_configurations
        self.ctx.next_index = 0
        self.ctx.children = []

    def is_batched(self):
        return self.ctx.labeller == 'ase'

    def has_unsubmitted(self):
        return self.ctx.next_index < self.ctx.total

    def run_ase(self):
        inputs = {
            'code': self.inputs.ase.code,
            'structures': self.inputs.structures,
            'calculator': self.inputs.ase.calculator,
            'metadata': {'call_link_label': 'ase', 'options': self.inputs.ase.options.get_dict()
                         if 'options' in self.inputs.ase else {}},
        }
        if 'properties' in self.inputs.ase:
            inputs['properties'] = self.inputs.ase.properties
        node = self.submit(CalculationFactory('alml.ase'), **inputs)
        self.report(f'labelling {self.ctx.total} configurations in one alml.ase job <{node.pk}>')
        return ToContext(children=append_(node))

    def submit_wave(self):
        """Submit the next ``max_concurrent`` configurations and wait for them (a wave-based throttle)."""
        stop = min(self.ctx.total, self.ctx.next_index + self.inputs.max_concurrent.value)
        submitted = {}
        for index in range(self.ctx.next_index, stop):
            node = self._submit_one(index)
            node.base.extras.set('alml_input_index', index)
            submitted[f'child_{index}'] = node
        self.report(f'submitted configurations {self.ctx.next_index}..{stop - 1} of {self.ctx.total}')
        self.ctx.next_index = stop
        return ToContext(**submitted)

    def _submit_one(self, index: int):
        structures = self.inputs.structures
        if self.ctx.labeller == 'aims':
            inputs = self.exposed_inputs(AimsBaseWorkChain, 'aims')
            inputs['aims'] = dict(inputs['aims'], structure=structures.get_structure(index))
            inputs['metadata'] = {'call_link_label': f'aims_{index}'}
            return self.submit(AimsBaseWorkChain, **inputs)
        return self._submit_shell(index)

    def _submit_shell(self, index: int):
        import io

        from aiida_shell import ShellJob
        from ase.io import write

        shell = self.inputs.shell
        buffer = io.StringIO()
        atoms = self.inputs.structures.get_atoms(index)
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
            'metadata': {'options': options, 'call_link_label': f'shell_{index}'},
        }
        return self.submit(ShellJob, **inputs)

    def gather(self):
        successes, failures = self._collect()
        self.out('failures', orm.Dict({str(k): v for k, v in sorted(failures.items())}).store())
        failed, total = len(failures), self.ctx.total
        for index, failure in sorted(failures.items()):
            self.report(f'configuration {index} failed: {json.dumps(failure)}')
        if failed / total > self.inputs.max_failed_fraction.value:
            return self.exit_codes.ERROR_TOO_MANY_FAILURES.format(
                failed=failed, total=total, limit=self.inputs.max_failed_fraction.value
            )
        if not successes:
            return self.exit_codes.ERROR_NOTHING_LABELLED
        metadata = [meta for node, _ in successes for meta in node.configurations.metadata]
        problem = inconsistent_settings(metadata)
        if problem:
            return self.exit_codes.ERROR_INCONSISTENT_SETTINGS.format(detail=problem)
        sets = {f'set_{k}': node for k, (node, _) in enumerate(successes)}
        indices = orm.List([covered for _, covered in successes])
        merged = merge_labelled(self.inputs.structures, indices, metadata={'call_link_label': 'merge'}, **sets)
        self.out('labelled', merged)
        self.report(f'labelled {len(merged)} of {total} configurations ({failed} failed)')
        return None

    def _collect(self):
        """(labelled set, input indices it covers) per success; input index -> failure description."""
        successes, failures = [], {}
        if self.ctx.labeller == 'ase':
            node = self.ctx.children[-1]
            if not node.is_finished_ok:
                return [], {i: _failure(node) for i in range(self.ctx.total)}
            labelled = node.outputs.labelled
            covered = [int(meta['source_index']) for meta in labelled.configurations.metadata]
            missing = sorted(set(range(self.ctx.total)) - set(covered))
            failures = {i: {'pk': node.pk, 'exit_status': None, 'message': 'not labelled by the batch job'}
                        for i in missing}
            return [(labelled, covered)], failures
        for index in range(self.ctx.total):
            node = self.ctx[f'child_{index}']
            if not node.is_finished_ok:
                failures[index] = _failure(node)
            elif self.ctx.labeller == 'aims':
                successes.append((node.outputs.labelled, [index]))
            else:
                output = ShellJobOutput.output_file(node, self.inputs.shell.output_filename.value)
                if output is None:
                    failures[index] = {'pk': node.pk, 'exit_status': None, 'message': 'no output file'}
                    continue
                labels = parse_shell_labels(
                    output, self.inputs.shell.output_format, metadata={'call_link_label': f'parse_{index}'}
                )
                successes.append((labels, [index]))
        return successes, failures


class ShellJobOutput:
    """Where aiida-shell puts an output file: a SinglefileData under its name with non-word characters as ``_``."""

    @staticmethod
    def output_file(node, filename: str):
        from aiida_shell.parsers.shell import ShellParser

        label = ShellParser.format_link_label(filename)
        return node.outputs[label] if label in node.outputs else None


def _failure(node) -> dict:
    return {
        'pk': node.pk,
        'process_label': node.process_label,
        'exit_status': node.exit_status,
        'message': node.exit_message or ('excepted' if node.is_excepted else 'killed' if node.is_killed else ''),
    }
