"""Job resources checked against the scheduler of the code's computer at launch, not when the job is submitted.

AiiDA checks ``metadata.options.resources`` against the computer's scheduler when a CalcJob is created: for the jobs a
campaign launches that is in the daemon, iterations later, after the labels before it were paid for. A labeller's
``options`` (a Dict) are not checked by AiiDA at all until its jobs are created: :func:`job_options_problem` checks
them at launch.
"""

from __future__ import annotations

from aiida_alml.atoms.suggest import did_you_mean
from aiida_alml.job_options import scheduler_option_problem

__all__ = ('job_options_problem', 'resources_problem')


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


def job_options_problem(process_class, options, name: str, code=None) -> str | None:
    """Why ``options`` (a Dict) cannot be the ``metadata.options`` of a ``process_class`` job of ``code`` (unknown key,
    wrong type, a word that would end a line of the job script, resources the computer's scheduler does not take)."""
    namespace = process_class.spec().inputs['metadata']['options']
    given = options.get_dict()
    unknown = sorted(set(given) - set(namespace))
    if unknown:
        return f'{name}.{unknown[0]}: not a job option{did_you_mean(unknown[0], namespace)}'
    if (problem := scheduler_option_problem(given, name)):
        return problem
    error = namespace.validate(namespace.pre_process(given))
    if error is None:
        return resources_problem(code, given, name)
    key = error.port.split('.', 1)[1] if '.' in error.port else ''
    return f'{name}{"." + key if key else ""}: {error.message}'
