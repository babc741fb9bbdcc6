"""Shared test helpers: the mock FHI-aims, recorded outputs, tiny MACE models, test calculators."""
