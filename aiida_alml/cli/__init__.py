"""The ``aiida-alml`` command line (verdi conventions: ``-p/--profile`` selects the profile)."""

from __future__ import annotations

import click

from aiida_alml.cli.campaign import compare, launch, plot, status
from aiida_alml.cli.demo import demo
from aiida_alml.cli.inspect import export, lineage
from aiida_alml.cli.setup import allow_labeller, setup


@click.group(context_settings={'help_option_names': ['-h', '--help']})
def cli():
    """Active learning of machine-learning interatomic potentials with AiiDA provenance."""


for command in (setup, allow_labeller, demo, launch, status, plot, compare, lineage, export):
    cli.add_command(command)
