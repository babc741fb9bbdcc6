"""Provenance queries of active learning: which calculations labelled the data behind a model, and what it fed.

Every function answers with a handful of database queries, independent of how many nodes the campaign made:

* :func:`labelling_calculations`: the reference calculations (``alml.ase``, ``alml.aims``, aiida-shell ``ShellJob``)
  behind the labels of a :class:`~aiida_alml.data.ConfigurationSet`, each with its settings, iteration and the number
  of configurations of the set it labelled.
* :func:`model_lineage`: model → training calculation → training set → labelling calculations, as a plain dict.
* :func:`labels_of_iteration`: the labelled set of one iteration of an ``alml.active_learning`` run.
* :func:`models_fed_by`: the models whose training set descends from a set (or from a calculation).

Why not QueryBuilder's ``with_ancestors``/``with_descendants``: AiiDA builds those as a recursive CTE with
``UNION ALL`` and a depth column, so it enumerates every *path*, not every node. An active-learning graph has many
paths: each iteration's selection reads the training set *and* its labels are merged back into the next one, so the
number of paths from an early label to the final dataset grows as (labelling jobs per iteration + 2) ** iterations.
``benchmarks/provenance.py`` measures that blow-up. The recursive walk here (:func:`_reach`) follows exactly the
same links (``create`` and ``input_calc``, the data provenance) but with ``UNION``, which visits each node once; the
details of the few nodes found are then read with ordinary QueryBuilder queries.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from aiida import orm
from aiida.common.links import LinkType

from aiida_alml.workflows.links import ACTIVE_LEARNING, LABEL_INITIAL, iteration_label, parse_iteration_label

__all__ = (
    'LABELLING_PROCESS_TYPES',
    'labelling_calculations',
    'labels_of_iteration',
    'model_lineage',
    'models_fed_by',
)

#: process_type of a reference calculation -> the short name of its labeller.
LABELLING_PROCESS_TYPES = {
    'aiida.calculations:alml.ase': 'ase',
    'aiida.calculations:alml.aims': 'aims',
    'aiida.calculations:core.shell': 'shell',
}
#: Inputs of a labelling calculation that fix the reference method (what makes two labels comparable).
SETTING_INPUTS = ('calculator', 'properties', 'parameters', 'species_dir', 'kpoints', 'arguments')
LABEL_WORKFLOW = 'aiida.workflows:alml.label'
#: process_type of the base work chains. Each runs one CalcJob per attempt (call link ``iteration_<nn>``) and is itself
#: called by its parent under the job's name there (``member_<k>``, ``<structure>_c<i>``, ``aims_<i>``, ``ase``, ...).
BASE_WORKFLOWS = (
    'aiida.workflows:alml.mace.train.base', 'aiida.workflows:alml.md.base', 'aiida.workflows:alml.ase.base',
    'aiida.workflows:alml.aims.base', 'aiida.workflows:alml.shell.base',
)
#: ``iteration`` of :func:`labels_of_iteration` for the initial labels (call link ``LABEL_INITIAL``); the call link
#: labels themselves are written and parsed in :mod:`aiida_alml.workflows.links`.
INITIAL = 'initial'
INITIAL_ITERATION = -1
_PROVENANCE_LINKS = (LinkType.CREATE.value, LinkType.INPUT_CALC.value)


# ---------------------------------------------------------------------- the graph walk
def _storage_session():
    from aiida.manage import get_manager

    storage = get_manager().get_profile_storage()
    get_session = getattr(storage, 'get_session', None)
    if get_session is None:
        raise NotImplementedError(
            f'provenance queries need an SQL storage backend (core.psql_dos, core.sqlite_dos, ...); the profile uses '
            f'{type(storage).__name__}'
        )
    return get_session()


def _reach(direction: str) -> str:
    """SQL of the recursive table ``reach(id)``: the nodes reachable from the ids ``:start`` (included).

    ``direction`` is ``'ancestors'`` or ``'descendants'``. Only the ``:links`` link types are followed (``create`` and
    ``input_calc``, the same as QueryBuilder's ``with_ancestors``), but every node is visited once (``UNION``, no path
    or depth column).
    """
    step, seen = {'ancestors': ('l.input_id', 'l.output_id'), 'descendants': ('l.output_id', 'l.input_id')}[direction]
    return f"""
        WITH RECURSIVE reach(id) AS (
            SELECT id FROM db_dbnode WHERE id IN :start
            UNION
            SELECT {step} FROM db_dblink AS l JOIN reach ON {seen} = reach.id WHERE l.type IN :links
        )"""


def _ancestors(start_ids: list[int], process_types) -> list[tuple]:
    """(id, uuid, process_type) of the processes of ``process_types`` among the ancestors of ``start_ids``."""
    from sqlalchemy import bindparam, text

    params = {'start': list(start_ids), 'links': list(_PROVENANCE_LINKS), 'types': list(process_types)}
    sql = text(
        _reach('ancestors')
        + """
        SELECT n.id, n.uuid, n.process_type FROM db_dbnode AS n JOIN reach ON n.id = reach.id
        WHERE n.process_type IN :types
        ORDER BY n.id
        """
    ).bindparams(*(bindparam(name, expanding=True) for name in ('start', 'links', 'types')))
    return [(row[0], str(row[1]), row[2]) for row in _storage_session().execute(sql, params)]


def _callers(ids: list[int]) -> dict[int, tuple[int, str | None, str]]:
    """called id -> (caller id, caller process_type, call link label), for the given process ids (one query)."""
    if not ids:
        return {}
    query = orm.QueryBuilder().append(orm.ProcessNode, filters={'id': {'in': list(ids)}}, tag='called', project='id')
    query.append(orm.WorkflowNode, with_outgoing='called', project=['id', 'process_type'], edge_project='label',
                 edge_filters={'type': {'in': [LinkType.CALL_CALC.value, LinkType.CALL_WORK.value]}})
    return {called: (caller, process_type, label) for called, caller, process_type, label in query.all()}


def _enclosing_iteration(ids: list[int]) -> dict[int, dict]:
    """For each process: the alml.label workflow above it and, when run by alml.active_learning, the iteration.

    The labelling calculation sits two call levels below alml.label, under its base work chain (alml.ase.base,
    alml.aims.base, alml.shell.base; one level in graphs made before alml.ase.base and alml.shell.base); alml.label is
    called ``label_initial`` or ``label_<i>`` by the active-learning loop.
    """
    found, pending = {}, {pk: pk for pk in ids}  # process id -> the id whose caller is looked up next
    for _ in range(3):
        callers = _callers(list(set(pending.values())))
        next_pending = {}
        for pk, current in pending.items():
            if current not in callers:
                continue
            caller, process_type, label = callers[current]
            if process_type == LABEL_WORKFLOW:
                found[pk] = {'label_workflow': caller}
                next_pending[pk] = caller
            elif pk in found:  # `label` is the call link of alml.label inside its parent workflow
                found[pk].update(_iteration_of_link(label, process_type, caller))
            else:
                next_pending[pk] = caller
        pending = next_pending
        if not pending:
            break
    return found


def _iteration_of_link(label: str, process_type: str | None, caller: int) -> dict:
    info = {'call_link_label': label, 'workflow': caller if process_type == ACTIVE_LEARNING else None}
    if process_type != ACTIVE_LEARNING:
        return info
    if label == LABEL_INITIAL:
        info['iteration'] = INITIAL_ITERATION
    elif (parsed := parse_iteration_label(label)) is not None and parsed[0] == 'label':
        info['iteration'] = parsed[1]
    return info


def _value(node_type: str, attributes: dict, uuid: str):
    """A JSON-friendly value of a settings input: the dict of a Dict, the list of a List, the value of a base type."""
    if node_type == 'data.core.dict.Dict.':
        return attributes
    if node_type == 'data.core.list.List.':
        return attributes.get('list')
    if node_type.startswith('data.core.') and 'value' in attributes:
        return attributes['value']
    if node_type == 'data.core.array.kpoints.KpointsData.' and 'mesh' in attributes:
        return {'mesh': attributes['mesh'], 'offset': attributes.get('offset')}
    return {'uuid': uuid, 'node_type': node_type}


# ---------------------------------------------------------------------- public API
def _require(node, cls, name: str, what: str):
    if isinstance(node, (int, str)):
        node = orm.load_node(node)
    if not isinstance(node, cls):
        raise TypeError(f'{name}: node <{getattr(node, "pk", node)}> is a {type(node).__name__}, not {what}')
    if not node.is_stored:
        raise ValueError(f'{name}: the {type(node).__name__} is not stored, so it has no provenance yet')
    return node


def _attribute(configuration_set) -> tuple[list[dict], int]:
    """(labelling calculations of the set, number of its configurations attributed to none of them)."""
    candidates = {
        uuid: (pk, process_type)
        for pk, uuid, process_type in _ancestors([configuration_set.pk], LABELLING_PROCESS_TYPES)
    }
    counts, iterations, unattributed = Counter(), defaultdict(set), 0
    for meta in configuration_set.configuration_metadata():  # the metadata only, not the arrays
        # alml.ase writes `labelled_by`, alml.aims/shell `source_calc_uuid`, and alml.label copies one to the other.
        # When an already-labelled set is labelled again the older key can survive the merge, so both name a
        # calculation; the later one (higher pk) is the one whose labels the configuration carries: it ran on the
        # output of the earlier one.
        uuids = {meta.get('labelled_by'), meta.get('source_calc_uuid')}
        named = [candidates[uuid] for uuid in uuids if uuid in candidates]
        if not named:
            unattributed += 1
            continue
        pk = max(named)[0]
        counts[pk] += 1
        if 'iteration' in meta:
            iterations[pk].add(meta['iteration'])
    if not counts:
        return [], unattributed

    pks = sorted(counts)
    settings, codes = defaultdict(dict), {}
    query = orm.QueryBuilder().append(orm.CalcJobNode, filters={'id': {'in': pks}}, tag='calc', project='id')
    query.append(orm.Data, with_outgoing='calc', edge_filters={'label': {'in': [*SETTING_INPUTS, 'code']}},
                 edge_project='label', project=['id', 'uuid', 'node_type', 'label', 'attributes'])
    for calc, pk, uuid, node_type, node_label, attributes, link in query.all():
        if link == 'code':
            codes[calc] = {'pk': pk, 'uuid': uuid, 'label': node_label}
        else:
            settings[calc][link] = _value(node_type, attributes or {}, uuid)

    enclosing = _enclosing_iteration(pks)
    by_pk = {pk: (uuid, process_type) for uuid, (pk, process_type) in candidates.items()}
    results = []
    for pk in pks:
        uuid, process_type = by_pk[pk]
        context = enclosing.get(pk, {})
        meta_iterations = sorted(iterations[pk], key=str)
        if 'iteration' in context:
            iteration, source = context['iteration'], 'call_link'
        elif len(meta_iterations) == 1:
            iteration, source = meta_iterations[0], 'metadata'
        else:
            iteration, source = None, None
        results.append({
            'pk': pk,
            'uuid': uuid,
            'process_type': process_type,
            'labeller': LABELLING_PROCESS_TYPES[process_type],
            'settings': settings.get(pk, {}),
            'code': codes.get(pk),
            'iteration': iteration,
            'iteration_source': source,
            'metadata_iterations': meta_iterations,
            'call_link_label': context.get('call_link_label'),
            'label_workflow': context.get('label_workflow'),
            'workflow': context.get('workflow'),
            'num_configurations': counts[pk],
        })
    results.sort(key=lambda r: (r['iteration'] is None, r['iteration'] if isinstance(r['iteration'], int) else 0,
                                r['pk']))
    return results, unattributed


def labelling_calculations(configuration_set) -> list[dict]:
    """The reference calculations whose labels the configurations of ``configuration_set`` carry.

    A calculation qualifies when it is a provenance ancestor of the set (its labelled output is, or was merged into,
    the set) *and* the metadata of at least one configuration of the set names it (``labelled_by`` or
    ``source_calc_uuid``): calculations of earlier iterations that only steered the selection are not counted.

    Each entry: ``pk``, ``uuid``, ``process_type``, ``labeller`` (ase, aims or shell), ``settings`` (input link label
    -> value: ``calculator`` and ``properties`` for alml.ase, the control.in ``parameters`` and ``species_dir`` for
    alml.aims, ``arguments`` for a ShellJob), ``code``, ``iteration`` (``-1`` for the initial labels; taken from the
    call link of the enclosing alml.label in alml.active_learning, else from the configurations' metadata;
    ``iteration_source`` says which), ``metadata_iterations``, ``call_link_label``, ``label_workflow`` and
    ``workflow`` (pks) and ``num_configurations`` (how many configurations of this set it labelled). Sorted by
    iteration, then pk.
    """
    from aiida_alml.data import ConfigurationSet

    node = _require(configuration_set, ConfigurationSet, 'configuration_set', 'a ConfigurationSet')
    return _attribute(node)[0]


def model_lineage(model) -> dict:
    """The lineage of ``model``: its training calculation, training set and the calculations that labelled the set.

    A plain, JSON-serialisable dict::

        {'model': {pk, uuid, filename, sha256, architecture, elements, r_max, dtype, seed},
         'training': {pk, uuid, process_type, parameters, seed, e0s, member, committee, iteration, workflow,
                      parent_model, validation_set, test_set} or None (a model stored by hand),
         'training_set': {pk, uuid, num_configurations, elements, labels, content_hash} or None,
         'labelling_calculations': [...as labelling_calculations()...],
         'unattributed_configurations': configurations of the training set that no labelling calculation
                                        recorded in the graph labelled (e.g. an ``initial_dataset`` given by hand)}
    """
    from aiida_alml.data import MlipModel

    node = _require(model, MlipModel, 'model', 'an MlipModel (alml.model)')
    attributes = node.base.attributes.all
    lineage = {
        'model': {
            'pk': node.pk, 'uuid': node.uuid, 'filename': node.filename,
            **{key: attributes.get(key) for key in ('sha256', 'architecture', 'elements', 'r_max', 'dtype', 'seed')},
        },
        'training': None,
        'training_set': None,
        'labelling_calculations': [],
        'unattributed_configurations': None,
    }
    query = orm.QueryBuilder().append(orm.Node, filters={'id': node.pk}, tag='model')
    query.append(orm.CalculationNode, with_outgoing='model', tag='calc', project=['id', 'uuid', 'process_type'])
    query.append(orm.Data, with_outgoing='calc', edge_project='label',
                 project=['id', 'uuid', 'node_type', 'attributes'])
    rows = query.all()
    if not rows:
        return lineage
    calc, calc_uuid, process_type = rows[0][:3]
    inputs = {label: (pk, uuid, node_type, attrs or {}) for _, _, _, pk, uuid, node_type, attrs, label in rows}
    training = {'pk': calc, 'uuid': calc_uuid, 'process_type': process_type}
    for name in ('parameters', 'seed', 'e0s'):
        if name in inputs:
            pk, uuid, node_type, attrs = inputs[name]
            training[name] = _value(node_type, attrs, uuid)
    for name in ('parent_model', 'validation_set', 'test_set'):
        if name in inputs:
            training[name] = {'pk': inputs[name][0], 'uuid': inputs[name][1]}
    # Call chain: MaceTrainCalculation <-iteration_<nn>- alml.mace.train.base <-member_k- alml.committee <-train_i-
    # alml.active_learning (graphs made before alml.mace.train.base: MaceTrainCalculation <-member_k- alml.committee).
    above = _callers([calc]).get(calc)
    if above and above[1] in BASE_WORKFLOWS:
        above = _callers([above[0]]).get(above[0])
    if above:
        committee, _, member = above
        training.update({'member': member, 'committee': committee})
        above = _callers([committee]).get(committee)
        if above and above[1] == ACTIVE_LEARNING:
            training['workflow'] = above[0]
            parsed = parse_iteration_label(above[2])
            training['iteration'] = parsed[1] if parsed is not None and parsed[0] == 'train' else None
    lineage['training'] = training

    if 'training_set' in inputs:
        from aiida_alml.data import ConfigurationSet

        training_set = orm.load_node(inputs['training_set'][0])
        if isinstance(training_set, ConfigurationSet):
            lineage['training_set'] = {
                'pk': training_set.pk, 'uuid': training_set.uuid,
                **{key: training_set.base.attributes.get(key, None)
                   for key in ('num_configurations', 'elements', 'labels', 'content_hash')},
            }
            calcs, unattributed = _attribute(training_set)
            lineage['labelling_calculations'] = calcs
            lineage['unattributed_configurations'] = unattributed
    return lineage


def _parse_iteration(iteration) -> str:
    """The call link label of the labelling of ``iteration`` inside alml.active_learning."""
    if iteration in (INITIAL, INITIAL_ITERATION):
        return LABEL_INITIAL
    if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
        raise ValueError(f"iteration: must be a non-negative integer, -1 or 'initial', got {iteration!r}")
    return iteration_label('label', iteration)


def labels_of_iteration(workflow_node, iteration):
    """The labelled ConfigurationSet of ``iteration`` of an ``alml.active_learning`` run, or None.

    ``iteration`` is the loop iteration (0, 1, ...), or ``-1``/``'initial'`` for the labels of the initial
    structures. None when that iteration labelled nothing (converged, not reached yet, or its labelling failed).
    """
    from aiida_alml.data import ConfigurationSet

    node = _require(workflow_node, orm.WorkflowNode, 'workflow_node', 'an alml.active_learning workflow')
    if node.process_type != ACTIVE_LEARNING:
        raise TypeError(f'workflow_node: node <{node.pk}> is a {node.process_type or type(node).__name__} run, not '
                        f'{ACTIVE_LEARNING}')
    link = _parse_iteration(iteration)
    query = orm.QueryBuilder().append(orm.WorkflowNode, filters={'id': node.pk}, tag='loop')
    query.append(orm.WorkflowNode, with_incoming='loop', edge_filters={'label': link, 'type': LinkType.CALL_WORK.value},
                 tag='label')
    query.append(ConfigurationSet, with_incoming='label', project='*',
                 edge_filters={'label': 'labelled', 'type': LinkType.RETURN.value})
    found = query.all(flat=True)
    return found[0] if found else None


def models_fed_by(node) -> list:
    """The MlipModels trained on data that descends from ``node`` (a ConfigurationSet, a calculation, ...).

    A model qualifies when the ``training_set`` of the calculation that made it is ``node`` or one of its
    provenance descendants, or when its ``parent_model`` (fine-tuning) qualifies. A set used only as a validation or
    test set does not feed a model. Sorted by pk.
    """
    from sqlalchemy import bindparam, text

    from aiida_alml.data import MlipModel

    node = _require(node, orm.Node, 'node', 'a node')
    # One statement: the descendants of `node` (itself included) that enter a calculation as its training set or
    # parent model, and the models those calculations created.
    sql = text(
        _reach('descendants')
        + """
        SELECT DISTINCT model.id FROM reach
        JOIN db_dblink AS feed ON feed.input_id = reach.id AND feed.type = 'input_calc'
                               AND feed.label IN ('training_set', 'parent_model')
        JOIN db_dblink AS made ON made.input_id = feed.output_id AND made.type = 'create'
        JOIN db_dbnode AS model ON model.id = made.output_id AND model.node_type = :model_type
        ORDER BY model.id
        """
    ).bindparams(bindparam('start', expanding=True), bindparam('links', expanding=True))
    params = {'start': [node.pk], 'links': list(_PROVENANCE_LINKS), 'model_type': MlipModel.class_node_type}
    pks = [row[0] for row in _storage_session().execute(sql, params)]
    if not pks:
        return []
    query = orm.QueryBuilder().append(MlipModel, filters={'id': {'in': pks}}, project='*')
    query.order_by({MlipModel: {'id': 'asc'}})
    return query.all(flat=True)
