"""A full working directory (no space left, or over quota): what the engines do and how the parsers recognise it.

No AiiDA import here (the engines run on the compute node). An engine that cannot write its outputs removes what
it wrote of them (freeing that space), prints one line starting with :data:`DISK_FULL_MARKER` and exits with
:data:`EXIT_DISK_FULL`; a parser that finds the marker, or the usual messages of programs we do not control
(``mace_run_train``), fails with its ``ERROR_DISK_FULL`` exit code instead of a missing-output error.
"""

from __future__ import annotations

import errno
import os

__all__ = ('DISK_FULL_MARKER', 'EXIT_DISK_FULL', 'disk_full_line', 'exit_disk_full', 'is_disk_full')

#: Exit status of an engine whose outputs did not fit (sysexits' EX_CANTCREAT: "can't create output file").
EXIT_DISK_FULL = 73
DISK_FULL_MARKER = 'ALML_DISK_FULL'
# What other programs print when a write fails for lack of space: the OS messages (ENOSPC, EDQUOT) and torch.save's
# zip writer, which reports a short write as "unexpected pos" (checked with mace_run_train on a full tmpfs).
_SIGNS = (DISK_FULL_MARKER, 'No space left on device', 'Disk quota exceeded', '[Errno 28]', '[Errno 122]',
          'unexpected pos')


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is a write that failed for lack of space or quota."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def exit_disk_full(program: str, error: OSError, partial_outputs: list[str]) -> int:
    """Remove ``partial_outputs``, print the marker line on stdout and return :data:`EXIT_DISK_FULL`."""
    for path in partial_outputs:
        try:
            os.remove(path)
        except FileNotFoundError:
            continue
    try:
        print(f'{DISK_FULL_MARKER} {program}: the working directory is full, outputs not written: {error}', flush=True)
    except OSError:
        pass  # not even this line fits: the parser finds no output at all and says so
    return EXIT_DISK_FULL


def disk_full_line(*texts: str) -> str | None:
    """The first line of ``texts`` (engine output, logs) that says a write failed for lack of space, or None."""
    for text in texts:
        for line in text.splitlines():
            if any(sign in line for sign in _SIGNS):
                return line.strip()
    return None
