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
    so that ``aiida-alml launch`` reports it before it looks for a daemon or stores a node. The file itself is bounded
    before it is built (:func:`read_campaign_yaml`).
    """
    path = pathlib.Path(path)
    config = read_campaign_yaml(path)
    if not isinstance(config, dict):
        raise CampaignError(f'{path}: the top level must be a mapping of input names to values')
    from aiida_alml.workflows.active_learning import ActiveLearningWorkChain

    spec = ActiveLearningWorkChain.spec().inputs
    if 'protocol' in config:
        config = with_protocol(config)
    _refuse_booleans(spec, config, '')
    inputs = inputs_from_config(config, base=path.parent)
    problem = validation_problem(inputs)
    if problem:
        raise CampaignError(problem)
    return inputs


def with_protocol(config: dict) -> dict:
    """A campaign naming ``protocol: fast|moderate|precise``: the protocol's inputs with the file's keys laid over them
    (:func:`aiida_alml.workflows.protocols.active_learning_inputs`, the path of
    ``ActiveLearningWorkChain.get_builder_from_protocol``): mappings merged key by key, lists and values replaced,
    ``null`` removing an input the protocol sets. A file without ``protocol`` gets no protocol values at all (only
    the work chain's own defaults), as before protocols existed.
    """
    from aiida_alml.workflows.protocols import ProtocolError, active_learning_inputs

    config = dict(config)
    protocol = config.pop('protocol')
    if not isinstance(protocol, str):
        raise CampaignError(f'`protocol`: give a protocol name (fast, moderate or precise), got {protocol!r}')
    try:
        merged = active_learning_inputs(protocol, config)
    except ProtocolError as error:
        raise CampaignError(f'`protocol`: {error}') from error
    return _without_nulls(merged)


def _without_nulls(values: dict) -> dict:
    """Inputs and namespaces set to null dropped (the contents of a Dict or List input are kept as given)."""
    from aiida_alml.workflows.active_learning import ActiveLearningWorkChain
    from plumpy.ports import PortNamespace

    def prune(namespace, mapping):
        kept = {}
        for key, value in mapping.items():
            if value is None and key in namespace:
                continue
            port = namespace[key] if key in namespace and key != 'metadata' else None
            kept[key] = prune(port, value) if isinstance(port, PortNamespace) and isinstance(value, dict) else value
        return kept

    return prune(ActiveLearningWorkChain.spec().inputs, values)


#: Bytes: the largest campaign file read. A campaign file holds names and settings (the demo's is 4 KB; structures live
#: in their own files); 1 MiB leaves room for long condition lists and comments, and refuses before reading what would
#: take minutes to parse (a 100 MB string took 114 s).
MAX_CAMPAIGN_BYTES = 2**20
#: A structure file named by a campaign is read whole into memory at launch: 256 MiB of extxyz is ~10⁶ atoms.
MAX_STRUCTURE_FILE_BYTES = 256 * 2**20
#: Values (scalars, lists and mappings), each alias counted as the values it repeats: the demo holds about 200, a
#: campaign with a hundred MD conditions a few thousand. Aliases of blocks of aliases multiply (a 3.8 KB "billion
#: laughs" file stands for 10^9 values, which storing as JSON would spell out); the count is kept while the file is
#: composed, so it stops there, before anything is built (a 1 MiB flat list stops after 20 000 values, in under a
#: second).
MAX_CAMPAIGN_VALUES = 20_000
#: Nesting levels: the deepest input is 6 levels down (explore.md.metadata.options.environment_variables.X); YAML's
#: composer and our conversions recurse per level, and Python stops near 1000 levels with a RecursionError.
MAX_CAMPAIGN_DEPTH = 32
#: Integers are stored as the database's 64-bit integers (node PKs are too): larger ones would fail on store.
MAX_CAMPAIGN_INTEGER = 2**63 - 1

_TAG = 'tag:yaml.org,2002:'
#: Tags a campaign file may hold: JSON's types. ``!!binary``, ``!!set``, ``!!omap``, ``!!timestamp`` ... give Python
#: objects no input takes; ``<<`` (merge) is allowed as a key.
_PLAIN_TAGS = frozenset(_TAG + name for name in ('str', 'int', 'float', 'bool', 'null', 'seq', 'map'))
#: Integers as YAML 1.2 and JSON read them (decimal; also 0x hex and 0b binary, which no reader misreads): a leading 0
#: (YAML 1.1 octal: 0120 is 80) and a:b (YAML 1.1 base 60: 1:40 is 100) are refused, they would be read silently
#: otherwise as PyYAML's YAML 1.1 does.
_PLAIN_INTEGER = re.compile(r'[-+]?(?:0|[1-9][0-9]*|0x[0-9a-fA-F]+|0b[01]+)')
#: Floats as YAML 1.2 reads them: with a dot or an exponent (1e-3 and 1.0e5 too, which YAML 1.1 leaves as text).
_FLOAT = re.compile(r'''^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$''', re.VERBOSE)


def read_campaign_yaml(path: pathlib.Path):
    """The YAML text of a campaign file as plain Python values (dict, list, str, int, float, bool, None).

    Refused with a :class:`CampaignError` naming the line (and the key, where there is one): a file larger than
    :data:`MAX_CAMPAIGN_BYTES` (before it is read), nesting deeper than :data:`MAX_CAMPAIGN_DEPTH`, more than
    :data:`MAX_CAMPAIGN_VALUES` values with aliases expanded, an alias inside its own anchor, a key that is not text,
    a key given twice, a tag other than JSON's types, an integer YAML 1.1 would misread (``0120``, ``1:40``) or one
    beyond 64 bits. Dates stay text and ``1e-3`` is a number, as in YAML 1.2.
    """
    import yaml

    if not path.is_file():
        raise CampaignError(f'campaign file {path} does not exist')
    size = path.stat().st_size
    if size > MAX_CAMPAIGN_BYTES:
        raise CampaignError(f'{path}: {size} bytes, more than a campaign file may hold ({MAX_CAMPAIGN_BYTES} bytes, '
                            '1 MiB); structures belong in their own files, named in the campaign')
    with open(path, 'rb') as handle:
        raw = handle.read(MAX_CAMPAIGN_BYTES + 1)
    if len(raw) > MAX_CAMPAIGN_BYTES:  # it grew since it was measured
        raise CampaignError(f'{path}: more than {MAX_CAMPAIGN_BYTES} bytes (1 MiB)')
    try:
        text = raw.decode('utf-8')
    except UnicodeDecodeError as exception:
        raise CampaignError(f'{path}: not a text (UTF-8) file: {exception}') from exception
    loader = None
    try:
        loader = _campaign_loader()(text)  # refuses control characters already
        node = loader.get_single_node()
        if node is None:
            return None
        _check_node(node, '')
        return loader.construct_document(node)
    except yaml.YAMLError as exception:
        raise CampaignError(f'{path}: not valid YAML: {exception}') from exception
    finally:
        if loader is not None:
            loader.dispose()


def _campaign_loader():
    import yaml

    class CampaignLoader(yaml.SafeLoader):
        """YAML's safe loader with YAML 1.2 numbers and dates, refusing a key given twice in one mapping (YAML itself
        keeps the last silently) and bounding depth and alias expansion while it composes."""

        def __init__(self, stream):
            super().__init__(stream)
            self.open_anchors = set()
            self.expanded = {}  # id(node) -> the values it stands for, aliases expanded
            self.values = 0  # so far, each alias counted as the values it repeats
            self.keys = []  # where the composer is: keys and [list indices]

        def where(self, mark) -> str:
            """The key being read (`label.ase.calculator.kwargs`) and its line, for a message."""
            path = ''.join(step if step.startswith('[') else f'.{step}' for step in self.keys if step).lstrip('.')
            shown = path if len(path) <= 120 else f'{path[:120]}...'
            return f'`{shown}` (line {mark.line + 1})' if shown else f'line {mark.line + 1}'

        def count(self, values: int, mark) -> None:
            self.values += values
            if self.values > MAX_CAMPAIGN_VALUES:
                raise CampaignError(
                    f'{self.where(mark)}: the file holds more than {MAX_CAMPAIGN_VALUES} values, each alias counted '
                    'as the values it repeats; a campaign file names inputs and settings (structures live in their '
                    'own files) and may repeat a block with an alias, not multiply it'
                )

        def compose_node(self, parent, index):
            # `index` is the key node for a mapping's value, the position for a list item, None for a key.
            self.keys.append(index.value if isinstance(index, yaml.ScalarNode) else
                             f'[{index}]' if isinstance(index, int) else None)
            try:
                return self.compose_counted(parent, index)
            finally:
                self.keys.pop()

        def compose_counted(self, parent, index):
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent):
                if event.anchor in self.open_anchors:
                    raise CampaignError(f'{self.where(event.start_mark)}: the alias *{event.anchor} is inside the '
                                        f'block it names (&{event.anchor}): it would repeat itself without end')
                node = super().compose_node(parent, index)
                self.count(self.expanded[id(node)], event.start_mark)
                return node
            if len(self.keys) > MAX_CAMPAIGN_DEPTH:
                raise CampaignError(f'{self.where(event.start_mark)}: nested more than {MAX_CAMPAIGN_DEPTH} levels '
                                    'deep; no campaign input nests that deep')
            self.count(1, event.start_mark)
            anchor = getattr(event, 'anchor', None)
            if anchor is not None:
                self.open_anchors.add(anchor)
            node = super().compose_node(parent, index)
            self.open_anchors.discard(anchor)
            if isinstance(node, yaml.ScalarNode):
                self.expanded[id(node)] = 1
            else:
                children = [child for pair in node.value for child in pair] if isinstance(node, yaml.MappingNode) \
                    else node.value
                self.expanded[id(node)] = 1 + sum(self.expanded[id(child)] for child in children)
            return node

        def construct_mapping(self, node, deep=False):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == _TAG + 'merge':
                    continue  # `<<: *defaults`: keys given beside it replace the merged ones, as YAML intends
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise CampaignError(
                        f'key `{key}` is given twice in one mapping (line {seen[key] + 1} and line '
                        f'{key_node.start_mark.line + 1}); YAML would keep the last silently'
                    )
                seen[key] = key_node.start_mark.line
            return super().construct_mapping(node, deep=deep)

    # YAML 1.2 (and JSON) numbers; dates stay text (no input takes a date).
    CampaignLoader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_TAG + 'float', _TAG + 'timestamp')]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    CampaignLoader.add_implicit_resolver(_TAG + 'float', _FLOAT, list('-+0123456789.'))
    return CampaignLoader


def _check_node(node, where: str) -> None:
    """Refuse what YAML would build into something no input takes, or misread; ``where`` is the key path."""
    import yaml

    name = f'`{where}`' if where else 'the top level'
    line = node.start_mark.line + 1
    if node.tag not in _PLAIN_TAGS:
        tag = node.tag.replace(_TAG, '!!')
        raise CampaignError(f'{name} (line {line}): the YAML tag {tag} makes a value no input takes; a campaign file '
                            'holds text, numbers, true/false, null, lists and mappings')
    if isinstance(node, yaml.ScalarNode):
        _check_scalar(node, name, line)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_node(item, f'{where}[{index}]')
    else:
        for key_node, value_node in node.value:
            if key_node.tag == _TAG + 'merge':
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                if not all(isinstance(source, yaml.MappingNode) for source in sources):
                    raise CampaignError(f'{name} (line {line}): `<<` merges a mapping (or a list of them) into '
                                        'this one')
                for source in sources:  # merged keys belong to this mapping
                    _check_node(source, where)
                continue
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _TAG + 'str':
                shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else f'(a {key_node.id})'
                inside = f'in {name}' if where else 'at the top level'
                raise CampaignError(f'key {shown} {inside} (line {key_node.start_mark.line + 1}) is not text: keys are '
                                    'input and option names (quote a key that is meant as text)')
            _check_node(value_node, f'{where}.{key_node.value}' if where else key_node.value)


def _check_scalar(node, name: str, line: int) -> None:
    text = node.value
    if node.tag == _TAG + 'int':
        plain = text.replace('_', '')
        if not _PLAIN_INTEGER.fullmatch(plain):
            misread = re.search(r'^[-+]?0\d|:', plain)
            why = ('YAML 1.1 reads a leading 0 as octal (0120 is 80) and a:b as base 60 (1:40 is 100); write it '
                   'without the leading 0 or the colon (in quotes if it is meant as text)') if misread \
                else 'give digits only'
            raise CampaignError(f'{name} (line {line}): {text!r} is not a plain whole number: {why}')
        digits = plain.lstrip('+-')
        base = {'0x': 16, '0b': 2}.get(digits[:2], 10)
        body = digits if base == 10 else digits[2:]
        if len(body) > 64 or int(body, base) > MAX_CAMPAIGN_INTEGER:  # 64 digits: no slow conversion of a long text
            shown = f'{text[:40]}...' if len(text) > 40 else text
            raise CampaignError(f'{name} (line {line}): {shown} is beyond the 64-bit integers the database stores '
                                f'(at most {MAX_CAMPAIGN_INTEGER} in size)')
    elif node.tag == _TAG + 'float' and not (_FLOAT.match(text) or re.fullmatch(r'[-+]?[0-9][0-9_]*', text)):
        raise CampaignError(f'{name} (line {line}): {text!r} is not a number')
    elif node.tag == _TAG + 'bool' and text.lower() not in ('true', 'false', 'yes', 'no', 'on', 'off'):
        raise CampaignError(f'{name} (line {line}): {text!r} is not true or false')


def validation_problem(inputs: dict, process_class=None) -> str | None:
    """What the input validation of ``process_class`` (default ``alml.active_learning``) says about ``inputs`` (the
    key named first), or None.

    The same ``pre_process`` + ``validate`` a submission runs, on copies of the nested mappings (defaults are filled
    into the copies, never into ``inputs``); no node is stored.
    """
    from plumpy.ports import PortNamespace

    if process_class is None:
        from aiida_alml.workflows.active_learning import ActiveLearningWorkChain as process_class

    spec = process_class.spec().inputs
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
    structure, when a number is NaN or infinite or a label not a number, when a coordinate or cell entry is beyond
    :data:`aiida_alml.atoms.configurations.MAX_COORDINATE`, or when two atoms overlap (closer than
    :data:`aiida_alml.atoms.configurations.CLOSE_CONTACT`).
    """
    from aiida import orm

    from aiida_alml.atoms.configurations import (
        CLOSE_CONTACT, MAX_COORDINATE, ConfigurationError, close_contact, far_coordinate,
    )
    from aiida_alml.data import ConfigurationSet

    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise CampaignError(f'`{name}`: give a structure file name or a node PK/UUID, got {value!r}')
    if isinstance(value, int) or (isinstance(value, str) and len(value) == 36 and value.count('-') == 4):
        node = orm.load_node(value)
        if not isinstance(node, ConfigurationSet):
            raise CampaignError(f'`{name}`: node {value} is a {type(node).__name__}, not a ConfigurationSet')
        return node
    path = base / str(value)
    # A campaign file is data that may come from anyone: it names files beside it, not any file the launching user
    # can read (which would then be stored, and exported, as nodes).
    if not path.resolve().is_relative_to(base.resolve()):
        raise CampaignError(
            f'`{name}`: {value!r} is outside the campaign file\'s folder {base}: a campaign file names only files '
            'beside it or in folders below it (copy the file there, or give the PK of a stored ConfigurationSet)'
        )
    if not path.is_file():
        raise CampaignError(f'`{name}`: structure file {path} does not exist')
    if path.stat().st_size > MAX_STRUCTURE_FILE_BYTES:
        raise CampaignError(
            f'`{name}`: {path} has {path.stat().st_size} bytes, more than a structure file of a campaign may hold '
            f'({MAX_STRUCTURE_FILE_BYTES} bytes): store a set this large from Python and give its PK'
        )
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
    if (found := far_coordinate(node.configurations)):
        index, array, value = found
        raise CampaignError(f'`{name}`: {path}: structure {index} has a {array} entry of {value:g} Å, beyond '
                            f'±{MAX_COORDINATE:g} Å (1 µm): a unit mistake or not a structure')
    if (found := close_contact(node.configurations)):
        index, i, j, distance = found
        raise CampaignError(
            f'`{name}`: {path}: structure {index} has atoms {i} and {j} {distance:.3f} Å apart (closer than '
            f'{CLOSE_CONTACT} Å): overlapping atoms give meaningless labels'
        )
    return node
