"""Following a submitted process from the command line: one progress line whenever what is shown changes."""

from __future__ import annotations

import time
from collections.abc import Callable

import click

__all__ = ('follow',)


def follow(
    node,
    describe: Callable[[object], str],
    final: Callable[[object], str],
    *,
    interval: float,
    timeout: float | None,
    noun: str,
    watch_with: str,
) -> None:
    """Print ``describe(node)`` whenever it changes and ``final(node)`` once the process has terminated.

    After ``timeout`` seconds (None: no limit) give up with a ClickException naming ``watch_with <pk>``, the command
    that follows the ``noun`` (process, campaign) from there.
    """
    start, last = time.monotonic(), None

    def echo(text: str) -> None:
        click.echo(f'  [{time.monotonic() - start:7.1f} s] {text}')

    while not node.is_terminated:
        shown = describe(node)
        if shown != last:
            echo(shown)
            last = shown
        if timeout is not None and time.monotonic() - start > timeout:
            raise click.ClickException(f'{noun} {node.pk} still running after {timeout:.0f} s; '
                                       f'follow it with `{watch_with} {node.pk}`')
        time.sleep(interval)
    echo(final(node))
