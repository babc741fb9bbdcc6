"""``alml-train``: ``mace_run_train`` followed by writing the model in aiida-alml's format (no pickle leaves the job).

Takes ``mace_run_train``'s command line, checked in full before anything else runs (:func:`argv_problems`): every
option spelt exactly as MACE defines it, none twice, no ``--option=value``, and nothing that reads, writes or
downloads outside the job's folder or unpickles a file. The same command line can reach this program from anything
that can run a code, so the check is here, on the compute node, and not only at launch.

A ``--foundation_model`` must be a file of this job's folder in our format: it is rebuilt in memory, with the E0s of
``--E0s`` (MACE would otherwise keep the foundation's: it copies every buffer of it), and handed to MACE without a
pickle. Every other ``torch.load`` during training (the checkpoints of ``--restart_latest``) is weights-only. After
training, ``<name>_stagetwo.model`` (with stage two) or ``<name>.model`` (MACE's pickle, written by this job) is
converted to ``<name>.alml`` (:mod:`aiida_alml.engines.model_format`), the only model file the calculation retrieves.

alml-train has one option of its own, ``--alml_train_parts PLAN`` (taken off before MACE's command line is checked): a
JSON file of the job's folder listing npz files of the folder (the flat parts of a composed training set, copied there
by AiiDA); their configurations, concatenated in order and without the isolated atoms, are written to
``--train_file`` before training (:func:`assemble_train_file`), exactly as the calculation would have written it.
Runs on the compute node; no AiiDA import.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path

__all__ = ('ISOLATED_ATOM', 'JOB_FILE_OPTIONS', 'MODEL_CHOICES', 'PARTS_FORMAT', 'PARTS_OPTION', 'REFUSED_OPTIONS',
           'TEXT_OPTIONS', 'PartsPlanError', 'argv_problems', 'assemble_train_file', 'is_isolated_atom', 'main',
           'option_refusal', 'trained_indices')

EXIT_NO_MODEL = 3
EXIT_BAD_FOUNDATION = 4
EXIT_BAD_ARGUMENTS = 5
EXIT_BAD_CHECKPOINT = 6
EXIT_BAD_PARTS = 7
#: Every refusal's message starts with this (the calculation's parser looks for it in the job's output).
REFUSED = 'alml-train: refused:'

#: alml-train's own option: the plan of the training file (see the module docstring); the format of that plan.
PARTS_OPTION = '--alml_train_parts'
PARTS_FORMAT = 'alml.train_parts/1'
#: MACE's config_type for the configurations that give E0s (MACE leaves them out of training).
ISOLATED_ATOM = 'IsolatedAtom'

#: Options (argparse ``dest``) that name a file or folder, or a name MACE builds file names from, and that the
#: calculation passes itself: their values must be plain names inside the job's folder.
JOB_FILE_OPTIONS = ('name', 'train_file', 'valid_file', 'test_file', 'work_dir', 'foundation_model')

#: Options refused wherever they come from, by ``dest``, with the reason.
REFUSED_OPTIONS = {
    'config': 'reads options from a YAML file on the compute node; give every option on the command line (in a '
              'calculation: in `parameters`), so that each one is recorded',
    'statistics_file': 'reads a file on the compute node; MACE computes the statistics from the training set',
    'pt_train_file': 'reads (or, given `mp`, downloads) pretraining data on the compute node; multi-head fine-tuning '
                     'is not supported',
    'pt_valid_file': 'reads pretraining data on the compute node; multi-head fine-tuning is not supported',
    'heads': 'defines heads with their own train_file, statistics_file, ... read on the compute node; multi-head '
             'training is not supported',
    'les_arguments': 'reads a YAML file on the compute node (LES models are not supported)',
    'downloads_dir': 'nothing may be downloaded on a compute node',
    'foundation_model_kwargs': "configures the download of MACE's own foundation models; a warm start takes a model "
                               "in aiida-alml's format",
    'fixedpoint_update_config': 'configures PolarMACE only, which the model format cannot hold',
    'field_readout_config': 'configures PolarMACE only, which the model format cannot hold',
    'log_dir': 'logs stay in the working directory (the calculation retrieves them from there)',
    'model_dir': 'the model stays in the working directory (the calculation retrieves it from there)',
    'checkpoints_dir': 'checkpoints stay in the working directory, so that a restart finds them',
    'results_dir': 'results stay in the working directory (the calculation retrieves them from there)',
    'test_dir': 'reads every file of a folder; a calculation passes its test set as test_file',
    'distributed': 'multi-process training (torch.distributed) is not supported: one job trains on one device',
    'launcher': 'multi-process training (torch.distributed) is not supported: one job trains on one device',
}
_WANDB = 'Weights & Biases logging sends data over the network (compute nodes have no network)'

#: Text options (``dest``) reviewed as harmless: parsed as literals, irreps or JSON, or naming a key, a head, a log
#: level or a scheduler, never a path. Any other option that takes free text is refused, so that an option a later
#: MACE adds, which may well take a path, is refused instead of passed on.
TEXT_OPTIONS = frozenset({
    'log_level', 'MLP_irreps', 'radial_MLP', 'hidden_irreps', 'edge_irreps', 'field_feature_widths',
    'field_feature_norms', 'atomic_numbers', 'foundation_head', 'skip_evaluate_heads', 'lr_params_factors',
    'scheduler', 'embedding_specs', 'config_type_weights', 'energy_key', 'forces_key', 'virials_key', 'stress_key',
    'dipole_key', 'polarizability_key', 'head_key', 'charges_key', 'elec_temp_key', 'total_spin_key',
    'total_charge_key',
})
#: How MACE reads the values of the options we pass (by the function's name): numbers, text, yes/no.
_PLAIN_TYPES = frozenset({'int', 'float', 'str', 'str2bool', 'check_float_or_none'})
#: ``--model`` values whose model our format holds (MACE builds a ScaleShiftMACE for both).
MODEL_CHOICES = ('MACE', 'ScaleShiftMACE')


def option_refusal(action) -> str | None:
    """Why the ``mace_run_train`` option of argparse ``action`` may not be given, or None."""
    dest = action.dest
    if dest in REFUSED_OPTIONS:
        return REFUSED_OPTIONS[dest]
    if dest.startswith('wandb'):
        return _WANDB
    if dest in JOB_FILE_OPTIONS or dest == 'E0s':
        return None  # checked by value: plain names inside the job's folder
    if dest.endswith(('_dir', '_file')):
        return 'names a file or folder outside what the calculation passes'
    if action.nargs not in (None, 0):
        return 'takes several values; alml-train passes only options that take one'
    type_name = getattr(action.type, '__name__', None) if action.type is not None else 'str'
    if action.nargs == 0 or action.choices is not None:
        return None  # an on/off flag, or one of a fixed list of words
    if type_name not in _PLAIN_TYPES:
        return f'MACE reads its value with {type_name}(), not as a number or text'
    if type_name == 'str' and dest not in TEXT_OPTIONS:
        return 'takes text that alml-train does not know to be harmless (it could be a path)'
    return None


def _plain_name(value: str, allow_dot: bool = False) -> str | None:
    """Why ``value`` is not a plain file name inside the job's folder, or None."""
    if allow_dot and value == '.':
        return None
    if not value or '/' in value or '\\' in value or '..' in value or value == '.' or not value.isprintable():
        return f'{value!r} must be a plain file name in the job folder (no `/`, no `..`)'
    try:
        # A symbolic link would lead outside.
        if Path(value).exists() and Path(value).resolve().parent != Path.cwd().resolve():
            return f'{value!r} leads outside the job folder'
    except OSError as error:
        return f'{value!r} cannot be checked ({error})'
    return None


def argv_problems(argv: list[str], parser) -> list[str]:
    """Everything wrong with ``argv`` as alml-train's command line (``parser``: MACE's), checked before MACE parses it.

    argparse would expand an abbreviation (``--foundation`` for ``--foundation_model``), split ``--opt=value``, and
    keep the last of an option given twice; configargparse would first read ``--config`` (or a prefix of it) on its
    own. So each option must be written exactly, once, with its value in the next word.
    """
    actions = parser._option_string_actions  # noqa: SLF001 (argparse has no public map of option strings)
    config_spellings = [spelling for action in parser._actions if getattr(action, 'is_config_file_arg', False)
                        for spelling in action.option_strings]  # noqa: SLF001
    negative_number = re.compile(r'^-\d+$|^-\d*\.\d+$')  # argparse reads these as values
    problems: list[str] = []
    seen: dict[str, str] = {}
    index = 0
    while index < len(argv):
        token = argv[index]
        index += 1
        if not token.startswith('-') or token == '--':
            problems.append(f'{token!r} is not an option (options are written --name, each followed by its value)')
            continue
        if '=' in token:
            problems.append(f'{token!r}: write the option and its value as two words (`{token.split("=", 1)[0]} '
                            'VALUE`), not joined by `=`')
            continue
        action = actions.get(token)
        if action is None:
            close = sorted(spelling for spelling in actions if spelling.startswith(token))
            hint = f' (an abbreviation of {", ".join(close)}: write it in full)' if close else ''
            problems.append(f'{token} is not an option of mace_run_train{hint}')
            continue
        if any(spelling.startswith(token) and spelling != token for spelling in config_spellings):
            problems.append(f'{token}: configargparse would read it as {config_spellings[0]}')
        if action.dest in seen:
            also = '' if seen[action.dest] == token else f' (as {seen[action.dest]} and {token})'
            problems.append(f'{token} is given twice{also}: argparse would keep only the last')
        seen[action.dest] = token
        if (reason := option_refusal(action)) is not None:
            problems.append(f'{token}: {reason}')
        if action.nargs == 0:
            continue
        if index >= len(argv) or (argv[index].startswith('-') and not negative_number.match(argv[index])):
            problems.append(f'{token} needs a value')
            continue
        value = argv[index]
        index += 1
        if action.dest in JOB_FILE_OPTIONS and action.dest != 'foundation_model':
            if (reason := _plain_name(value, allow_dot=action.dest == 'work_dir')) is not None:
                problems.append(f'{token}: {reason}')
        elif action.dest == 'E0s' and value.endswith('.json') and (reason := _plain_name(value)) is not None:
            problems.append(f'{token}: {reason}')
        elif action.dest == 'model' and value not in MODEL_CHOICES:
            problems.append(f'{token}: {value!r} is not one of {list(MODEL_CHOICES)}, the models that aiida-alml\'s '
                            'model format holds')
    return problems


def _foundation_problem(path: str) -> str | None:
    """Why ``path`` cannot be a foundation model (a file of this job's folder in our format), or None."""
    from aiida_alml.engines.model_format import ModelFormatError, read_header

    if (reason := _plain_name(path)) is not None:
        return reason
    if not Path(path).is_file():
        return (f'{path!r} is not a file in the job folder: a warm start needs a model in aiida-alml\'s format '
                '(MACE\'s named models such as `small` are downloaded and are pickles)')
    try:
        read_header(path)
    except ModelFormatError as exception:
        return str(exception)
    return None


def _checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint in ``folder`` cannot be restarted from, or None. MACE would catch the failed load and silently
    train from scratch: a checkpoint that is not plain tensors and numbers (weights-only) is refused here instead."""
    import pickle

    import torch

    if folder.is_symlink() or (folder.exists() and not folder.resolve().is_relative_to(Path.cwd().resolve())):
        return f'{folder} leads outside the job folder'
    for path in sorted(folder.glob('*.pt')) if folder.is_dir() else []:
        if path.is_symlink():
            return f'{path} is a link (a checkpoint must be a file of the job folder)'
        try:
            torch.load(path, map_location='cpu', weights_only=True)
        except pickle.UnpicklingError:
            return f'{path} is not plain weights (it asks to rebuild Python objects), so it was not loaded'
        except (RuntimeError, EOFError, OSError) as exception:
            return f'{path} cannot be read as a checkpoint ({exception})'
    return None


def _explicit_e0s(value: str | None) -> dict[int, float] | None:
    """The E0s of ``--E0s`` when it is a literal {Z: eV} (the calculation always passes one), else None."""
    import ast

    if value is None or not value.strip().startswith('{'):
        return None
    e0s = ast.literal_eval(value)
    return {int(z): float(energy) for z, energy in e0s.items()}


@contextlib.contextmanager
def _weights_only_loads(foundation_path: str | None, foundation):
    """While MACE trains, every ``torch.load`` is weights-only, and a load of ``--foundation_model`` gets
    ``foundation`` (the model rebuilt from our file) instead, so that no pickle is written or read.

    MACE calls ``torch.load`` without ``weights_only`` (the checkpoints of ``--restart_latest``) and sets
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD on import (in ``mace`` and again in ``mace.calculators``), which turns that call
    into a full unpickling. Checkpoints hold only tensors and numbers, so weights-only loads them.
    """
    import torch

    load = torch.load
    target = None if foundation_path is None else os.path.realpath(foundation_path)

    def weights_only_load(f, map_location=None, *args, **kwargs):
        if target is not None and isinstance(f, (str, os.PathLike)) and os.path.realpath(f) == target:
            return foundation if map_location is None else foundation.to(map_location)
        kwargs['weights_only'] = True
        return load(f, map_location, *args, **kwargs)

    os.environ.pop('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', None)
    torch.load = weights_only_load
    try:
        yield
    finally:
        torch.load = load


def is_isolated_atom(metadata: dict, n_atoms: int) -> bool:
    """Whether a configuration gives an element's E0 (MACE's ``config_type: IsolatedAtom``, one atom)."""
    return metadata.get('config_type') == ISOLATED_ATOM and n_atoms == 1


def trained_indices(configurations) -> list[int]:
    """Indices of the configurations that are not isolated atoms: those are trained on (MACE would drop the isolated
    atoms anyway, keep_isolated_atoms=False)."""
    return [i for i, meta in enumerate(configurations.metadata)
            if not is_isolated_atom(meta, int(configurations.n_atoms[i]))]


class PartsPlanError(ValueError):
    """The plan of ``--alml_train_parts`` or one of the files it lists is not usable."""


def _read_plan(plan: str) -> list[dict]:
    """The parts listed by the plan file ``plan``, each checked to be a plain file name of the job folder."""
    import json

    if (reason := _plain_name(plan)) is not None:
        raise PartsPlanError(reason)
    try:
        content = json.loads(Path(plan).read_text(encoding='utf-8'))
    except (OSError, ValueError) as error:
        raise PartsPlanError(f'cannot be read as JSON ({error})') from error
    parts = content.get('parts') if isinstance(content, dict) else None
    if (not isinstance(content, dict) or content.get('format') != PARTS_FORMAT or not isinstance(parts, list)
            or not parts):
        raise PartsPlanError(f'is not a plan of format {PARTS_FORMAT!r} with a non-empty list of `parts`')
    for index, part in enumerate(parts):
        if (not isinstance(part, dict) or set(part) != {'file', 'num_configurations', 'content_hash'}
                or not isinstance(part['file'], str)):
            raise PartsPlanError(f'part {index} must be {{"file", "num_configurations", "content_hash"}}, got {part!r}')
        if (reason := _plain_name(part['file'])) is not None:
            raise PartsPlanError(f'part {index}: {reason}')
        if not Path(part['file']).is_file():
            raise PartsPlanError(f'part {index}: {part["file"]!r} is not a file in the job folder')
    return parts


def assemble_train_file(plan: str, train_file: str) -> str:
    """Write ``train_file`` from the parts of the plan file ``plan``, and say what was written.

    The parts' configurations are concatenated in order, each part checked against the size and content hash that
    the plan records (those of the stored sets), the isolated atoms left out, and the rest written with the
    calculation's own writer: the file is byte for byte the one the calculation writes from the whole set.
    """
    import zipfile

    from aiida_alml.atoms.configurations import Configurations, write_extxyz

    parts = _read_plan(plan)
    if (reason := _plain_name(train_file)) is not None or Path(train_file).exists():
        raise PartsPlanError(reason or f'{train_file!r} exists already: it is written from the parts only')
    loaded = []
    for index, part in enumerate(parts):
        try:
            configurations = Configurations.from_npz(part['file'])
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as error:
            raise PartsPlanError(f'part {index}: {part["file"]!r} is not a configurations npz ({error})') from error
        if len(configurations) != part['num_configurations'] or configurations.content_hash() != part['content_hash']:
            raise PartsPlanError(f'part {index}: {part["file"]!r} holds {len(configurations)} configurations with '
                                 f'content {configurations.content_hash()[:12]}, the plan records '
                                 f'{part["num_configurations"]} with {str(part["content_hash"])[:12]}')
        loaded.append(configurations)
    try:
        everything = Configurations.concatenate(loaded)
    except ValueError as error:
        raise PartsPlanError(f'the parts cannot be concatenated ({error})') from error
    trained = trained_indices(everything)
    if not trained:
        raise PartsPlanError('the parts hold isolated atoms only: nothing to train on')
    write_extxyz(everything.select(trained), train_file)
    return (f'alml-train: assembled {train_file} from {len(parts)} parts, {len(trained)} configurations '
            f'({len(everything) - len(trained)} isolated atoms left out)')


def _take_parts_option(argv: list[str]) -> tuple[list[str], str | None, str | None]:
    """(``argv`` without ``--alml_train_parts PLAN``, PLAN or None, what is wrong with the option or None)."""
    positions = [index for index, token in enumerate(argv) if token == PARTS_OPTION]
    if not positions:
        return argv, None, None
    if len(positions) > 1:
        return argv, None, f'{PARTS_OPTION} is given {len(positions)} times'
    index = positions[0]
    if index + 1 >= len(argv) or argv[index + 1].startswith('-'):
        return argv, None, f'{PARTS_OPTION} needs a value (the plan file)'
    return argv[:index] + argv[index + 2:], argv[index + 1], None


def _refuse(message: str, code: int) -> int:
    print(f'{REFUSED} {message}', file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Our own option first: the rest is MACE's command line, checked in full.
    argv, plan, problem = _take_parts_option(argv)
    from mace.tools import build_default_arg_parser

    parser = build_default_arg_parser()
    problems = ([problem] if problem else []) + argv_problems(argv, parser)
    if problems:
        return _refuse('\n  '.join(['the command line is not one alml-train runs:', *problems]), EXIT_BAD_ARGUMENTS)
    parser.allow_abbrev = False  # already excluded above; kept off as a second guard
    args = parser.parse_args(argv)

    if plan is not None:
        if args.train_file is None:
            return _refuse(f'{PARTS_OPTION} needs --train_file: the file to write from the parts', EXIT_BAD_PARTS)
        try:
            print(assemble_train_file(plan, args.train_file), flush=True)
        except PartsPlanError as error:
            return _refuse(f'{PARTS_OPTION} {plan}: {error}', EXIT_BAD_PARTS)

    from aiida_alml.engines.model_format import ModelFormatError, load_model, save_model, set_atomic_energies

    foundation = None
    if args.foundation_model is not None:
        if (reason := _foundation_problem(args.foundation_model)) is not None:
            return _refuse(f'--foundation_model {reason}', EXIT_BAD_FOUNDATION)
        try:
            foundation = load_model(args.foundation_model)
            if (e0s := _explicit_e0s(args.E0s)):
                set_atomic_energies(foundation, e0s)
        except (ModelFormatError, ValueError, SyntaxError, TypeError, KeyError, AttributeError) as exception:
            return _refuse(f'--foundation_model {args.foundation_model}: {exception}', EXIT_BAD_FOUNDATION)

    model_dir = Path(args.work_dir)
    candidates = [model_dir / f'{args.name}_stagetwo.model', model_dir / f'{args.name}.model']
    if (present := [str(path) for path in candidates if path.exists()]):
        # Only a model this run writes may be loaded below (with full unpickling): one already here is not ours.
        return _refuse(f'{", ".join(present)} exists before training and would be taken for its result',
                       EXIT_BAD_ARGUMENTS)

    if args.restart_latest and (reason := _checkpoint_problem(model_dir / 'checkpoints')) is not None:
        return _refuse(f'--restart_latest: {reason}', EXIT_BAD_CHECKPOINT)

    import torch
    from mace.cli.run_train import run

    with _weights_only_loads(args.foundation_model, foundation):
        run(args)

    # With stage two (``--swa``: the energy weight raised for the last epochs) MACE writes both models; the stage-two
    # one is the trained result.
    pickled = next((path for path in candidates if path.is_file()), candidates[-1])
    if not pickled.is_file():
        print(f'alml-train: mace_run_train wrote no {pickled}', file=sys.stderr)
        return EXIT_NO_MODEL
    # This pickle was written a moment ago by this job's own training (none was there before): loading it here is
    # loading our own output.
    model = torch.load(pickled, map_location='cpu', weights_only=False)
    save_model(model, model_dir / f'{args.name}.alml')
    print(f'alml-train: wrote {model_dir / f"{args.name}.alml"} (model config + weights, no pickle)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
