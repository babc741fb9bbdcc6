"""Resolve a reference-calculator specification (``{'name': ..., 'kwargs': {...}}``) to an ASE calculator.

Pure ASE: used by the ``alml-label`` engine on the compute node and by the CalcJob's input validation.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ('KNOWN_CALCULATORS', 'CalculatorSpecError', 'build_calculator', 'resolve_calculator', 'validate_spec')

#: Short names for ASE's built-in calculators that need no external program.
KNOWN_CALCULATORS = {
    'emt': 'ase.calculators.emt:EMT',
    'lj': 'ase.calculators.lj:LennardJones',
    'morse': 'ase.calculators.morse:MorsePotential',
}

PROPERTIES = ('energy', 'forces', 'stress')


class CalculatorSpecError(ValueError):
    """The calculator specification cannot be turned into an ASE calculator."""


def resolve_calculator(name: str) -> type:
    """Import the calculator class for a short name or a ``module:Class`` import path."""
    if not isinstance(name, str) or not name:
        raise CalculatorSpecError('calculator name must be a non-empty string')
    path = KNOWN_CALCULATORS.get(name.lower())
    if path is None:
        if ':' not in name:
            raise CalculatorSpecError(
                f'unknown calculator {name!r}: use one of {", ".join(sorted(KNOWN_CALCULATORS))} '
                "or an import path 'package.module:ClassName'"
            )
        path = name
    module_name, _, class_name = path.partition(':')
    try:
        module = importlib.import_module(module_name)
    except ImportError as exception:
        raise CalculatorSpecError(f'calculator import path {name!r}: cannot import module {module_name!r} ({exception})')
    try:
        cls = getattr(module, class_name)
    except AttributeError:
        raise CalculatorSpecError(f'calculator import path {name!r}: module {module_name!r} has no {class_name!r}')
    if not isinstance(cls, type) or not hasattr(cls, 'get_potential_energy'):
        raise CalculatorSpecError(f'calculator {name!r} is not an ASE calculator class')
    return cls


def validate_spec(spec: dict[str, Any], properties: list[str]) -> type:
    """Check a specification and the requested properties; return the calculator class."""
    unknown = set(spec) - {'name', 'kwargs'}
    if unknown:
        raise CalculatorSpecError(f'calculator has unknown keys {sorted(unknown)}: only name and kwargs are allowed')
    if 'name' not in spec:
        raise CalculatorSpecError("calculator needs a 'name' (e.g. 'emt' or 'package.module:ClassName')")
    if not isinstance(spec.get('kwargs', {}), dict):
        raise CalculatorSpecError('calculator kwargs must be a dictionary of keyword arguments')
    cls = resolve_calculator(spec['name'])
    if not properties:
        raise CalculatorSpecError(f'properties must name at least one of {PROPERTIES}')
    bad = [prop for prop in properties if prop not in PROPERTIES]
    if bad:
        raise CalculatorSpecError(f'properties {bad} are not supported: choose from {PROPERTIES}')
    if len(set(properties)) != len(properties):
        raise CalculatorSpecError(f'properties {properties} contain duplicates')
    implemented = getattr(cls, 'implemented_properties', None)
    if implemented is not None:
        missing = [prop for prop in properties if prop not in implemented]
        if missing:
            raise CalculatorSpecError(
                f'calculator {spec["name"]!r} cannot compute {missing}: it implements {sorted(implemented)}'
            )
    return cls


def build_calculator(spec: dict[str, Any], properties: list[str]):
    cls = validate_spec(spec, properties)
    return cls(**spec.get('kwargs', {}))
