"""Plain data and helpers without AiiDA: the :class:`~aiida_alml.atoms.configurations.Configurations` arrays and
extended-XYZ I/O, random perturbations of structures, did-you-mean suggestions for unknown names.

The compute-node engines (:mod:`aiida_alml.engines`) import this package, so nothing here may import AiiDA.
"""
