"""The ``aiida-alml`` command line: ``setup`` the embedded profile, run the ``demo``."""

from __future__ import annotations

import click

from aiida_alml.cli.demo import demo
from aiida_alml.cli.setup import setup


@click.group(context_settings={'help_option_names': ['-h', '--help']})
def cli():
    """Active learning of machine-learning interatomic potentials with AiiDA provenance."""


cli.add_command(setup)
cli.add_command(demo)
