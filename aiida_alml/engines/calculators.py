"""Resolve a reference-calculator specification (``{'name': ..., 'kwargs': {...}}``) to an ASE calculator.

A specification is data (it comes from a campaign file), so a name can only pick a calculator that is already
installed and trusted: ASE's built-in calculators that run no external program, or a class an installed package
registers in the entry-point group ``alml.calculators``. Import paths (``package.module:Class``) are refused: they
would let a campaign file import any module and instantiate any class (``GULP(command=...)`` runs a shell command).
Calculators that run an external program (ASE's ``FileIOCalculator`` family) are refused even when registered: such a
program is configured as an AiiDA code (the ``aims`` or ``shell`` labeller). See docs/security.md.

Pure ASE: used by the ``alml-label`` engine on the compute node and by the CalcJob's input validation.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from aiida_alml.atoms.suggest import did_you_mean

__all__ = (
    'ENTRY_POINT_GROUP', 'KNOWN_CALCULATORS', 'CalculatorSpecError', 'accepted_kwargs', 'available_calculators',
    'build_calculator',
    'resolve_calculator', 'validate_spec',
)

#: Short names for ASE's built-in calculators that need no external program.
KNOWN_CALCULATORS = {
    'emt': 'ase.calculators.emt:EMT',
    'lj': 'ase.calculators.lj:LennardJones',
    'morse': 'ase.calculators.morse:MorsePotential',
}

#: Installed packages register further calculators here: ``name = 'package.module:Class'``.
ENTRY_POINT_GROUP = 'alml.calculators'

PROPERTIES = ('energy', 'forces', 'stress')


class CalculatorSpecError(ValueError):
    """The calculator specification cannot be turned into an ASE calculator."""


def _registered() -> dict[str, Any]:
    return {entry.name: entry for entry in entry_points(group=ENTRY_POINT_GROUP)}


def available_calculators() -> list[str]:
    """Every name a specification may use: the built-in short names and the registered ones."""
    return sorted(set(KNOWN_CALCULATORS) | set(_registered()))


def resolve_calculator(name: str) -> type:
    """The calculator class for a built-in short name or a name registered in ``alml.calculators``."""
    if not isinstance(name, str) or not name:
        raise CalculatorSpecError(f'calculator name must be a non-empty string, not {name!r}')
    registered = _registered()
    if name.lower() in KNOWN_CALCULATORS:
        module_name, _, class_name = KNOWN_CALCULATORS[name.lower()].partition(':')
        cls = getattr(importlib.import_module(module_name), class_name)
    elif name in registered:
        try:
            cls = registered[name].load()
        except (ImportError, AttributeError) as exception:
            raise CalculatorSpecError(
                f'calculator {name!r} is registered as {registered[name].value!r} but cannot be loaded ({exception})'
            ) from exception
    else:
        known = ', '.join(available_calculators())
        if ':' in name:
            raise CalculatorSpecError(
                f'calculator {name!r}: import paths are not accepted (they would let a campaign file run any code); '
                f'use one of {known}, or register the class in the entry-point group {ENTRY_POINT_GROUP!r} of an '
                'installed package (docs/security.md)'
            )
        raise CalculatorSpecError(f'unknown calculator {name!r}: use one of {known}')
    if not isinstance(cls, type) or not hasattr(cls, 'get_potential_energy'):
        raise CalculatorSpecError(f'calculator {name!r} is not an ASE calculator class')
    from ase.calculators.calculator import FileIOCalculator
    from ase.calculators.genericfileio import GenericFileIOCalculator

    if issubclass(cls, (FileIOCalculator, GenericFileIOCalculator)):
        raise CalculatorSpecError(
            f'calculator {name!r} runs an external program: configure that program as an AiiDA code instead '
            '(labeller aims or shell; docs/security.md)'
        )
    return cls


#: Keyword arguments of ASE's ``Calculator`` base class that read or write files (``restart`` reads a results file,
#: ``directory`` and ``label`` choose where files go) or take objects: never from a campaign file.
_BASE_KWARGS = frozenset({'restart', 'ignore_bad_restart_file', 'label', 'atoms', 'directory', 'command', 'profile'})
_PLAIN = (type(None), bool, int, float, str, list, tuple, dict)


def accepted_kwargs(cls: type) -> list[str]:
    """The keyword arguments a specification may give ``cls``: its parameters, not the base class's file handling.

    ASE calculators take their physical parameters through ``**kwargs`` into ``default_parameters`` and silently keep
    a misspelt one (``LennardJones(sigmaa=2)`` labels with sigma 1), so only the keys of ``default_parameters`` and the
    named arguments of the class's own ``__init__`` whose defaults are plain values are accepted.
    """
    import inspect

    names = set(getattr(cls, 'default_parameters', {}) or {})
    for klass in cls.__mro__:
        if klass.__module__.startswith('ase.calculators.calculator') or '__init__' not in vars(klass):
            continue
        for parameter in inspect.signature(klass.__init__).parameters.values():
            if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY) \
                    and parameter.name != 'self' and isinstance(parameter.default, _PLAIN):
                names.add(parameter.name)
    return sorted(names - _BASE_KWARGS)


def validate_spec(spec: dict[str, Any], properties: list[str]) -> type:
    """Check a specification and the requested properties; return the calculator class."""
    unknown = set(spec) - {'name', 'kwargs'}
    if unknown:
        raise CalculatorSpecError(f'calculator has unknown keys {sorted(unknown)}: only name and kwargs are allowed')
    if 'name' not in spec:
        raise CalculatorSpecError(f"calculator needs a 'name': one of {', '.join(available_calculators())}")
    if not isinstance(spec.get('kwargs', {}), dict):
        raise CalculatorSpecError('calculator kwargs must be a dictionary of keyword arguments')
    cls = resolve_calculator(spec['name'])
    unknown = sorted(set(spec.get('kwargs', {})) - set(accepted_kwargs(cls)))
    if unknown:
        hint = did_you_mean(unknown[0], accepted_kwargs(cls))
        raise CalculatorSpecError(
            f'calculator {spec["name"]!r} does not take kwargs {unknown}{hint}; it takes '
            f'{", ".join(sorted(accepted_kwargs(cls))) or "none"}'
        )
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
