"""aiida-alml: active learning of machine-learning interatomic potentials with AiiDA provenance.

This package root imports nothing from AiiDA on purpose: the scripts in :mod:`aiida_alml.engines` run on
compute nodes where only ase/torch/mace/numpy are guaranteed to be installed. :func:`committee_calculator` (an ASE
calculator for a campaign's committee, :mod:`aiida_alml.calculator`) is imported on first use.
"""

__version__ = '0.1.0'

__all__ = ('committee_calculator',)


def __getattr__(name):
    if name == 'committee_calculator':
        from aiida_alml.calculator import committee_calculator

        return committee_calculator
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
