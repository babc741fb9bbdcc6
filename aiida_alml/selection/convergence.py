"""When an iteration counts towards convergence, and when it does not, why."""

from __future__ import annotations

__all__ = ('convergence_blockers',)


def convergence_blockers(summary: dict, target_accurate_fraction: float, sigma_checked: bool,
                         explored_anew: bool) -> list[str]:
    """Reasons why an iteration does not count towards convergence (empty: it counts).

    ``summary`` holds the selection's accounting: ``accurate_fraction`` and ``failed_fraction`` of the frames
    exploration should have produced (missing ones count as failed), ``runs_stopped_early`` and ``runs_crashed``.
    """
    blockers = []
    if not explored_anew:
        blockers.append('not a new observation: the same member and MD seeds explored before')
    if not sigma_checked:
        blockers.append('σ not yet calibrated against labels')
    if summary['accurate_fraction'] < target_accurate_fraction:
        blockers.append(f'accurate fraction {summary["accurate_fraction"]:.1%} below the target '
                        f'{target_accurate_fraction:.1%}')
    if summary['failed_fraction'] > 0:
        blockers.append(f'{summary["failed_fraction"]:.1%} of frames failed or missing')
    if summary['runs_stopped_early']:
        blockers.append(f'{summary["runs_stopped_early"]} MD runs stopped early')
    if summary['runs_crashed']:
        blockers.append(f'{summary["runs_crashed"]} MD runs crashed')
    return blockers
