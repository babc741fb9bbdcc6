"""aiida-alml: active learning of machine-learning interatomic potentials with AiiDA provenance.

This package root imports nothing from AiiDA on purpose: the scripts in :mod:`aiida_alml.engines` run on
compute nodes where only ase/torch/mace/numpy are guaranteed to be installed.
"""

__version__ = '0.1.0'
