"""The command-line options of ``mace_run_train`` and the mapping of a parameters dict onto them.

The list of known options is taken from MACE's own argparse parser (``mace.tools.build_default_arg_parser``) of the
installed mace-torch, so it follows the version that is installed instead of a copy that goes stale. Importing it
pulls in torch (a few seconds), hence it is loaded lazily and cached. No AiiDA import here.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
from collections.abc import Mapping
from typing import Any

from aiida_alml.atoms.suggest import did_you_mean

__all__ = ('INT_LIMIT', 'RANGES', 'REFUSED_PARAMETERS', 'RESERVED_OPTIONS', 'MaceOptionError', 'check_parameters',
           'known_options', 'to_command_line')

#: Options the calculation sets itself (files, names, seeds, keys, warm start, restart) with the input that controls
#: each one: giving them in ``parameters`` would silently break provenance or the parser's expectations.
RESERVED_OPTIONS = {
    'name': 'the calculation names the model itself (the parser looks for that file)',
    'seed': 'use the `seed` input (an Int), so that the seed is a node in the provenance graph',
    'train_file': 'use the `training_set` input',
    'valid_file': 'use the `validation_set` input',
    'test_file': 'use the `test_set` input',
    'test_dir': 'use the `test_set` input',
    'work_dir': 'the calculation runs in its own working directory',
    'log_dir': 'the parser reads the logs from the working directory',
    'model_dir': 'the parser reads the model from the working directory',
    'checkpoints_dir': 'checkpoints stay in the working directory so that a restart finds them',
    'results_dir': 'the parser reads the results from the working directory',
    'energy_key': 'the training file is written with the REF_energy key',
    'forces_key': 'the training file is written with the REF_forces key',
    'stress_key': 'the training file is written with the REF_stress key',
    'virials_key': 'the training file has no virials (stress is written as REF_stress)',
    'E0s': 'use the `e0s` input (a Dict of element: energy, or Str "average"), or IsolatedAtom configurations',
    'foundation_model': 'use the `parent_model` input (an MlipModel, hash-checked)',
    'restart_latest': 'use the `restart_folder` input (the remote folder of an interrupted run)',
}

#: Options refused in ``parameters`` beyond what ``alml-train`` refuses on the compute node
#: (:func:`aiida_alml.engines.train.option_refusal`: files, downloads, network, free text not reviewed), by ``dest``.
REFUSED_PARAMETERS = {
    'dry_run': 'MACE would stop before training and write no model',
    'config_type_weights': 'the training files carry no config_type (every configuration is `Default` to MACE), so '
                           'weights per config_type would be ignored',
}


#: Ranges of numeric options (by argparse ``dest``): (lowest, lowest allowed?, highest, highest allowed?); None: open.
#: mace_run_train checks only the type, so ``max_L: -1`` or ``r_max: 0`` would fail (or train nonsense) on the node.
#: The upper bounds stop a typo (``max_num_epochs: 1000000000``) from holding a GPU for months or exhausting its
#: memory; each lies well above what published MACE models use, so that no production setting meets it.
RANGES = {
    # Å: MACE models use 4-6 Å (long-range ones ~10 Å); at 20 Å a dense solid has thousands of neighbours per atom.
    'r_max': (0, False, 20.0, True),
    # Foundation models have 128-256 channels.
    'num_channels': (1, True, 1024, True),
    # Published models use hidden irreps up to L = 2 (max_L) and edge spherical harmonics up to 3 (max_ell).
    'max_L': (0, True, 4, True),
    'max_ell': (0, True, 6, True),
    # Body order correlation + 1: MACE uses 3, sometimes 4; the product basis grows steeply beyond.
    'correlation': (1, True, 5, True),
    # MACE uses 2 (sometimes 3) message-passing layers.
    'num_interactions': (1, True, 8, True),
    'num_radial_basis': (1, True, 64, True),
    'num_cutoff_basis': (1, True, 64, True),
    'avg_num_neighbors': (0, False, None, False),
    # Configurations per batch: 1-64 in practice; a few thousand small cells may still fit on a large GPU.
    'batch_size': (1, True, 4096, True),
    'valid_batch_size': (1, True, 4096, True),
    'valid_fraction': (0, False, 1, False),
    # MACE's default is 2048 epochs; long trainings of small data sets run a few thousand more.
    'max_num_epochs': (1, True, 100_000, True),
    'patience': (1, True, 100_000, True),
    'eval_interval': (1, True, 100_000, True),
    'start_swa': (0, True, 100_000, True),
    'num_workers': (0, True, 256, True),
    'lr': (0, False, None, False),
    'swa_lr': (0, False, None, False),
    'weight_decay': (0, True, None, False),
    'lr_factor': (0, False, 1, False),
    'lr_scheduler_gamma': (0, False, 1, True),
    'scheduler_patience': (0, True, None, False),
    'ema_decay': (0, False, 1, False),
    'huber_delta': (0, False, None, False),
    **{name: (0, True, None, False) for name in (
        'energy_weight', 'forces_weight', 'stress_weight', 'virials_weight', 'dipole_weight', 'polarizability_weight',
        'swa_energy_weight', 'swa_forces_weight', 'swa_stress_weight', 'swa_virials_weight', 'swa_dipole_weight',
        'swa_polarizability_weight')},
}
#: Any other integer option: within a C int, which is what torch and MACE's loops can take.
INT_LIMIT = 2**31 - 1


def _out_of_range(dest: str, value: float) -> str | None:
    """Why ``value`` is outside the range of option ``dest``, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return f'{value!r} is not a finite number'
    if dest not in RANGES:
        if isinstance(value, int) and abs(value) > INT_LIMIT:
            return f'must be between -{INT_LIMIT} and {INT_LIMIT}, got {value!r}'
        return None
    low, low_ok, high, high_ok = RANGES[dest]
    if low is not None and (value < low or (value == low and not low_ok)):
        return f'must be {">=" if low_ok else ">"} {low}, got {value!r}'
    if high is not None and (value > high or (value == high and not high_ok)):
        return f'must be {"<=" if high_ok else "<"} {high}, got {value!r}'
    return None


class MaceOptionError(ValueError):
    """A parameter cannot be mapped onto a ``mace_run_train`` option."""


@functools.lru_cache(maxsize=1)
def known_options() -> dict[str, argparse.Action]:
    """Map of option name (``dest`` and every ``--spelling`` without dashes) to its argparse action."""
    from aiida_alml.engines.mace_import import quiet_mace_import

    with quiet_mace_import():  # the campaign loader and the CLI check options: without MACE's import notices
        from mace.tools import build_default_arg_parser

    options: dict[str, argparse.Action] = {}
    for action in build_default_arg_parser()._actions:  # noqa: SLF001 (argparse has no public list of actions)
        if action.dest == 'help':
            continue
        for spelling in action.option_strings:
            options[spelling.lstrip('-')] = action
    return options


def _is_flag(action: argparse.Action) -> bool:
    # store_true / store_false actions take no value (nargs == 0).
    return action.nargs == 0


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return 'True' if value else 'False'  # MACE's str2bool accepts these
    if isinstance(value, (list, tuple, dict)):
        # MACE reads these options with ast.literal_eval (or json); Python literals satisfy both for numbers/str.
        return repr(value) if not _json_safe(value) else json.dumps(value)
    return str(value)


def _json_safe(value: Any) -> bool:
    text = json.dumps(value)
    return 'true' not in text and 'false' not in text and 'null' not in text


def _refusal(action: argparse.Action, value: Any) -> str | None:
    """Why option ``action`` (or its ``value``) may not be given in ``parameters``, or None. By ``dest``, so that every
    spelling of an option (``stage_two`` for ``swa``) gets the same answer."""
    from aiida_alml.engines.train import MODEL_CHOICES, option_refusal

    dest = action.dest
    if dest in RESERVED_OPTIONS:
        return f'is set by the calculation itself: {RESERVED_OPTIONS[dest]}'
    if _is_flag(action) and value is False:
        return None  # a flag set to false never reaches MACE (to_command_line leaves it out)
    if (reason := option_refusal(action)) is not None:
        return f'may not be set: {reason}'
    if dest in REFUSED_PARAMETERS:
        return f'may not be set: {REFUSED_PARAMETERS[dest]}'
    if dest == 'model' and value not in MODEL_CHOICES:
        return (f'{value!r} cannot be trained here: the model file format (alml.mace.v1) holds ScaleShiftMACE, '
                f'which MACE builds for `model` {" or ".join(MODEL_CHOICES)}')
    return None


def check_parameters(parameters: Mapping[str, Any]) -> None:
    """Raise :class:`MaceOptionError` naming every unknown, reserved or refused option and every badly typed value."""
    options = known_options()
    problems = []
    given: dict[str, str] = {}
    for key, value in parameters.items():
        action = options.get(key)
        if action is None:
            hint = did_you_mean(key, options, n=3, joiner=', ')
            problems.append(f'`{key}` is not an option of mace_run_train{hint}')
            continue
        if action.dest in given:
            problems.append(f'`{key}` and `{given[action.dest]}` are the same option of mace_run_train: give one')
            continue
        given[action.dest] = key
        if (reason := _refusal(action, value)) is not None:
            problems.append(f'`{key}` {reason}')
            continue
        if _is_flag(action):
            if not isinstance(value, bool):
                problems.append(f'`{key}` is an on/off flag of mace_run_train: give true or false, not {value!r}')
            continue
        if value is None:
            problems.append(f'`{key}` has no value (None): leave it out to use the MACE default')
            continue
        if action.choices is not None and value not in action.choices:
            problems.append(f'`{key}` must be one of {list(action.choices)}, got {value!r}')
            continue
        if callable(action.type):
            try:
                parsed = action.type(_as_text(value))
            except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
                problems.append(f'`{key}`: mace_run_train cannot read {value!r} ({error})')
                continue
            if isinstance(value, bool) and action.type in (int, float):
                problems.append(f'`{key}` takes a number, not {value!r}')
                continue
            if action.type in (int, float) and (reason := _out_of_range(action.dest, parsed)):
                problems.append(f'`{key}`: {reason}')
    if problems:
        raise MaceOptionError('invalid `parameters` for mace_run_train:\n  ' + '\n  '.join(problems))


def to_command_line(parameters: Mapping[str, Any]) -> list[str]:
    """``--option value`` arguments for ``parameters`` (checked first); flags set to false are left out."""
    check_parameters(parameters)
    options = known_options()
    arguments: list[str] = []
    for key in sorted(parameters):
        value = parameters[key]
        action = options[key]
        if _is_flag(action):
            # An on/off flag given as true is passed as written (as on MACE's command line), false leaves it out.
            if value:
                arguments.append(f'--{key}')
            continue
        arguments += [f'--{key}', _as_text(value)]
    return arguments
