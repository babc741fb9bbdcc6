"""Figures of an ``alml.active_learning`` run: learning curve, energy errors, σ against the true error, uncertainty
histograms."""

from __future__ import annotations

import pathlib

import numpy as np

__all__ = ('plot_campaign',)


def plot_campaign(node, path: str | pathlib.Path) -> pathlib.Path:
    """Write a four-panel PNG for a (finished or running) campaign and return its path."""
    # A Figure of its own (no pyplot): drawing here never switches the backend of the caller's session (Jupyter).
    from matplotlib.figure import Figure

    from aiida_alml.progress import called_by_label, iteration_table
    from aiida_alml.workflows.active_learning_inputs import SELECTION_DEFAULTS
    from aiida_alml.workflows.links import iteration_label

    rows = iteration_table(node)
    calls = called_by_label(node)
    settings = {**SELECTION_DEFAULTS, **node.inputs.selection.get_dict()}
    trust_lo, trust_hi = settings['trust_lo'], settings['trust_hi']
    figure = Figure(figsize=(20, 4.5))
    curve, energy_curve, calibration, histogram = figure.subplots(1, 4)

    iterations = [row['iteration'] for row in rows]
    accurate = [row.get('accurate_fraction', np.nan) for row in rows]
    curve.plot(iterations, accurate, 'o-', color='tab:green', label='accurate fraction')
    curve.set_xlabel('iteration')
    curve.set_ylabel('accurate fraction of explored frames')
    curve.set_ylim(-0.02, 1.02)
    twin = curve.twinx()
    rmse = [row.get('oos_force_rmse', np.nan) for row in rows]
    twin.plot(iterations, rmse, 's--', color='tab:red', label='force RMSE on the loop\'s new labels')
    test = [row.get('test_force_rmse', np.nan) for row in rows]
    if np.isfinite(test).any():
        twin.plot(iterations, test, 'D-', color='tab:blue', label='force RMSE on the held-out test set')
    twin.set_ylabel('force RMSE per component (eV/Å)')
    lines = curve.get_lines() + twin.get_lines()
    curve.legend(lines, [line.get_label() for line in lines], loc='center right')
    curve.set_title('learning curve')

    from aiida_alml.progress import worst_validation_energy_rmse

    for values, style, label in (
        ([row.get('test_energy_rmse_per_atom') for row in rows], 'D-', 'committee on the held-out test set'),
        ([worst_validation_energy_rmse(row.get('train_metrics')) for row in rows], 'o--',
         'worst member on its validation split'),
    ):
        values = [1000 * value if value is not None else np.nan for value in values]
        if np.isfinite(values).any():
            energy_curve.plot(iterations, values, style, label=label)
    energy_curve.set_xlabel('iteration')
    energy_curve.set_ylabel('energy RMSE (meV/atom)')
    energy_curve.set_ylim(bottom=0)
    energy_curve.set_title('energies')
    if energy_curve.get_legend_handles_labels()[0]:
        energy_curve.legend(fontsize=8)

    for row in rows:
        evaluate = calls.get(iteration_label('evaluate', row['iteration']))
        if evaluate is None or not evaluate.is_finished_ok:
            continue
        pairs = evaluate.outputs.error_sigma_pairs
        calibration.scatter(pairs.get_array('frame_max_sigma'), pairs.get_array('frame_max_error'), s=14,
                            label=f'iteration {row["iteration"]}')
    limits = calibration.get_xlim()
    top = max(limits[1], calibration.get_ylim()[1])
    calibration.plot([0, top], [0, top], 'k:', lw=1, label='error = σ')
    calibration.set_xlabel('committee max force σ (eV/Å)')
    calibration.set_ylabel('true max force error (eV/Å)')
    calibration.set_title('σ against the true error (new labels)')
    if calibration.get_legend_handles_labels()[0]:
        calibration.legend(fontsize=8)

    for row in rows:
        key = f'iteration_{row["iteration"]}'
        if 'selection_records' in node.outputs and key in node.outputs.selection_records:
            values = node.outputs.selection_records[key].get_array('uncertainty')
        elif (select := calls.get(iteration_label('select', row['iteration']))) is not None and select.is_finished_ok:
            values = select.outputs.record.get_array('uncertainty')
        else:
            continue
        values = values[np.isfinite(values)]
        if len(values):
            histogram.hist(values, bins=30, histtype='step', label=f'iteration {row["iteration"]}')
    for value, name in ((trust_lo, 'trust_lo'), (trust_hi, 'trust_hi')):
        histogram.axvline(value, color='k', ls='--', lw=1)
        histogram.text(value, histogram.get_ylim()[1] * 0.95, f' {name}', fontsize=8, va='top')
    histogram.set_xlabel('calibrated frame uncertainty (eV/Å)')
    histogram.set_ylabel('explored frames')
    histogram.set_title('uncertainty of explored frames')
    if histogram.get_legend_handles_labels()[0]:
        histogram.legend(fontsize=8)

    figure.suptitle(f'{node.process_label}<{node.pk}>')
    figure.tight_layout()
    path = pathlib.Path(path)
    figure.savefig(path, dpi=110)
    return path
