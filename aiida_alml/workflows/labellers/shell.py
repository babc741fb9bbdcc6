"""The shell labeller of ``alml.label`` (``labeller='shell'``): one aiida-shell ``ShellJob`` per configuration, under an
``alml.shell.base``. The program reads the geometry file we write (placeholder ``{geometry}`` in its arguments) and
writes an ASE-readable file with energy and forces, read back by the calcfunction :func:`parse_shell_labels`.

What it may run and which files it may touch: the shell labeller runs whatever its code node runs, with the arguments
the campaign gives. A campaign file is data (docs/security.md), so the code must have been declared a reference program
by whoever administers the profile: the extra :data:`LABELLER_EXTRA` set to true on the code node (``aiida-alml
allow-labeller CODE``). The project's own programs (``alml-train``, ``alml-md``, ``alml-label``) and codes of other
calculation plugins never qualify: given free arguments, ``alml-train`` would train on any file or load any model.
File names are plain names inside the job folder (aiida-shell joins them to its sandbox, so ``../x`` would write or
retrieve a file outside it).
"""

from __future__ import annotations

import pathlib
import re
import string

from aiida import orm
from aiida.engine import calcfunction

from aiida_alml.data.configurations import ConfigurationSet
from aiida_alml.label_settings import with_label_settings
from aiida_alml.workflows.base import base_inputs, last_job
from aiida_alml.workflows.job_resources import job_options_problem
from aiida_alml.workflows.submission import submit_once

__all__ = ('GEOMETRY_PLACEHOLDER', 'LABELLER_EXTRA', 'OWN_PROGRAMS', 'allow_labeller', 'plain_file_name_problem',
           'shell_label_problem', 'parse_shell_labels', 'submit_shell', 'collect_shell', 'ShellJobOutput')

GEOMETRY_PLACEHOLDER = '{geometry}'

#: Extra on a code node that declares it a reference program the shell labeller may run (set by the profile's owner).
LABELLER_EXTRA = 'alml_labeller'

#: This package's own programs: they read models and training files named on their command line.
OWN_PROGRAMS = frozenset({'alml-train', 'alml-md', 'alml-label', 'aiida-alml', 'mace_run_train', 'verdi'})

_PLAIN_NAME = re.compile(r'[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}')
#: Arguments are single words of the command line (aiida-shell quotes each); 4 KiB each is far beyond any real one.
MAX_ARGUMENT_LENGTH = 4096
MAX_ARGUMENTS = 256


def plain_file_name_problem(name, key: str) -> str | None:
    """Why ``name`` is not a plain file name inside the job folder (no separator, not ``..``, not hidden), or None."""
    if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name) or name in ('.', '..'):
        return (f'{key}: {name!r} is not a plain file name (letters, digits and _ . + -, at most 128, no folder): the '
                'file must stay inside the job folder')
    return None


def own_program_problem(code, key: str) -> str | None:
    """Why ``code`` is one of this package's own programs or a code of another calculation plugin, or None."""
    plugin = code.default_calc_job_plugin or ''
    if plugin and plugin != 'core.shell':
        return (f'{key}: {code.full_label} is a code for {plugin!r}, not a reference program: the shell labeller runs '
                "codes made for aiida-shell (ShellCode, plugin 'core.shell')")
    executable = getattr(code, 'filepath_executable', None)
    name = pathlib.PurePath(str(executable)).name if executable is not None else ''
    if name in OWN_PROGRAMS:
        return (f'{key}: {code.full_label} runs {name}, one of aiida-alml\'s own programs; with free arguments it '
                'would read or write any file: it can never be a shell labeller')
    return None


def allow_labeller(code) -> None:
    """Declare ``code`` a reference program the shell labeller may run (stored as the extra :data:`LABELLER_EXTRA`)."""
    if (problem := own_program_problem(code, 'code')):
        raise ValueError(problem)
    code.base.extras.set(LABELLER_EXTRA, True)


def shell_label_problem(inputs) -> str | None:
    """What makes the ``shell`` inputs of ``alml.label`` unfit, or None."""
    shell = inputs.get('shell', {})
    for name in ('code', 'arguments', 'output_filename'):
        if name not in shell:
            return f'shell.{name}: needed for labeller shell'
    code = shell['code']
    if (problem := own_program_problem(code, 'shell.code')):
        return problem
    if code.base.extras.get(LABELLER_EXTRA, False) is not True:
        return (f'shell.code: {code.full_label} is not declared a reference program: its owner declares it with '
                f'`aiida-alml allow-labeller {code.full_label}` (sets the extra {LABELLER_EXTRA}; docs/security.md)')
    if (problem := _arguments_problem(shell['arguments'].get_list())):
        return problem
    for name in ('geometry_filename', 'output_filename'):
        if name in shell and (problem := plain_file_name_problem(shell[name].value, f'shell.{name}')):
            return problem
    if (problem := _formats_problem(shell)):
        return problem
    if 'options' in shell:
        from aiida_shell import ShellJob

        return job_options_problem(ShellJob, shell['options'], 'shell.options', code)
    return None


def _arguments_problem(arguments: list) -> str | None:
    if len(arguments) > MAX_ARGUMENTS:
        return f'shell.arguments: {len(arguments)} arguments; at most {MAX_ARGUMENTS}'
    for index, argument in enumerate(arguments):
        if not isinstance(argument, str):
            return f'shell.arguments[{index}]: {argument!r} is not a string (write numbers in quotes)'
        if len(argument) > MAX_ARGUMENT_LENGTH or any(ord(char) < 32 or ord(char) == 127 for char in argument):
            return f'shell.arguments[{index}]: longer than {MAX_ARGUMENT_LENGTH} characters or holds a control character'
        try:
            fields = [field for _, field, _, _ in string.Formatter().parse(argument) if field is not None]
        except ValueError as exception:  # an unmatched brace
            return f'shell.arguments[{index}]: {argument!r}: {exception} (write a literal brace as {{{{ or }}}})'
        unknown = [field for field in fields if '{' + field + '}' != GEOMETRY_PLACEHOLDER]
        if unknown:
            return (f'shell.arguments[{index}]: unknown placeholder {{{unknown[0]}}}: the only placeholder is '
                    f'{GEOMETRY_PLACEHOLDER}, the geometry file')
    if not any(GEOMETRY_PLACEHOLDER in argument for argument in arguments):
        return f'shell.arguments: none contains the placeholder {GEOMETRY_PLACEHOLDER} for the geometry file'
    return None


def _formats_problem(shell) -> str | None:
    """The geometry format must be one ASE writes, the output format one ASE reads ('' : guessed from the name)."""
    from ase.io.formats import UnknownFileTypeError, filetype, ioformats

    geometry = shell['geometry_format'].value if 'geometry_format' in shell else 'extxyz'
    if geometry not in ioformats or not ioformats[geometry].can_write:
        return f'shell.geometry_format: {geometry!r} is not a format ASE can write (extxyz, xyz, aims, vasp, ...)'
    output = shell['output_format'].value if 'output_format' in shell else ''
    if output:
        if output not in ioformats or not ioformats[output].can_read:
            return f'shell.output_format: {output!r} is not a format ASE can read (extxyz, json, aims-output, ...)'
        return None
    try:
        filetype(shell['output_filename'].value, read=False, guess=False)
    except (UnknownFileTypeError, ValueError) as exception:
        return (f'shell.output_format: not given, and ASE cannot tell the format from the name '
                f'{shell["output_filename"].value!r} ({exception}): give output_format')
    return None


@calcfunction
def parse_shell_labels(output_file: orm.SinglefileData, file_format: orm.Str) -> ConfigurationSet:
    """Our parser of a reference program's output: an ASE-readable file with energy and forces of one geometry."""
    import tempfile

    from ase.io import read

    # ASE guesses a format from the file name, so read it under its own name (its last part only: a node from an
    # imported archive may carry any name, and the file must stay in the temporary folder).
    with tempfile.TemporaryDirectory() as directory:
        path = pathlib.Path(directory) / (pathlib.PurePath(output_file.filename).name or 'output')
        path.write_bytes(output_file.get_content(mode='rb'))
        atoms = read(path, index=-1, format=file_format.value or None)
    results = getattr(atoms.calc, 'results', {}) or {}
    missing = [name for name in ('energy', 'forces') if name not in results]
    if missing:
        raise ValueError(f'{output_file.filename}: no {" and ".join(missing)} in the program output')
    creator = output_file.creator
    meta = {'labeller': 'shell', 'source_calc_uuid': creator.uuid if creator else None}
    if creator is not None:
        # What decides the numbers: the program (its code) and its command line; the output format only says how
        # to read them, but a different reader could round differently.
        settings = {
            'labeller': 'shell',
            'code': creator.inputs.code.full_label,
            'plugin': creator.process_type.rsplit(':', 1)[-1],
            'arguments': creator.inputs.arguments.get_list() if 'arguments' in creator.inputs else [],
            'output_format': file_format.value,
        }
        meta = with_label_settings(meta, settings)
    return ConfigurationSet.from_ase([atoms], metadata=[meta])


def submit_shell(process, index: int):
    import io

    from ase.io import write

    from aiida_alml.workflows.shell_base import ShellBaseWorkChain

    shell = process.inputs.shell
    buffer = io.StringIO()
    atoms = process.inputs.structures.get_atoms(index)
    atoms.calc = None
    write(buffer, atoms, format=shell.geometry_format.value)
    filename = shell.geometry_filename.value
    geometry = orm.SinglefileData(io.BytesIO(buffer.getvalue().encode()), filename=filename)
    options = shell.options.get_dict() if 'options' in shell else {}
    # ShellJob fails with exit status 410 on any stderr output; many programs print warnings there.
    options.setdefault('redirect_stderr', True)
    options.setdefault('resources', {'num_machines': 1})
    inputs = {
        'code': shell.code,
        # aiida-shell replaces {geometry} by the file name of the node passed under `nodes['geometry']`.
        'arguments': shell.arguments,
        'nodes': {'geometry': geometry},
        'filenames': {'geometry': filename},
        'outputs': orm.List([shell.output_filename.value]),
        'metadata': {'options': options},
    }
    return submit_once(process, ShellBaseWorkChain, **base_inputs(
        'shell', inputs, process.inputs.max_relaunches, f'shell_{index}'))


def collect_shell(process, node, index: int):
    job = last_job(node)  # the ShellJob that ran last under alml.shell.base
    output = ShellJobOutput.output_file(job, process.inputs.shell.output_filename.value)
    if output is None:
        return {'pk': job.pk, 'exit_status': None, 'message': 'no output file'}
    return parse_shell_labels(output, process.inputs.shell.output_format,
                              metadata={'call_link_label': f'parse_{index}'})


class ShellJobOutput:
    """Where aiida-shell puts an output file: a SinglefileData under its name with non-word characters as ``_``."""

    @staticmethod
    def output_file(node, filename: str):
        from aiida_shell.parsers.shell import ShellParser

        label = ShellParser.format_link_label(filename)
        return node.outputs[label] if label in node.outputs else None
