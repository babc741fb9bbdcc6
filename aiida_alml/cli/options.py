"""Options shared by the ``aiida-alml`` commands (verdi conventions)."""

from __future__ import annotations

import click

PROFILE = click.option(
    '-p', '--profile', 'profile_name', default=None, help='AiiDA profile to use (default: the default profile).'
)


def load_profile(profile_name: str | None):
    """Load the profile named on the command line, with a clear message when there is none."""
    from aiida import load_profile as aiida_load_profile
    from aiida.common.exceptions import ConfigurationError

    try:
        return aiida_load_profile(profile_name, allow_switch=True)
    except ConfigurationError as exception:
        raise click.ClickException(f'{exception}\nCreate the embedded profile first with `aiida-alml setup`.')
