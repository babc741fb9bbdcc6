"""Protocols: named, versioned sets of default inputs kept as YAML files next to this module."""

from __future__ import annotations

import copy
import pathlib

__all__ = ('load_protocol_file', 'get_protocol_inputs', 'get_available_protocols', 'get_default_protocol',
           'recursive_merge', 'merge_inputs')

_DIRECTORY = pathlib.Path(__file__).parent


def load_protocol_file(name: str) -> dict:
    """The parsed ``<name>.yaml`` of this package."""
    import yaml

    path = _DIRECTORY / f'{name}.yaml'
    if not path.is_file():
        raise ValueError(f'no protocol file {path.name} in {_DIRECTORY}')
    with path.open(encoding='utf8') as handle:
        return yaml.safe_load(handle)


def recursive_merge(left: dict, right: dict) -> dict:
    """A copy of ``left`` updated with ``right``, merging nested dictionaries instead of replacing them."""
    merged = copy.deepcopy(left)
    for key, value in right.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = recursive_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def get_protocol_inputs(name: str, protocol: str | None = None, overrides: dict | None = None) -> dict:
    """Default inputs of ``protocol`` (the file's default protocol when None) with ``overrides`` merged in."""
    data = load_protocol_file(name)
    protocol = protocol or data['default_protocol']
    if protocol not in data['protocols']:
        raise ValueError(f'protocol {protocol!r} is not one of {sorted(data["protocols"])} in {name}.yaml')
    inputs = recursive_merge(data['default_inputs'], data['protocols'][protocol])
    inputs.pop('description', None)
    return merge_inputs(inputs, overrides or {})


def get_available_protocols(name: str) -> dict:
    """``{protocol: {'description': ...}}`` of ``<name>.yaml`` (as aiida-quantumespresso's work chains answer)."""
    return {protocol: {'description': values.get('description', '')}
            for protocol, values in load_protocol_file(name)['protocols'].items()}


def get_default_protocol(name: str) -> str:
    return load_protocol_file(name)['default_protocol']


def merge_inputs(left: dict, right: dict) -> dict:
    """``left`` updated with ``right`` as :func:`recursive_merge`, for inputs that may hold nodes: nested plain
    dictionaries are merged, everything else (a node, a list, a number) replaces what was there. Nodes are not copied
    (they cannot be deep-copied); plain values are."""
    merged = {key: _copied(value) for key, value in left.items()}
    for key, value in right.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_inputs(merged[key], value)
        else:
            merged[key] = _copied(value)
    return merged


def _copied(value):
    if isinstance(value, dict):
        return {key: _copied(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copied(item) for item in value]
    return value  # numbers, text, nodes, ASE objects: used as given
