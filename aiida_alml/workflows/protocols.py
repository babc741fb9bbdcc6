"""Protocols of the work chains users start: ready builders from what a user has, as aiida-quantumespresso makes them.

Each work chain's ``get_builder_from_protocol`` (``alml.active_learning``, ``alml.committee``, ``alml.explore``,
``alml.label``) lays three things over each other, later ones winning: the protocol's inputs (``fast``, ``moderate``,
``precise`` in ``aiida_alml/protocols/<name>.yaml``), what the arguments give (codes, structures, calculator,
scheduler options) and ``overrides``. Plain dictionaries are merged key by key (``{'selection': {'trust_lo': 0.1}}``
changes one entry of the protocol's selection), a node replaces the whole input, and ``None`` removes an input the
protocol sets. The result is converted to nodes by the type each port takes, unknown names are refused with the
closest known ones, and the work chain's own input validation runs before the builder is returned.

``alml.active_learning`` composes the others: its ``train``, ``explore`` and ``label`` namespaces come from
``committee.yaml``, ``explore.yaml`` and ``label.yaml`` (the protocol of the same name), and ``active_learning.yaml``
lays its own entries over them. A campaign file with ``protocol:`` goes through :func:`active_learning_inputs` too
(:func:`aiida_alml.campaign.load_campaign`), so the YAML route and the Python route give the same inputs.
"""

from __future__ import annotations

from typing import Any

from aiida_alml.protocols import get_protocol_inputs, merge_inputs

__all__ = (
    'PROTOCOL_INPUTS', 'ProtocolError', 'ProtocolMixin', 'LABELLER_PLUGINS', 'committee_inputs', 'explore_inputs', 'label_inputs', 'active_learning_inputs',
    'builder_from_inputs', 'committee_builder', 'explore_builder', 'label_builder', 'active_learning_builder',
    'process_inputs',
)

#: The labeller a code is for, by its default CalcJob plugin.
LABELLER_PLUGINS = {'alml.ase': 'ase', 'alml.aims': 'aims', 'core.shell': 'shell'}


class ProtocolError(ValueError):
    """A protocol or override that cannot make valid inputs; the message names the protocol or the input."""


# ---------------------------------------------------------------------- protocol inputs (plain values and nodes)
def committee_inputs(protocol: str | None = None, overrides: dict | None = None) -> dict:
    return _protocol('committee', protocol, overrides)


def explore_inputs(protocol: str | None = None, overrides: dict | None = None) -> dict:
    return _protocol('explore', protocol, overrides)


def label_inputs(protocol: str | None = None, overrides: dict | None = None) -> dict:
    """``label.yaml``'s inputs for the labeller ``overrides['labeller']`` (``ase`` when not given): its block kept,
    the others dropped; for ``aims`` the FHI-aims protocol of the same name (``aims.yaml``) fills ``aims``."""
    overrides = overrides or {}
    labeller = _value(overrides.get('labeller')) or 'ase'
    inputs = _protocol('label', protocol, None)
    blocks = {name: inputs.pop(name) for name in ('ase', 'aims', 'shell') if name in inputs}
    if labeller in blocks:
        inputs[labeller] = blocks[labeller]
    if labeller == 'aims':
        aims = _protocol('aims', protocol, None)
        inputs['aims'] = merge_inputs({
            'max_iterations': aims['max_iterations'],
            'clean_workdir': aims['clean_workdir'],
            'kpoints_distance': aims['kpoints_distance'],
            'aims': {'parameters': aims['parameters']},
        }, inputs.get('aims', {}))
    inputs['labeller'] = labeller
    return merge_inputs(inputs, overrides)


def active_learning_inputs(protocol: str | None = None, overrides: dict | None = None) -> dict:
    """The campaign's inputs: committee, explore and label protocols in their namespaces, ``active_learning.yaml``
    over them, ``overrides`` over everything. The protocol's ``initial_perturbation`` applies to
    ``initial_structures``: without them (a labelled ``initial_dataset`` only) it is left out."""
    overrides = overrides or {}
    own = _protocol('active_learning', protocol, None)
    label_overrides = overrides.get('label') if isinstance(overrides.get('label'), dict) else {}
    composed = {
        'train': committee_inputs(protocol),
        'explore': explore_inputs(protocol),
        'label': label_inputs(protocol, {'labeller': label_overrides.get('labeller', 'ase')}),
    }
    inputs = merge_inputs(merge_inputs(composed, own), overrides)
    if 'initial_structures' not in overrides and 'initial_perturbation' not in overrides:
        inputs.pop('initial_perturbation', None)
    return inputs


def _protocol(name: str, protocol: str | None, overrides: dict | None) -> dict:
    if protocol is not None and not isinstance(protocol, str):
        raise ProtocolError(f'protocol: give a protocol name (text), got {protocol!r}')
    if overrides is not None and not isinstance(overrides, dict):
        raise ProtocolError(f'overrides: give a mapping of input names to values, got {type(overrides).__name__}')
    try:
        return get_protocol_inputs(name, protocol, overrides)
    except ValueError as error:
        raise ProtocolError(f'{error}; see get_available_protocols()') from error


def _value(value):
    return getattr(value, 'value', value)


class ProtocolMixin:
    """``get_available_protocols``, ``get_default_protocol`` and ``get_protocol_inputs`` of a work chain whose
    protocols are ``aiida_alml/protocols/<_protocol_name>.yaml`` (as aiida-quantumespresso's ``ProtocolMixin``);
    each work chain adds its own ``get_builder_from_protocol``, whose arguments differ."""

    _protocol_name: str = ''

    @classmethod
    def get_available_protocols(cls) -> dict:
        """``{protocol: {'description': ...}}`` of the work chain's protocol file."""
        from aiida_alml.protocols import get_available_protocols

        return get_available_protocols(cls._protocol_name)

    @classmethod
    def get_default_protocol(cls) -> str:
        from aiida_alml.protocols import get_default_protocol

        return get_default_protocol(cls._protocol_name)

    @classmethod
    def get_protocol_inputs(cls, protocol: str | None = None, overrides: dict | None = None) -> dict:
        """The inputs of ``protocol`` (default: moderate) with ``overrides`` merged in, as plain values."""
        return PROTOCOL_INPUTS[cls._protocol_name](protocol, overrides)


#: The function giving each work chain's protocol inputs, by protocol file name.
PROTOCOL_INPUTS = {'active_learning': active_learning_inputs, 'committee': committee_inputs,
                   'explore': explore_inputs, 'label': label_inputs}


# ---------------------------------------------------------------------- conversion and validation
def process_inputs(namespace, values: dict, where: str = '') -> dict:
    """``values`` as process inputs of the port ``namespace``: nodes kept, plain values converted by the type each
    port takes (:func:`_to_node`), ``None`` dropped; an unknown name is refused with the closest known ones."""
    from plumpy.ports import PortNamespace

    from aiida_alml.atoms.suggest import did_you_mean

    if not isinstance(values, dict):
        raise ProtocolError(f'`{where or "inputs"}`: expected a mapping of input names to values, got {values!r}')
    converted = {}
    for key, value in values.items():
        name = f'{where}.{key}' if where else key
        if value is None:
            continue
        if key == 'metadata':
            converted[key] = merge_inputs({}, value) if isinstance(value, dict) else value
            continue
        if key not in namespace:
            known = [port for port in namespace if port != 'metadata']
            if namespace.dynamic and not known:  # a namespace of free names (models, structures)
                converted[key] = value
                continue
            raise ProtocolError(f'unknown input `{name}`{did_you_mean(key, known)}; known here: '
                                f'{", ".join(sorted(known))}')
        port = namespace[key]
        if isinstance(port, PortNamespace):
            converted[key] = process_inputs(port, value, name)
        else:
            converted[key] = _to_node(port, value, name)
    return converted


def _to_node(port, value: Any, name: str):
    from aiida import orm

    from aiida_alml.data import ConfigurationSet

    valid = port.valid_type
    types = () if valid is None else valid if isinstance(valid, tuple) else (valid,)
    if isinstance(value, orm.Data):
        return value  # the port checks its type
    if any(issubclass(t, orm.AbstractCode) for t in types) and isinstance(value, str):
        return orm.load_code(value)
    if ConfigurationSet in types and not isinstance(value, (dict, str)):
        return configuration_set(value, name)
    if orm.StructureData in types and _is_atoms(value):
        return orm.StructureData(ase=value)
    if orm.Dict in types and isinstance(value, dict):
        return orm.Dict(value)
    if orm.List in types and isinstance(value, (list, tuple)):
        return orm.List(list(value))
    for node_type, python_type in ((orm.Bool, bool), (orm.Int, int), (orm.Float, (int, float)), (orm.Str, str)):
        if node_type in types and isinstance(value, python_type) and not (
            python_type is not bool and isinstance(value, bool)
        ):
            return node_type(value)
    expected = ', '.join(t.__name__ for t in types) or 'any'
    raise ProtocolError(f'`{name}`: cannot use {value!r} here (expected {expected})')


def _is_atoms(value) -> bool:
    from ase import Atoms

    return isinstance(value, Atoms)


def configuration_set(value, name: str = 'structures'):
    """A ConfigurationSet from a ConfigurationSet, one ASE ``Atoms`` or a list of them (labels from their results)."""
    from aiida_alml.data import ConfigurationSet

    if isinstance(value, ConfigurationSet):
        return value
    images = [value] if _is_atoms(value) else list(value) if isinstance(value, (list, tuple)) else None
    if not images or not all(_is_atoms(image) for image in images):
        raise ProtocolError(f'`{name}`: give a ConfigurationSet, an ASE Atoms or a list of them, got {value!r}')
    return ConfigurationSet.from_ase(images)


def builder_from_inputs(process_class, inputs: dict):
    """A builder of ``process_class`` holding ``inputs`` (converted by :func:`process_inputs`) once the process's
    own input validation accepts them; a :class:`ProtocolError` naming the input otherwise."""
    from aiida_alml.campaign import validation_problem

    converted = process_inputs(process_class.spec().inputs, inputs)
    problem = validation_problem(converted, process_class)
    if problem:
        raise ProtocolError(f'{process_class.__name__}: {problem}')
    builder = process_class.get_builder()
    for key, value in converted.items():
        builder[key] = value
    return builder


# ---------------------------------------------------------------------- builders
def committee_builder(process_class, code, training_set, protocol=None, overrides=None, options=None, test_set=None):
    train = {'code': code, 'training_set': configuration_set(training_set, 'training_set')}
    if test_set is not None:
        train['test_set'] = configuration_set(test_set, 'test_set')
    if options:
        train['metadata'] = {'options': dict(options)}
    given = merge_inputs({'train': train}, overrides or {})
    return builder_from_inputs(process_class, committee_inputs(protocol, given))


def explore_builder(process_class, code, structures, models, protocol=None, overrides=None, options=None):
    md = {'code': code, 'models': _models(models)}
    if options:
        md['metadata'] = {'options': dict(options)}
    given = merge_inputs({'structures': _structures(structures), 'md': md}, overrides or {})
    return builder_from_inputs(process_class, explore_inputs(protocol, given))


def label_builder(process_class, code, structures, calculator=None, protocol=None, overrides=None, options=None,
                  labeller=None, species_root=None):
    given = _label_given(code, calculator, options, labeller, species_root, protocol)
    given['structures'] = configuration_set(structures, 'structures')
    given = merge_inputs(given, overrides or {})
    inputs = label_inputs(protocol, given)
    _check_species(inputs, 'aims.aims')
    return builder_from_inputs(process_class, inputs)


def active_learning_builder(process_class, train_code, md_code, label_code, structures=None, *, initial_dataset=None,
                            exploration_structures=None, test_set=None, calculator=None, protocol=None,
                            overrides=None, options=None, labeller=None, species_root=None):
    train, md = {'code': train_code}, {'code': md_code}
    if options:
        train['metadata'] = {'options': dict(options)}
        md['metadata'] = {'options': dict(options)}
    given = {
        'train': {'train': train},
        'explore': {'md': md},
        'label': _label_given(label_code, calculator, options, labeller, species_root, protocol),
    }
    for key, value in (('initial_structures', structures), ('initial_dataset', initial_dataset),
                       ('exploration_structures', exploration_structures), ('test_set', test_set)):
        if value is not None:
            given[key] = configuration_set(value, key)
    given = merge_inputs(given, overrides or {})
    inputs = active_learning_inputs(protocol, given)
    _check_species(inputs.get('label', {}), 'label.aims.aims')
    return builder_from_inputs(process_class, inputs)


def _label_given(code, calculator, options, labeller, species_root, protocol) -> dict:
    """What a labelling code (and calculator, options) give the ``label`` inputs; the labeller from the code's plugin
    unless named."""
    plugin = getattr(code, 'default_calc_job_plugin', None)
    labeller = labeller or LABELLER_PLUGINS.get(plugin)
    if labeller is None:
        raise ProtocolError(f'labeller: cannot tell which labeller the code {getattr(code, "full_label", code)!r} is '
                            f'for (plugin {plugin!r}); give labeller= one of {sorted(set(LABELLER_PLUGINS.values()))}')
    given: dict = {'labeller': labeller}
    if labeller == 'ase':
        given['ase'] = {'code': code}
        if calculator is not None:
            given['ase']['calculator'] = {'name': calculator} if isinstance(calculator, str) else calculator
        if options:
            given['ase']['options'] = dict(options)
    elif calculator is not None:
        raise ProtocolError(f'calculator: only the ASE labeller takes a calculator, this code is for labeller '
                            f'{labeller!r}')
    elif labeller == 'aims':
        aims = {'code': code}
        root = species_root or code.base.extras.get('alml_species_root', None)
        if root:
            species = _protocol('aims', protocol, None)['species_defaults']
            aims['species_dir'] = f'{str(root).rstrip("/")}/{species}'
        if options:
            aims['metadata'] = {'options': dict(options)}
        given['aims'] = {'aims': aims}
    else:
        given['shell'] = {'code': code}
        if options:
            given['shell']['options'] = dict(options)
    return given


def _check_species(label: dict, where: str) -> None:
    if _value(label.get('labeller')) != 'aims':
        return
    aims = label.get('aims', {}).get('aims', {})
    if aims.get('species') is None and aims.get('species_dir') is None:
        raise ProtocolError(
            'species_root: give the species_defaults directory on the computer (or set the code extra '
            f'`alml_species_root`, or give {where}.species as a FolderData in overrides)'
        )


def _structures(structures) -> dict:
    """Starting structures as the ``structures`` namespace: a mapping as given (ASE Atoms converted), a set or a list
    as ``structure_0``, ``structure_1``, ..."""
    from aiida import orm

    from aiida_alml.data import ConfigurationSet

    if isinstance(structures, dict):
        return {key: orm.StructureData(ase=value) if _is_atoms(value) else value for key, value in structures.items()}
    if isinstance(structures, ConfigurationSet):
        images = structures.to_ase()
    elif _is_atoms(structures) or isinstance(structures, orm.StructureData):
        images = [structures]
    else:
        images = list(structures)
    return {f'structure_{index}': orm.StructureData(ase=image) if _is_atoms(image) else image
            for index, image in enumerate(images)}


def _models(models) -> dict:
    """A committee as the ``md.models`` namespace: a mapping as given, a list as ``member_0``, ..., or the ``models``
    output of a finished ``alml.committee`` or ``alml.active_learning``."""
    from aiida import orm

    if isinstance(models, orm.ProcessNode):
        models = models.outputs.models
    if isinstance(models, (list, tuple)):
        return {f'member_{index}': model for index, model in enumerate(models)}
    return {key: models[key] for key in models}
