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
    'ENTRY_POINT_GROUP', 'FIXED_KWARGS', 'KNOWN_CALCULATORS', 'KWARG_RULES', 'SCF_RETRIES', 'CalculatorSpecError',
    'accepted_kwargs', 'available_calculators', 'build_calculator', 'calculator_kwargs', 'resolve_calculator',
    'scf_retries', 'validate_spec',
)

#: Short names for calculators that need no external program: ASE's analytic potentials and tblite's GFN-xTB
#: (tight binding, in-process through its Python library).
KNOWN_CALCULATORS = {
    'emt': 'ase.calculators.emt:EMT',
    'lj': 'ase.calculators.lj:LennardJones',
    'morse': 'ase.calculators.morse:MorsePotential',
    'gfn2-xtb': 'tblite.ase:TBLite',
    'gfn1-xtb': 'tblite.ase:TBLite',
}

#: Keyword arguments a short name fixes: the method of an xTB name, and tblite's console output (off).
FIXED_KWARGS = {
    'gfn2-xtb': {'method': 'GFN2-xTB', 'verbosity': 0},
    'gfn1-xtb': {'method': 'GFN1-xTB', 'verbosity': 0},
}

#: The keyword arguments an xTB name takes, each with its type and range (or choices). Others of tblite's are refused:
#: ``xtb_config`` reads a parameter file, ``method`` is fixed by the name, ``solvation`` and ``electric_field`` change
#: the physics beyond what a label's settings record.
_XTB_KWARGS = {
    'accuracy': (float, 1e-4, 1e3),  # tblite's numerical accuracy (smaller: tighter); default 1
    'electronic_temperature': (float, 1.0, 1e5),  # K, Fermi smearing; default 300 K
    'max_iterations': (int, 1, 10_000),  # SCF cycles; default 250
    'charge': (int, -100, 100),  # total charge of the cell, e
    'multiplicity': (int, 1, 101),  # 2S + 1
    'mixer_damping': (float, 1e-3, 1.0),  # Broyden damping; default 0.4
    'guess': (('sad', 'eeq'), None, None),  # initial charges: superposition of atomic densities or EEQ charges
}
KWARG_RULES = {'gfn2-xtb': _XTB_KWARGS, 'gfn1-xtb': _XTB_KWARGS}

#: When the SCF of a configuration does not converge, it is tried again with these changes, one after the other:
#: stronger damping with twice the SCF cycles, then EEQ charges as the start with four times the cycles (a factor of
#: the given ``max_iterations``, tblite's 250 by default). They change the path to the SCF solution, not the solution
#: (the label settings stay those given).
SCF_RETRIES = {
    'gfn2-xtb': ({'mixer_damping': 0.2, 'max_iterations': 2}, {'mixer_damping': 0.1, 'guess': 'eeq', 'max_iterations': 4}),
    'gfn1-xtb': ({'mixer_damping': 0.2, 'max_iterations': 2}, {'mixer_damping': 0.1, 'guess': 'eeq', 'max_iterations': 4}),
}
#: Keys of a retry that multiply the given value (or tblite's default) instead of replacing it.
_SCALED = {'max_iterations': 250}

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
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except ImportError as exception:
            raise CalculatorSpecError(
                f'calculator {name!r} needs the Python package {module_name.split(".")[0]!r}, which cannot be '
                f'imported here ({exception})'
            ) from exception
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
    rules = KWARG_RULES.get(str(spec['name']).lower())
    accepted = sorted(rules) if rules is not None else accepted_kwargs(cls)
    unknown = sorted(set(spec.get('kwargs', {})) - set(accepted))
    if unknown:
        hint = did_you_mean(unknown[0], accepted)
        raise CalculatorSpecError(
            f'calculator {spec["name"]!r} does not take kwargs {unknown}{hint}; it takes {", ".join(accepted) or "none"}'
        )
    if rules is not None:
        for key, value in spec.get('kwargs', {}).items():
            if (problem := _kwarg_problem(value, *rules[key])):
                raise CalculatorSpecError(f'calculator {spec["name"]!r}: kwargs[{key!r}] {problem}')
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


def _kwarg_problem(value, kind, low, high) -> str | None:
    """Why ``value`` is not of ``kind`` (a type, or a tuple of choices) within [low, high], or None."""
    if isinstance(kind, tuple):
        return None if value in kind else f'must be one of {list(kind)}, got {value!r}'
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or (kind is int and float(value) != int(value)):
        return f'must be {"a whole number" if kind is int else "a number"}, got {value!r}'
    if not low <= value <= high:
        return f'must be within [{low:g}, {high:g}], got {value!r}'
    return None


def calculator_kwargs(spec: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments the calculator of ``spec`` is built with: those a short name fixes, then the given."""
    return {**FIXED_KWARGS.get(str(spec['name']).lower(), {}), **spec.get('kwargs', {})}


def build_calculator(spec: dict[str, Any], properties: list[str]):
    """The calculator of ``spec``, checked first, with the keyword arguments its name fixes."""
    return validate_spec(spec, properties)(**calculator_kwargs(spec))


def scf_retries(spec: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """The changes to try, in order, when the SCF of a configuration does not converge (none for other names), with
    the cycle counts worked out from the given ``max_iterations``."""
    given = spec.get('kwargs', {})
    return tuple(
        {key: value * given.get(key, _SCALED[key]) if key in _SCALED else value for key, value in retry.items()}
        for retry in SCF_RETRIES.get(str(spec['name']).lower(), ())
    )
