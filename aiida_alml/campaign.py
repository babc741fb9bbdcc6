"""A campaign file (YAML) → the inputs of ``alml.active_learning`` (the progress table is :mod:`aiida_alml.progress`).

The YAML keys are the workflow's own input names (``aiida-alml launch --help`` and docs/campaign.md list them);
values are converted by the type each input expects: codes by label (``alml-label@localhost``), sets of
configurations from any ASE-readable file (relative to the YAML file) or a node PK/UUID, dicts and lists as Dict and
List nodes. Unknown keys are refused with the closest known names.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any

from aiida_alml.atoms.suggest import did_you_mean
from aiida_alml.job_options import JobOptionError, campaign_metadata, campaign_options

__all__ = ('CampaignError', 'load_campaign', 'inputs_from_config', 'validation_problem')


class CampaignError(ValueError):
    """The campaign file is malformed; the message names the key."""


def load_campaign(path: str | pathlib.Path) -> dict:
    """Read the YAML file, convert it to process inputs and validate them as the workflow will (nothing is stored).

    Everything the workflow's own input validation would refuse at submission is refused here, with the key named,
    so that ``aiida-alml launch`` reports it before it looks for a daemon or stores a node.
    """
    import yaml

    path = pathlib.Path(path)
    if not path.is_file():
        raise CampaignError(f'campaign file {path} does not exist')
    try:
        config = yaml.load(path.read_text(encoding='utf-8'), Loader=_unique_key_loader())  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exception:
        raise CampaignError(f'{path}: not valid YAML: {exception}') from exception
    except UnicodeDecodeError as exception:
        raise CampaignError(f'{path}: not a text (UTF-8) file: {exception}') from exception
    if not isinstance(config, dict):
        raise CampaignError(f'{path}: the top level must be a mapping of input names to values')
    from aiida_alml.workflows.active_learning import ActiveLearningWorkChain

    spec = ActiveLearningWorkChain.spec().inputs
    _refuse_booleans(spec, config, '')
    inputs = inputs_from_config(config, base=path.parent)
    problem = validation_problem(inputs)
    if problem:
        raise CampaignError(problem)
    return inputs


def validation_problem(inputs: dict) -> str | None:
    """What ``alml.active_learning``'s input validation says about ``inputs`` (the key named first), or None.

    The same ``pre_process`` + ``validate`` a submission runs, on copies of the nested mappings (defaults are filled
    into the copies, never into ``inputs``); no node is stored.
    """
    from plumpy.ports import PortNamespace

    from aiida_alml.workflows.active_learning import ActiveLearningWorkChain

    spec = ActiveLearningWorkChain.spec().inputs
    error = spec.validate(spec.pre_process(_copy_mappings(inputs)))
    if error is None:
        return None
    port = error.port.split('.', 1)[1] if '.' in error.port else ''  # without the leading `inputs`
    message = error.message
    if not port:
        return message
    # A namespace's validator names keys relative to that namespace (`ase.calculator` inside `label`) or names the
    # namespace itself first (`selection: ...`); a port's own type check names no key (`value 'x' is not of ...`).
    parent, _, last = port.rpartition('.')
    first = re.match(r'[A-Za-z_]\w*', message)
    first = first.group(0) if first else ''
    namespace = spec
    for step in port.split('.'):
        namespace = namespace[step] if isinstance(namespace, PortNamespace) and step in namespace else None
    if first == last:
        return f'{parent}.{message}' if parent else message
    if isinstance(namespace, PortNamespace) and first in namespace:
        return f'{port}.{message}'
    return f'`{port}`: {message}'


def _copy_mappings(value):
    if isinstance(value, dict):
        return {key: _copy_mappings(item) for key, item in value.items()}
    return value


def _refuse_booleans(namespace, values, where: str) -> None:
    """``true``/``false`` where an Int or Float input is expected: YAML would otherwise turn them into 1 and 0."""
    from aiida import orm
    from plumpy.ports import PortNamespace

    if not isinstance(values, dict):
        return
    for key, value in values.items():
        if key == 'metadata' or key not in namespace:
            continue
        port = namespace[key]
        name = f'{where}.{key}' if where else key
        if isinstance(port, PortNamespace):
            _refuse_booleans(port, value, name)
            continue
        types = _valid_types(port)
        if isinstance(value, bool) and orm.Bool not in types and {orm.Int, orm.Float} & set(types):
            expected = 'a whole number' if orm.Float not in types else 'a number'
            raise CampaignError(f'`{name}`: {value!r} is a yes/no value, {expected} is expected here')


def _unique_key_loader():
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        """YAML's safe loader, refusing a key given twice in one mapping (YAML itself keeps the last silently)."""

        def construct_mapping(self, node, deep=False):
            seen = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    hash(key)
                except TypeError:
                    continue  # an unhashable key: the base class raises its own error for it
                if key in seen:
                    raise CampaignError(
                        f'key `{key}` is given twice in one mapping (line {seen[key] + 1} and line '
                        f'{key_node.start_mark.line + 1}); YAML would keep the last silently'
                    )
                seen[key] = key_node.start_mark.line
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def inputs_from_config(config: dict, base: pathlib.Path) -> dict:
    from aiida_alml.workflows.active_learning import ActiveLearningWorkChain

    return _convert_namespace(ActiveLearningWorkChain.spec().inputs, config, base, '')


def _convert_namespace(namespace, values: dict, base: pathlib.Path, where: str) -> dict:
    from plumpy.ports import PortNamespace

    if not isinstance(values, dict):
        raise CampaignError(f'{where or "top level"}: expected a mapping, got {type(values).__name__}')
    converted = {}
    for key, value in values.items():
        name = f'{where}.{key}' if where else key
        if key == 'metadata':
            # Process options and labels: plain values, not nodes; only what runs nothing (docs/security.md).
            converted[key] = _checked(campaign_metadata, value, name)
            continue
        if key not in namespace:
            known = [port for port in namespace if port != 'metadata']
            # Exposed namespaces are flagged dynamic too; only one without named ports really takes free keys.
            if namespace.dynamic and not known:
                converted[key] = value
                continue
            hint = did_you_mean(key, known)
            raise CampaignError(f'unknown key `{name}`{hint}; known here: {", ".join(sorted(known))}')
        port = namespace[key]
        if isinstance(port, PortNamespace):
            converted[key] = _convert_namespace(port, value, base, name)
        else:
            converted[key] = _convert_value(port, value, base, name)
    return converted


def _checked(check, value, name: str):
    try:
        return check(value, name)
    except JobOptionError as exception:
        raise CampaignError(str(exception)) from exception


def _valid_types(port) -> tuple:
    valid = port.valid_type
    if valid is None:
        return ()
    return valid if isinstance(valid, tuple) else (valid,)


def _convert_value(port, value: Any, base: pathlib.Path, name: str):
    from aiida import orm
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    from aiida_alml.data import ConfigurationSet

    types = _valid_types(port)
    try:
        if any(issubclass(t, orm.AbstractCode) for t in types):
            return orm.load_code(str(value))
        if ConfigurationSet in types:
            return _configuration_set(value, base, name)
        if orm.Dict in types and isinstance(value, dict):
            if name.split('.')[-1] == 'options':  # job options of a labeller: the same rules as metadata.options
                value = _checked(campaign_options, value, name)
            return orm.Dict(value)
        if orm.List in types and isinstance(value, list):
            return orm.List(value)
        for node_type, python_type in ((orm.Bool, bool), (orm.Int, int), (orm.Float, (int, float)), (orm.Str, str)):
            if node_type in types and isinstance(value, python_type) and not (
                python_type is int and isinstance(value, bool)
            ):
                return node_type(value)
    except (NotExistent, MultipleObjectsError) as exception:
        raise CampaignError(f'`{name}`: {exception}') from exception
    expected = ', '.join(t.__name__ for t in types) or 'any'
    raise CampaignError(f'`{name}`: cannot use {value!r} here (expected {expected})')


def _configuration_set(value, base: pathlib.Path, name: str = 'structures'):
    """A set from a node PK/UUID, or from any ASE-readable file (labels from REF_* keys or the file's results).

    A file is refused, with ``name`` (the campaign key) in the message, when ASE cannot read it, when it holds no
    structure, when a number is NaN or infinite, or when two atoms overlap (closer than
    :data:`aiida_alml.atoms.configurations.CLOSE_CONTACT`).
    """
    from aiida import orm

    from aiida_alml.atoms.configurations import CLOSE_CONTACT, ConfigurationError, close_contact
    from aiida_alml.data import ConfigurationSet

    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise CampaignError(f'`{name}`: give a structure file name or a node PK/UUID, got {value!r}')
    if isinstance(value, int) or (isinstance(value, str) and len(value) == 36 and value.count('-') == 4):
        node = orm.load_node(value)
        if not isinstance(node, ConfigurationSet):
            raise CampaignError(f'`{name}`: node {value} is a {type(node).__name__}, not a ConfigurationSet')
        return node
    path = base / str(value)
    if not path.is_file():
        raise CampaignError(f'`{name}`: structure file {path} does not exist')
    import ase.io

    try:
        images = ase.io.read(path, index=':')
    except Exception as exception:  # noqa: BLE001
        # ASE's readers fail on a wrong or broken file with whatever their parser hits (UnknownFileTypeError,
        # XYZError, ValueError, IndexError, UnicodeDecodeError, ...): every one means "not a structure file".
        raise CampaignError(
            f'`{name}`: ASE cannot read structures from {path} ({type(exception).__name__}: {exception}); give an '
            'extxyz file (or another format ASE knows from the file name)'
        ) from exception
    try:
        node = ConfigurationSet.from_ase(images)
    except ConfigurationError as exception:
        raise CampaignError(f'`{name}`: {path}: {exception}') from exception
    if (found := close_contact(node.configurations)):
        index, i, j, distance = found
        raise CampaignError(
            f'`{name}`: {path}: structure {index} has atoms {i} and {j} {distance:.3f} Å apart (closer than '
            f'{CLOSE_CONTACT} Å): overlapping atoms give meaningless labels'
        )
    return node
