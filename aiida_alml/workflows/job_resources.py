"""Job resources checked against the scheduler of the code's computer at launch, not when the job is submitted.

AiiDA checks ``metadata.options.resources`` against the computer's scheduler when a CalcJob is created: for the jobs a
campaign launches that is in the daemon, iterations later, after the labels before it were paid for. A labeller's
``options`` (a Dict) are not checked by AiiDA at all until its jobs are created.
"""

from __future__ import annotations

__all__ = ('resources_problem',)


def resources_problem(code, options: dict, where: str) -> str | None:
    """Why ``options['resources']`` do not fit the scheduler of ``code``'s computer (unknown key, bad count), or None."""
    resources = options.get('resources')
    if resources is None or code is None or code.computer is None:
        return None
    if not isinstance(resources, dict):
        return f'{where}.resources: expected a mapping such as {{num_machines: 1}}, got {resources!r}'
    computer = code.computer
    scheduler = computer.get_scheduler()
    given = dict(resources)
    try:
        scheduler.preprocess_resources(given, computer.get_default_mpiprocs_per_machine())
        scheduler.validate_resources(**given)
    except (ValueError, TypeError) as exception:
        # AiiDA's job-resource classes raise ValueError for unknown keys, missing or non-positive counts.
        return (f'{where}.resources: {resources} do not fit the {computer.scheduler_type} scheduler of '
                f'{computer.label}: {exception}')
    return None
