"""What the shell labeller (aiida-shell's ``ShellJob``, one per configuration) may run and which files it may touch.

The shell labeller runs whatever its code node runs, with the arguments the campaign gives. A campaign file is data
(docs/security.md), so the code must have been declared a reference program by whoever administers the profile: the
extra :data:`LABELLER_EXTRA` set to true on the code node (``aiida-alml allow-labeller CODE``). The project's own
programs (``alml-train``, ``alml-md``, ``alml-label``) and codes of other calculation plugins never qualify: given
free arguments, ``alml-train`` would train on any file or load any model. File names are plain names inside the job
folder (aiida-shell joins them to its sandbox, so ``../x`` would write or retrieve a file outside it).
"""

from __future__ import annotations

import pathlib
import re
import string

__all__ = ('GEOMETRY_PLACEHOLDER', 'LABELLER_EXTRA', 'OWN_PROGRAMS', 'allow_labeller', 'plain_file_name_problem',
           'shell_label_problem')

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


def shell_label_problem(inputs, options_problem) -> str | None:
    """What makes the ``shell`` inputs of ``alml.label`` unfit, or None; ``options_problem`` checks job options."""
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

        return options_problem(ShellJob, shell['options'], 'shell.options', code)
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
