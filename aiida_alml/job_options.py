"""Which job options a campaign *file* may set, and the campaign keys that stand for scheduler directives.

A campaign file is data: it may be shared, downloaded from a paper's supplement or written by a colleague, and
launching it must not run a command the launcher did not install. AiiDA's job options include shell text
(``prepend_text``, ``append_text``, ``custom_scheduler_commands``, ``mpirun_extra_params``) and environment variables
that make a program load code (``PYTHONPATH``, ``LD_PRELOAD``, ``BASH_ENV``); those belong on the code and computer
nodes, which an administrator sets up. Python scripts given to ``verdi run`` are code and may set anything.

AiiDA-free: used by :mod:`aiida_alml.campaign` while it converts the YAML file.
"""

from __future__ import annotations

import re

__all__ = (
    'CAMPAIGN_OPTION_KEYS', 'THREAD_VARIABLES', 'JobOptionError', 'campaign_metadata', 'campaign_options',
    'scheduler_option_problem',
)

#: Options a campaign file may set directly: resources and placement, nothing that is run.
CAMPAIGN_OPTION_KEYS = frozenset({
    'resources', 'max_wallclock_seconds', 'queue_name', 'account', 'qos', 'max_memory_kb', 'priority', 'withmpi',
    'environment_variables', 'redirect_stderr', 'gpus',
})

#: Environment variables a campaign file may set: thread counts and GPU visibility, which no program reads as code.
THREAD_VARIABLES = frozenset({
    'OMP_NUM_THREADS', 'OMP_PROC_BIND', 'OMP_PLACES', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS',
    'CUDA_VISIBLE_DEVICES',
})

_SAFE_VALUE = re.compile(r'^[A-Za-z0-9_.,:+-]*$')

#: Options AiiDA's scheduler plugins write into the job script as they are, unquoted (SLURM:
#: ``#SBATCH --partition={queue_name}``): a newline would start a command line of its own, a space or quote another
#: word. Names of partitions, accounts and QoS are plain words (SLURM allows a comma-separated list of partitions).
SCHEDULER_WORDS = ('queue_name', 'account', 'qos')
_SCHEDULER_WORD = re.compile(r'^[A-Za-z0-9_.,+-]{1,128}$')
#: ``priority`` becomes SLURM's ``--nice=N`` (-10000 to 10000) or PBS's ``-p N``: a signed whole number.
_PRIORITY = re.compile(r'^[+-]?[0-9]{1,5}$')

#: Upper bounds on what one job may ask for: far beyond any machine, low enough that a typo or a hostile file does not
#: reach the scheduler (``gpus: 1000000`` was accepted) or overflow its fields.
MAX_WALLCLOCK_SECONDS = 366 * 24 * 3600  # a year
MAX_MEMORY_KB = 1 << 40  # 1 PiB
MAX_GPUS = 64  # per job, as one ``--gres=gpu:N`` request
MAX_RESOURCE_COUNT = 1 << 20  # machines, MPI processes or cores

_WHERE_INSTEAD = {
    'prepend_text': 'shell commands belong on the code (verdi code create ... --prepend-text)',
    'append_text': 'shell commands belong on the code (verdi code create ... --append-text)',
    'custom_scheduler_commands': 'use `gpus: N` for a GPU request; other scheduler directives belong on the computer '
                                 '(verdi computer setup --prepend-text) or the code',
    'mpirun_extra_params': 'the MPI launcher is set on the computer (verdi computer setup --mpirun-command)',
}

#: ``metadata`` keys a campaign file may set (``store_provenance``, ``dry_run`` and the like change what is recorded).
CAMPAIGN_METADATA_KEYS = frozenset({'label', 'description', 'options'})


class JobOptionError(ValueError):
    """A campaign file sets a job option it may not set; the message names the key."""


def campaign_metadata(metadata, where: str) -> dict:
    """Check a ``metadata`` mapping of a campaign file and return it with its options converted."""
    if not isinstance(metadata, dict):
        raise JobOptionError(f'`{where}`: expected a mapping with label, description and options')
    unknown = sorted(set(metadata) - CAMPAIGN_METADATA_KEYS)
    if unknown:
        raise JobOptionError(f'`{where}.{unknown[0]}`: a campaign file may set only '
                             f'{", ".join(sorted(CAMPAIGN_METADATA_KEYS))} under metadata')
    converted = dict(metadata)
    if 'options' in metadata:
        converted['options'] = campaign_options(metadata['options'], f'{where}.options')
    return converted


def scheduler_option_problem(options: dict, where: str) -> str | None:
    """Why job ``options`` would put something other than a plain value into a job script, or None.

    For every caller, the Python API included (a newline in ``queue_name`` is never a partition name): the words
    AiiDA writes unquoted, the names of environment variables (written as ``export NAME=...``) and control characters
    in any text option.
    """
    try:
        _check_scheduler_values(options, where, counts=False)
    except JobOptionError as exception:
        return str(exception).replace('`', '')  # the process validators' style: `key: message`, unquoted
    return None


def _check_scheduler_values(options: dict, where: str, counts: bool = True) -> None:
    for key in SCHEDULER_WORDS:
        value = options.get(key)
        if value is not None and (not isinstance(value, str) or not _SCHEDULER_WORD.fullmatch(value)):
            raise JobOptionError(
                f'`{where}.{key}`: {value!r} is not a plain scheduler name (letters, digits and _ . , + - only): '
                'the scheduler plugin writes it into the job script as it is'
            )
    priority = options.get('priority')
    if priority is not None and (isinstance(priority, bool) or not _PRIORITY.fullmatch(str(priority))):
        raise JobOptionError(f'`{where}.priority`: {priority!r} is not a whole number (a scheduling priority)')
    for key, value in options.items():
        if isinstance(value, str) and _CONTROL.search(value):
            raise JobOptionError(f'`{where}.{key}`: {value!r} contains a control character (a newline would start a '
                                 'line of its own in the job script)')
    variables = options.get('environment_variables')
    if isinstance(variables, dict):
        for name in variables:
            if not isinstance(name, str) or not _VARIABLE_NAME.fullmatch(name):
                raise JobOptionError(f'`{where}.environment_variables`: {name!r} is not an environment variable name')
    if counts:
        _check_counts(options, where)


_CONTROL = re.compile(r'[\x00-\x1f\x7f]')
_VARIABLE_NAME = re.compile(r'^[A-Za-z_][A-Za-z0-9_]{0,127}$')


def _check_counts(options: dict, where: str) -> None:
    """Positive, bounded numbers where a campaign file gives times, memory and resources."""
    bounds = {'max_wallclock_seconds': MAX_WALLCLOCK_SECONDS, 'max_memory_kb': MAX_MEMORY_KB}
    for key, bound in bounds.items():
        value = options.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and not 0 < value <= bound:
            raise JobOptionError(f'`{where}.{key}`: {value} is outside 1 to {bound}')
    resources = options.get('resources')
    if resources is None:
        return
    if not isinstance(resources, dict):
        raise JobOptionError(f'`{where}.resources`: expected a mapping such as {{num_machines: 1}}')
    for key, value in resources.items():
        if isinstance(value, int) and not isinstance(value, bool) and not 0 < value <= MAX_RESOURCE_COUNT:
            raise JobOptionError(f'`{where}.resources.{key}`: {value} is outside 1 to {MAX_RESOURCE_COUNT}')


def campaign_options(options, where: str) -> dict:
    """Check the job options of a campaign file; ``gpus: N`` becomes SLURM's ``--gres=gpu:N`` directive."""
    if not isinstance(options, dict):
        raise JobOptionError(f'`{where}`: expected a mapping of job options, got {type(options).__name__}')
    for key in options:
        if key not in CAMPAIGN_OPTION_KEYS:
            reason = _WHERE_INSTEAD.get(key, f'allowed here: {", ".join(sorted(CAMPAIGN_OPTION_KEYS))}')
            raise JobOptionError(f'`{where}.{key}` may not be set in a campaign file: {reason} (docs/security.md)')
    converted = dict(options)
    _check_scheduler_values(options, where)
    variables = options.get('environment_variables', {})
    if not isinstance(variables, dict):
        raise JobOptionError(f'`{where}.environment_variables`: expected a mapping of names to values')
    for name, value in variables.items():
        if name not in THREAD_VARIABLES:
            raise JobOptionError(
                f'`{where}.environment_variables.{name}` may not be set in a campaign file: only '
                f'{", ".join(sorted(THREAD_VARIABLES))} (others belong on the code or computer; docs/security.md)'
            )
        if not isinstance(value, (str, int)) or isinstance(value, bool) or not _SAFE_VALUE.fullmatch(str(value)):
            raise JobOptionError(f'`{where}.environment_variables.{name}`: {value!r} is not a plain count or list')
    if 'priority' in options:
        converted['priority'] = str(options['priority'])  # AiiDA takes it as text; YAML gives `priority: -10` a number
    if 'environment_variables' in options:
        converted['environment_variables'] = {name: str(value) for name, value in variables.items()}
    if 'gpus' in options:
        gpus = converted.pop('gpus')
        if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
            raise JobOptionError(f'`{where}.gpus`: {gpus!r} is not a positive number of GPUs per job')
        if gpus > MAX_GPUS:
            raise JobOptionError(f'`{where}.gpus`: {gpus} GPUs for one job; at most {MAX_GPUS}')
        converted['custom_scheduler_commands'] = f'#SBATCH --gres=gpu:{gpus}'
    return converted
