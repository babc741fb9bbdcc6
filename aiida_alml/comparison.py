"""Campaigns side by side: held-out error against the reference labels each needed (``aiida-alml compare``)."""

from __future__ import annotations

import math
import pathlib

__all__ = ('learning_points', 'labels_to_reach', 'same_test_set', 'selection_mode', 'compare_curves',
           'format_comparison', 'plot_comparison')


def learning_points(curve: dict) -> list[dict]:
    """Per committee the campaign trained (every iteration's, then the final one): labels in its training set and
    its held-out errors (force RMSE per Cartesian component, energy RMSE per atom)."""
    points = [{'labels': row['labels_total'], 'force_rmse': row['test_force_rmse'],
               'energy_rmse_per_atom': row.get('test_energy_rmse_per_atom'), 'stage': f'iteration {row["iteration"]}'}
              for row in curve.get('iterations', []) if row.get('test_force_rmse') is not None]
    final = curve.get('final_training') or {}
    if final.get('test_force_rmse') is not None:
        points.append({'labels': final['labels_total'], 'force_rmse': final['test_force_rmse'],
                       'energy_rmse_per_atom': final.get('test_energy_rmse_per_atom'), 'stage': 'final'})
    return points


def labels_to_reach(points: list[tuple[float, float]], target: float) -> float:
    """Labels at which a learning curve of (labels, error) points first reaches ``target``, interpolating linearly
    between points; ``inf`` when it never does."""
    for index, (labels, error) in enumerate(points):
        if error <= target:
            if index == 0:
                return float(labels)
            previous_labels, previous_error = points[index - 1]
            return previous_labels + (labels - previous_labels) * (previous_error - target) / (previous_error - error)
    return math.inf


def same_test_set(campaigns: dict) -> str | None:
    """Why these campaigns (name -> node) were not scored on one test set, or None when they were."""
    reference_name, reference = None, None
    for name, node in campaigns.items():
        test_set = node.inputs.test_set if 'test_set' in node.inputs else None
        if test_set is None:
            return f'{name} has no test_set: it was never scored on held-out data'
        if reference is None:
            reference_name, reference = name, test_set
            continue
        if test_set.uuid != reference.uuid and not test_set.same_content(reference):
            return (f'{name} was scored on test set <{test_set.pk}> ({test_set.num_configurations} configurations, '
                    f'content {test_set.content_hash[:12]}) but {reference_name} on <{reference.pk}> '
                    f'({reference.num_configurations} configurations, content {reference.content_hash[:12]})')
    return None


def selection_mode(node) -> str:
    """The selection mode a campaign ran with. Its selection records hold the settings in force; the input alone does
    not tell, because a campaign that left ``mode`` out ran the default of the version that ran it."""
    if 'selection_records' in node.outputs:
        for key in sorted(node.outputs.selection_records):
            settings = node.outputs.selection_records[key].base.attributes.get('settings', {})
            if 'mode' in settings:
                return settings['mode']
    given = node.inputs.selection.get_dict() if 'selection' in node.inputs else {}
    return given.get('mode', 'default')


def compare_curves(curves: dict, target: float | None = None) -> dict:
    """Labels each campaign (name -> learning curve dict) needs to reach ``target`` held-out force RMSE (default:
    the largest of the campaigns' best errors, so that every campaign reaches it)."""
    points = {name: learning_points(curve) for name, curve in curves.items()}
    missing = [name for name, rows in points.items() if not rows]
    if missing:
        raise ValueError(f'no held-out errors recorded for {", ".join(missing)}')
    if target is None:
        target = max(min(row['force_rmse'] for row in rows) for rows in points.values())
    needed = {name: labels_to_reach([(row['labels'], row['force_rmse']) for row in rows], target)
              for name, rows in points.items()}
    return {'target_force_rmse': target, 'points': points, 'labels_needed': needed}


def format_comparison(comparison: dict) -> str:
    lines = ['Held-out errors against the reference labels in the training set (force RMSE per Cartesian component, '
             'eV/Å; energy RMSE, meV/atom):']
    for name, rows in comparison['points'].items():
        lines.append(f'  {name}')
        for row in rows:
            energy = row['energy_rmse_per_atom']
            energy = f'{1000 * energy:8.2f}' if energy is not None else '       -'
            lines.append(f'    {row["stage"]:>12}  {row["labels"]:>5} labels  F {row["force_rmse"]:.4f}  E {energy}')
    target = comparison['target_force_rmse']
    lines.append(f'Labels needed to reach a held-out force RMSE of {target:.4f} eV/Å:')
    for name, labels in comparison['labels_needed'].items():
        lines.append(f'  {name}: {"never" if math.isinf(labels) else f"{labels:.1f}"}')
    return '\n'.join(lines)


def plot_comparison(comparison: dict, path: str | pathlib.Path) -> pathlib.Path:
    """Force and energy learning curves of every campaign (PNG); the target error as a dotted line."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4.2))
    forces, energies = figure.subplots(1, 2)
    for name, rows in comparison['points'].items():
        labels = [row['labels'] for row in rows]
        forces.plot(labels, [row['force_rmse'] for row in rows], 'o-', label=name)
        energy = [1000 * row['energy_rmse_per_atom'] if row['energy_rmse_per_atom'] is not None else math.nan
                  for row in rows]
        energies.plot(labels, energy, 'o-', label=name)
    forces.axhline(comparison['target_force_rmse'], color='k', ls=':', lw=1, label='target')
    forces.set_ylabel('held-out force RMSE per component (eV/Å)')
    energies.set_ylabel('held-out energy RMSE (meV/atom)')
    for axis in (forces, energies):
        axis.set_xlabel('reference labels in the training set')
        axis.legend(fontsize=8)
    figure.tight_layout()
    path = pathlib.Path(path)
    figure.savefig(path, dpi=110)
    return path
