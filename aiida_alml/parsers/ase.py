"""Parser of ``alml.ase``: turn ``labelled.npz`` + ``report.json`` into nodes."""

from __future__ import annotations

import io
import json

from aiida import orm
from aiida.parsers import Parser

from aiida_alml.calculations.ase import LABELLED_FILE, REPORT_FILE
from aiida_alml.configurations import ConfigurationError, Configurations
from aiida_alml.data import ConfigurationSet

__all__ = ('AseLabelParser',)


class AseLabelParser(Parser):
    """Attach ``output_parameters`` and, when any configuration succeeded, ``labelled``.

    Each labelled configuration keeps the metadata of its input configuration plus ``source_index`` (its position in
    the input set) and ``labelled_by`` (the uuid of this calculation), so its origin can be traced without the graph.
    """

    def parse(self, **kwargs):
        retrieved = self.retrieved
        names = retrieved.base.repository.list_object_names()
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
        metadata = []
        for meta in labelled.metadata:
            index = meta['source_index']
            metadata.append({**source.metadata[index], 'source_index': index, 'labelled_by': uuid})
        self.out('labelled', ConfigurationSet(labelled.replace(metadata=metadata)))
        return None
