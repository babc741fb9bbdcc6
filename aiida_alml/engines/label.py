"""``alml-label``: label configurations with an ASE calculator on the compute node (no AiiDA import).

Reads ``structures.npz`` (a :class:`~aiida_alml.atoms.configurations.Configurations` archive) and ``calculator.json``,
evaluates each configuration, and writes ``labelled.npz`` (successes only, with their labels) and ``report.json``
(status, error, SCF retries, wall and CPU seconds per configuration). A configuration that fails is recorded and the
rest go on.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np

from aiida_alml.atoms.configurations import Configurations
from aiida_alml.engines.calculators import (
    CalculatorSpecError, calculator_kwargs, resolve_calculator, scf_retries, validate_spec,
)
from aiida_alml.engines.disk import exit_disk_full, is_disk_full

__all__ = ('label_configurations', 'main')


def _evaluate(atoms, calculator, properties: list[str]) -> dict[str, np.ndarray | float]:
    atoms.calc = calculator
    results: dict[str, np.ndarray | float] = {'energy': float(atoms.get_potential_energy())}
    if 'forces' in properties:
        results['forces'] = np.array(atoms.get_forces(), dtype=np.float64)
    if 'stress' in properties:
        results['stress'] = np.array(atoms.get_stress(voigt=True), dtype=np.float64)
    for name, value in results.items():
        if not np.all(np.isfinite(value)):
            raise FloatingPointError(f'{name} is not finite')
    return results


def _is_scf_failure(exception: Exception) -> bool:
    """tblite (through ASE) reports an SCF that did not converge as CalculationFailed('SCF not converged in N cycles')."""
    from ase.calculators.calculator import CalculationFailed

    return isinstance(exception, CalculationFailed) and 'not converged' in str(exception)


def label_configurations(configurations: Configurations, spec: dict, properties: list[str]):
    """Label every configuration; return (labelled successes or None, per-configuration records).

    A configuration whose SCF does not converge is tried again with each of :func:`scf_retries` in turn (every attempt
    recorded under ``attempts``); it fails only when they are exhausted. Each record has its wall and CPU seconds.
    """
    # Checked once (resolving a name reads the installed entry points); a bad specification fails the job here.
    cls, kwargs = validate_spec(spec, properties), calculator_kwargs(spec)
    retries = scf_retries(spec)
    records, labelled = [], []
    for index in range(len(configurations)):
        atoms = configurations.get_atoms(index)
        start, cpu_start = time.perf_counter(), time.process_time()
        attempts, results = [], None
        for rung in range(len(retries) + 1):
            changes = retries[rung - 1] if rung else {}
            # A new calculator for every configuration: tblite starts an SCF from the previous one's solution, which
            # moved forces by up to 1e-4 eV/Å, so that a frame's labels depended on the frames labelled before it.
            atoms.calc = None
            try:
                results = _evaluate(atoms, cls(**{**kwargs, **changes}), properties)
                break
            # A reference calculator can raise anything (SCF failure, missing parameters for an element, ...): one
            # bad configuration must not lose the others, so the error is recorded per configuration instead.
            except Exception as exception:  # noqa: BLE001
                attempts.append({'changes': changes, 'error': f'{type(exception).__name__}: {exception}'})
                if not _is_scf_failure(exception):
                    break
        record = {'index': index, 'status': 'ok' if results is not None else 'failed',
                  'wall_time': time.perf_counter() - start, 'cpu_time': time.process_time() - cpu_start}
        if results is None:
            record['error'] = attempts[-1]['error']
        if attempts:
            record['attempts'] = attempts
        records.append(record)
        if results is not None:
            labelled.append((index, atoms, results))
    if not labelled:
        return None, records
    images = []
    for index, atoms, results in labelled:
        atoms.info.clear()
        atoms.info['REF_energy'] = results['energy']
        if 'forces' in results:
            atoms.arrays['REF_forces'] = results['forces']
        if 'stress' in results:
            atoms.info['REF_stress'] = results['stress']
        atoms.calc = None
        images.append(atoms)
    metadata = [{'source_index': index} for index, _, _ in labelled]
    return Configurations.from_ase(images, metadata=metadata), records


def _package_version(cls: type) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    package = cls.__module__.split('.')[0]
    try:
        return {'name': package, 'version': version(package)}
    except PackageNotFoundError:
        return {'name': package, 'version': None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='alml-label', description=__doc__.splitlines()[0])
    parser.add_argument('--structures', default='structures.npz')
    parser.add_argument('--calculator', default='calculator.json', help='JSON: {"name": ..., "kwargs": {...}}')
    parser.add_argument('--properties', nargs='+', default=['energy', 'forces'])
    parser.add_argument('--output', default='labelled.npz')
    parser.add_argument('--report', default='report.json')
    args = parser.parse_args(argv)

    start = time.perf_counter()
    with open(args.calculator, encoding='utf-8') as handle:
        spec = json.load(handle)
    with open(args.structures, 'rb') as handle:
        configurations = Configurations.from_npz(handle)
    try:
        labelled, records = label_configurations(configurations, spec, args.properties)
    except CalculatorSpecError as exception:
        print(f'alml-label: {exception}', file=sys.stderr)
        return 2
    import ase

    calculator = resolve_calculator(spec['name'])
    report = {
        'calculator': spec,
        'properties': args.properties,
        'num_configurations': len(configurations),
        'num_succeeded': sum(record['status'] == 'ok' for record in records),
        'num_failed': sum(record['status'] != 'ok' for record in records),
        'configurations': records,
        'wall_time': time.perf_counter() - start,
        'cpu_time': sum(record['cpu_time'] for record in records),
        'ase_version': ase.__version__,
        # The package the calculator comes from, with its version (tblite's for xTB): part of the label settings.
        'calculator_package': _package_version(calculator),
        'hostname': platform.node(),
    }
    try:
        if labelled is not None:
            with open(args.output, 'wb') as handle:
                handle.write(labelled.to_npz_bytes())
        with open(args.report, 'w', encoding='utf-8') as handle:
            json.dump(report, handle, indent=1)
    except OSError as error:
        if not is_disk_full(error):
            raise
        return exit_disk_full('alml-label', error, [args.output, args.report])
    print(f'alml-label: {report["num_succeeded"]} labelled, {report["num_failed"]} failed in {report["wall_time"]:.2f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
