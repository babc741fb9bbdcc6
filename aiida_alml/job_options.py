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

__all__ = ('CAMPAIGN_OPTION_KEYS', 'THREAD_VARIABLES', 'JobOptionError', 'campaign_metadata', 'campaign_options')

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


def campaign_options(options, where: str) -> dict:
    """Check the job options of a campaign file; ``gpus: N`` becomes SLURM's ``--gres=gpu:N`` directive."""
    if not isinstance(options, dict):
        raise JobOptionError(f'`{where}`: expected a mapping of job options, got {type(options).__name__}')
    for key in options:
        if key not in CAMPAIGN_OPTION_KEYS:
            reason = _WHERE_INSTEAD.get(key, f'allowed here: {", ".join(sorted(CAMPAIGN_OPTION_KEYS))}')
            raise JobOptionError(f'`{where}.{key}` may not be set in a campaign file: {reason} (docs/security.md)')
    converted = dict(options)
    variables = options.get('environment_variables', {})
    if not isinstance(variables, dict):
        raise JobOptionError(f'`{where}.environment_variables`: expected a mapping of names to values')
    for name, value in variables.items():
        if name not in THREAD_VARIABLES:
            raise JobOptionError(
                f'`{where}.environment_variables.{name}` may not be set in a campaign file: only '
                f'{", ".join(sorted(THREAD_VARIABLES))} (others belong on the code or computer; docs/security.md)'
            )
        if not isinstance(value, (str, int)) or isinstance(value, bool) or not _SAFE_VALUE.match(str(value)):
            raise JobOptionError(f'`{where}.environment_variables.{name}`: {value!r} is not a plain count or list')
    if 'environment_variables' in options:
        converted['environment_variables'] = {name: str(value) for name, value in variables.items()}
    if 'gpus' in options:
        gpus = converted.pop('gpus')
        if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
            raise JobOptionError(f'`{where}.gpus`: {gpus!r} is not a positive number of GPUs per job')
        converted['custom_scheduler_commands'] = f'#SBATCH --gres=gpu:{gpus}'
    return converted
