"""A campaign file (YAML) → the inputs of ``alml.active_learning``, and the progress table of a running campaign.

The YAML keys are the workflow's own input names (``aiida-alml launch --help`` and docs/campaign.md list them);
values are converted by the type each input expects: codes by label (``alml-label@localhost``), sets of
configurations from any ASE-readable file (relative to the YAML file) or a node PK/UUID, dicts and lists as Dict and
List nodes. Unknown keys are refused with the closest known names.
"""

from __future__ import annotations

import pathlib
from typing import Any

from aiida_alml.job_options import JobOptionError, campaign_metadata, campaign_options
from aiida_alml.suggest import did_you_mean

__all__ = ('CampaignError', 'load_campaign', 'inputs_from_config', 'iteration_table', 'current_stage')


class CampaignError(ValueError):
    """The campaign file is malformed; the message names the key."""


def load_campaign(path: str | pathlib.Path) -> dict:
    """Read the YAML file and convert it to process inputs (nothing is stored or run)."""
    import yaml

    path = pathlib.Path(path)
    if not path.is_file():
        raise CampaignError(f'campaign file {path} does not exist')
    try:
        config = yaml.safe_load(path.read_text(encoding='utf-8'))
    except yaml.YAMLError as exception:
        raise CampaignError(f'{path}: not valid YAML: {exception}') from exception
    if not isinstance(config, dict):
        raise CampaignError(f'{path}: the top level must be a mapping of input names to values')
    return inputs_from_config(config, base=path.parent)


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
            return _configuration_set(value, base)
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


def _configuration_set(value, base: pathlib.Path):
    """A set from a node PK/UUID, or from any ASE-readable file (labels from REF_* keys or the file's results)."""
    from aiida import orm

    from aiida_alml.data import ConfigurationSet

    if isinstance(value, int) or (isinstance(value, str) and len(value) == 36 and value.count('-') == 4):
        node = orm.load_node(value)
        if not isinstance(node, ConfigurationSet):
            raise CampaignError(f'node {value} is a {type(node).__name__}, not a ConfigurationSet')
        return node
    path = base / str(value)
    if not path.is_file():
        raise CampaignError(f'structure file {path} does not exist')
    import ase.io

    return ConfigurationSet.from_ase(ase.io.read(path, index=':'))


# ---------------------------------------------------------------------- progress
def _call_links(node) -> list:
    """The call links (``link_label``, ``node``) from ``node`` to the processes it called, in one query."""
    from aiida.common.links import LinkType

    return node.base.links.get_outgoing(link_type=(LinkType.CALL_CALC, LinkType.CALL_WORK)).all()


def called_by_label(node) -> dict:
    """The processes ``node`` called, by call link label (``train_0``, ``select_0``, ...)."""
    return {entry.link_label: entry.node for entry in _call_links(node)}


def iteration_table(node) -> list[dict]:
    """Per-iteration figures of an ``alml.active_learning`` run, finished or still running."""
    from aiida_alml.workflows.active_learning import elapsed_seconds

    if 'learning_curve' in node.outputs:
        return node.outputs.learning_curve.get_dict()['iterations']
    calls = called_by_label(node)
    rows = []
    iteration = 0
    while (train := calls.get(f'train_{iteration}')) is not None:
        row: dict[str, Any] = {'iteration': iteration, 'wall_time_s': {}}
        if train.is_terminated:
            row['wall_time_s']['train'] = elapsed_seconds(train)
        if (explore := calls.get(f'explore_{iteration}')) is not None and explore.is_terminated:
            row['wall_time_s']['explore'] = elapsed_seconds(explore)
        if (select := calls.get(f'select_{iteration}')) is not None and select.is_finished_ok:
            summary = select.outputs.summary.get_dict()
            row.update({key: summary.get(key) for key in ('frames', 'frames_counted', 'accurate_fraction',
                                                            'candidate_fraction', 'failed_fraction', 'max_uncertainty')})
        if (score := calls.get(f'score_{iteration}')) is not None and score.is_finished_ok:
            row['test_force_rmse'] = score.outputs.result.get_dict()['force_rmse']
        if (label := calls.get(f'label_{iteration}')) is not None and label.is_terminated:
            row['wall_time_s']['label'] = elapsed_seconds(label)
            if 'labelled' in label.outputs:
                row['labels_new'] = len(label.outputs.labelled)
        if (evaluate := calls.get(f'evaluate_{iteration}')) is not None and evaluate.is_finished_ok:
            row['oos_force_rmse'] = evaluate.outputs.metrics.get_dict()['force_rmse']
        if (calibrate := calls.get(f'calibrate_{iteration}')) is not None and calibrate.is_finished_ok:
            row['fitted_calibration_factor'] = calibrate.outputs.result.get_dict()['factor']
        rows.append(row)
        iteration += 1
    return rows


def current_stage(node) -> str:
    """The link label of the newest child process that has not finished (``done`` when none)."""
    if node.is_terminated:
        return 'done'
    running = [entry for entry in _call_links(node) if not entry.node.is_terminated]
    if not running:
        return 'between stages'
    return max(running, key=lambda entry: entry.node.ctime).link_label


def format_table(rows: list[dict]) -> str:
    """A fixed-width table of :func:`iteration_table` rows."""
    header = (f'{"iter":>4} {"frames":>6} {"accurate":>8} {"cand.":>6} {"failed":>6} {"new":>4} '
              f'{"oos F-RMSE":>10} {"test F-RMSE":>11} {"calib":>6} {"train s":>8} {"explore s":>9} {"label s":>8}')
    lines = [header]

    def number(value, fmt):
        return format(value, fmt) if isinstance(value, (int, float)) else '-'

    for row in rows:
        times = row.get('wall_time_s', {})
        lines.append(
            f'{row["iteration"]:>4} {number(row.get("frames_counted", row.get("frames")), "6d"):>6} '
            f'{number(row.get("accurate_fraction"), "8.1%"):>8} {number(row.get("candidate_fraction"), "6.1%"):>6} '
            f'{number(row.get("failed_fraction"), "6.1%"):>6} {number(row.get("labels_new"), "4d"):>4} '
            f'{number(row.get("oos_force_rmse"), "10.3f"):>10} {number(row.get("test_force_rmse"), "11.3f"):>11} '
            f'{number(row.get("fitted_calibration_factor"), "6.2f"):>6} '
            f'{number(times.get("train"), "8.1f"):>8} {number(times.get("explore"), "9.1f"):>9} '
            f'{number(times.get("label"), "8.1f"):>8}'
        )
    lines.append('frames: counted frames (starting structures and copies of training data left out); failed includes '
                 'frames MD runs never reached. Force RMSE in eV/Å per Cartesian component: oos = on the frames this '
                 'iteration labelled, before training on them (biased by what the loop chose); test = on the held-out '
                 'test set.')
    return '\n'.join(lines)
