"""The progress of a campaign, one row per iteration: read from its stored records, rendered as a table.

Rows come from the ``record_<i>`` calcfunctions (``iterations`` once the campaign has ended); only an iteration still
under way is pieced together from its steps. ``aiida-alml status``, the plots and ``examples/run_campaign.py`` use
these; the follow loop of the command line is :mod:`aiida_alml.cli.progress`.
"""

from __future__ import annotations

from typing import Any

from aiida_alml.workflows.links import iteration_label, parse_iteration_label

__all__ = ('called_by_label', 'current_stage', 'format_table', 'iteration_table', 'recorded_rows')


def _call_links(node) -> list:
    """The call links (``link_label``, ``node``) from ``node`` to the processes it called, in one query."""
    from aiida.common.links import LinkType

    return node.base.links.get_outgoing(link_type=(LinkType.CALL_CALC, LinkType.CALL_WORK)).all()


def called_by_label(node) -> dict:
    """The processes ``node`` called, by call link label (``train_0``, ``select_0``, ...)."""
    return {entry.link_label: entry.node for entry in _call_links(node)}


def recorded_rows(node, calls: dict | None = None) -> dict[int, dict]:
    """The rows the run has recorded so far, by iteration: its ``iterations`` outputs, and the results of its
    ``record_<i>`` calcfunctions (found by call link label) not attached yet. ``calls``: :func:`called_by_label` of
    ``node``, when the caller has it already."""
    rows = {}
    if 'iterations' in node.outputs:
        for key, row in node.outputs.iterations.items():
            rows[int(key.rsplit('_', 1)[1])] = row.get_dict()
    for label, child in (called_by_label(node) if calls is None else calls).items():
        parsed = parse_iteration_label(label)
        if parsed is None or parsed[0] != 'record' or parsed[1] in rows or not child.is_finished_ok:
            continue
        rows[parsed[1]] = child.outputs.result.get_dict()
    return rows


def iteration_table(node) -> list[dict]:
    """Per-iteration figures of an ``alml.active_learning`` run, finished or still running.

    The stored rows: ``learning_curve`` once the run has ended with one, else the iterations recorded so far
    (:func:`recorded_rows`). Only the iteration still under way (or one that failed before it was recorded) is
    pieced together from the state of its steps.
    """
    from aiida_alml.workflows.active_learning import elapsed_seconds

    if 'learning_curve' in node.outputs:
        return node.outputs.learning_curve.get_dict()['iterations']
    calls = called_by_label(node)
    recorded = recorded_rows(node, calls)
    rows = []
    iteration = 0

    def step(name: str):  # the process that ran step `name` of `iteration`, or None
        return calls.get(iteration_label(name, iteration))

    while iteration in recorded or (train := step('train')) is not None:
        if iteration in recorded:
            rows.append(recorded[iteration])
            iteration += 1
            continue
        row: dict[str, Any] = {'iteration': iteration, 'wall_time_s': {}}
        if train.is_terminated:
            row['wall_time_s']['train'] = elapsed_seconds(train)
        if (explore := step('explore')) is not None and explore.is_terminated:
            row['wall_time_s']['explore'] = elapsed_seconds(explore)
        if (select := step('select')) is not None and select.is_finished_ok:
            summary = select.outputs.summary.get_dict()
            row.update({key: summary.get(key) for key in ('frames', 'frames_counted', 'accurate_fraction',
                                                            'candidate_fraction', 'failed_fraction', 'max_uncertainty')})
        if train.is_finished_ok and 'summary' in train.outputs:
            row['train_metrics'] = train.outputs.summary.get_dict()
        if (score := step('score')) is not None and score.is_finished_ok:
            result = score.outputs.result.get_dict()
            row['test_force_rmse'] = result['force_rmse']
            row['test_energy_rmse_per_atom'] = result.get('energy_rmse_per_atom')
        if (label := step('label')) is not None and label.is_terminated:
            row['wall_time_s']['label'] = elapsed_seconds(label)
            if 'labelled' in label.outputs:
                row['labels_new'] = len(label.outputs.labelled)
        if (evaluate := step('evaluate')) is not None and evaluate.is_finished_ok:
            row['oos_force_rmse'] = evaluate.outputs.metrics.get_dict()['force_rmse']
        if (calibrate := step('calibrate')) is not None and calibrate.is_finished_ok:
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


def worst_validation_energy_rmse(train_metrics: dict | None) -> float | None:
    """The largest validation energy RMSE (eV/atom) among a committee's members (``summary`` of alml.committee)."""
    values = [member.get('metrics', {}).get('valid', {}).get('rmse_e_per_atom')
              for member in (train_metrics or {}).values() if isinstance(member, dict)]
    values = [value for value in values if isinstance(value, (int, float))]
    return max(values) if values else None


def _milli(value):
    return value * 1000 if isinstance(value, (int, float)) else None


def format_table(rows: list[dict]) -> str:
    """A fixed-width table of :func:`iteration_table` rows."""
    header = (f'{"iter":>4} {"frames":>6} {"accurate":>8} {"cand.":>6} {"failed":>6} {"new":>4} '
              f'{"oos F-RMSE":>10} {"test F-RMSE":>11} {"valid E-RMSE":>12} {"test E-RMSE":>11} {"calib":>6} '
              f'{"train s":>8} {"explore s":>9} {"label s":>8}')
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
            f'{number(_milli(worst_validation_energy_rmse(row.get("train_metrics"))), "12.1f"):>12} '
            f'{number(_milli(row.get("test_energy_rmse_per_atom")), "11.1f"):>11} '
            f'{number(row.get("fitted_calibration_factor"), "6.2f"):>6} '
            f'{number(times.get("train"), "8.1f"):>8} {number(times.get("explore"), "9.1f"):>9} '
            f'{number(times.get("label"), "8.1f"):>8}'
        )
    lines.append('frames: counted frames (starting structures and copies of training data left out); failed includes '
                 'frames MD runs never reached. Force RMSE in eV/Å per Cartesian component: oos = on the frames this '
                 'iteration labelled, before training on them (biased by what the loop chose); test = on the held-out '
                 'test set. Energy RMSE in meV/atom: valid = the worst member on its validation split at the end of '
                 'its training, test = the committee mean on the held-out test set.')
    return '\n'.join(lines)
