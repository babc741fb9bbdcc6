"""Parser of ``alml.ase``: turn ``labelled.npz`` + ``report.json`` into nodes."""

from __future__ import annotations

import io
import json

from aiida import orm

from aiida_alml.calculations.ase import LABELLED_FILE, REPORT_FILE
from aiida_alml.atoms.configurations import ConfigurationError, Configurations
from aiida_alml.data import ConfigurationSet
from aiida_alml.engines.calculators import calculator_kwargs, resolve_calculator
from aiida_alml.engines.disk import disk_full_line
from aiida_alml.label_settings import with_label_settings
from aiida_alml.parsers.interruption import SCHEDULER_STDERR, InterruptionAwareParser

__all__ = ('AseLabelParser', 'label_settings')

STDOUT_FILE = 'alml-label.out'
STDERR_FILE = SCHEDULER_STDERR  # the engine's stderr (not joined to its stdout)


class AseLabelParser(InterruptionAwareParser):
    """Attach ``output_parameters`` and, when any configuration succeeded, ``labelled``.

    Each labelled configuration keeps the metadata of its input configuration plus ``source_index`` (its position in
    the input set), ``labelled_by`` (the uuid of this calculation), so its origin can be traced without the graph, and
    ``label_settings`` / ``label_fingerprint`` (:func:`label_settings`).
    """

    def parse_job(self, **kwargs):
        retrieved = self.retrieved
        names = retrieved.base.repository.list_object_names()
        outputs = [retrieved.base.repository.get_object_content(name, mode='r') for name in (STDOUT_FILE, STDERR_FILE)
                   if name in names]
        if (line := disk_full_line(*outputs)):
            return self.exit_codes.ERROR_DISK_FULL.format(details=line)
        if REPORT_FILE not in names:
            return self.exit_codes.ERROR_MISSING_OUTPUT
        try:
            report = json.loads(retrieved.base.repository.get_object_content(REPORT_FILE, mode='r'))
        except json.JSONDecodeError as exception:
            return self.exit_codes.ERROR_READING_OUTPUT.format(error=f'{REPORT_FILE}: {exception}')
        self.out('output_parameters', orm.Dict(report))
        if report['num_succeeded'] == 0:
            return self.exit_codes.ERROR_ALL_CONFIGURATIONS_FAILED
        if LABELLED_FILE not in names:
            return self.exit_codes.ERROR_READING_OUTPUT.format(error=f'{LABELLED_FILE} is missing')

        try:
            with retrieved.base.repository.open(LABELLED_FILE, mode='rb') as handle:
                labelled = Configurations.from_npz(io.BytesIO(handle.read()))
        except (OSError, ValueError, ConfigurationError) as exception:
            return self.exit_codes.ERROR_READING_OUTPUT.format(error=f'{LABELLED_FILE}: {exception}')

        source = self.node.inputs.structures.configurations
        uuid = self.node.uuid
        settings = label_settings(self.node, report)
        metadata = []
        for meta in labelled.metadata:
            index = meta['source_index']
            # Settings recorded by an earlier labelling of the input are replaced: these labels are ours.
            metadata.append(
                with_label_settings({**source.metadata[index], 'source_index': index, 'labelled_by': uuid}, settings)
            )
        self.out('labelled', ConfigurationSet(labelled.replace(metadata=metadata)))
        return None


def label_settings(node, report: dict) -> dict:
    """What decides the labels of an ``alml.ase`` job: code, calculator class and keyword arguments, properties, ASE
    (and the version of the calculator's own package, tblite's for xTB).

    The calculator is recorded by the class its name resolves to, so ``emt`` and ``ase.calculators.emt:EMT`` agree.
    """
    spec = node.inputs.calculator.get_dict()
    calculator = resolve_calculator(spec['name'])
    settings = {
        'labeller': 'ase',
        'code': node.inputs.code.full_label,
        'plugin': node.process_type.rsplit(':', 1)[-1],
        # With the arguments a short name fixes (the method of gfn1-xtb and gfn2-xtb share a class); not the changes
        # of an SCF retry, which change how the SCF converges, not the labels.
        'calculator': {'class': f'{calculator.__module__}:{calculator.__qualname__}', 'kwargs': calculator_kwargs(spec)},
        'properties': sorted(report['properties']),
        'ase_version': report.get('ase_version'),
    }
    package = report.get('calculator_package') or {}
    if package.get('name') not in (None, 'ase'):  # ASE's own calculators: ase_version says it
        settings['calculator_version'] = f'{package["name"]} {package.get("version")}'
    return settings
