"""Model files whose payload has the right format tag but the wrong shape: refused with a message, never a traceback.

A model file is data (it may come from an archive or a colleague): the reader checks every field it uses.
"""

import json

import pytest
import torch
from helpers.mace import model_file

from aiida_alml.engines.model_format import ModelFormatError, read_header


def _edited(tmp_path, **changes):
    payload = torch.load(model_file(tmp_path / 'cu.alml'), weights_only=True)
    config = json.loads(payload['config'])
    config.update(changes.pop('config', {}))
    payload['config'] = json.dumps(config)
    payload.update(changes)
    torch.save(payload, tmp_path / 'edited.alml')
    return tmp_path / 'edited.alml'


@pytest.mark.parametrize(('changes', 'message'), [
    ({'state_dict': [1, 2]}, r'the weights \(state_dict\) are not a mapping of names to tensors'),
    ({'state_dict': {'atomic_energies_fn.atomic_energies': [0.0]}}, r'not a mapping of names to tensors'),
    ({'config': {'atomic_numbers': [-1]}}, r'atomic_numbers \[-1\] are not distinct elements'),
    ({'config': {'atomic_numbers': []}}, r'atomic_numbers \[\] are not distinct elements'),
    ({'config': {'atomic_numbers': [10**30]}}, r'are not distinct elements'),
    ({'config': {'atomic_numbers': [29, 29]}}, r'are not distinct elements'),
    ({'config': {'r_max': -4.0}}, r'r_max -4.0 is not a positive cutoff'),
    ({'config': {'r_max': 'inf'}}, r'r_max inf is not a positive cutoff'),
])
def test_malformed_payloads_are_refused_with_a_message(tmp_path, changes, message):
    with pytest.raises(ModelFormatError, match=message):
        read_header(_edited(tmp_path, **changes))


def test_the_unedited_file_reads(tmp_path):
    header = read_header(_edited(tmp_path))
    assert header['elements'] == ['Cu'] and header['r_max'] > 0
