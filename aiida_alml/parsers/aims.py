"""Parser of ``alml.aims``: aims.out (+ stderr, scheduler output) into labels, parameters and exit codes."""

from __future__ import annotations

import re

import numpy as np
from aiida import orm

from aiida_alml.calculations.aims import SPECIES_DIGEST_FILE
from aiida_alml.formats.aims_output import AimsOutput, parse_aims_output
from aiida_alml.parsers.interruption import SCHEDULER_STDERR, SCHEDULER_STDOUT, InterruptionAwareParser

__all__ = ('AimsParser',)

# Messages of the scheduler, MPI, the OS and the Fortran runtime when memory runs out.
_MEMORY_PATTERNS = re.compile(
    r'out of memory|oom[-_ ]kill|cannot allocate memory|std::bad_alloc|memory allocation fail|'
    r'allocation of .* failed|exceeded (job )?memory limit',
    re.IGNORECASE,
)
# SLURM (and most MPI launchers) when the walltime runs out; FHI-aims' own `walltime` keyword stop.
_WALLTIME_PATTERNS = re.compile(r'DUE TO TIME LIMIT|walltime limit|time limit exceeded|wall ?clock limit', re.IGNORECASE)
# FHI-aims reading a geometry.in species with no species block in control.in.
_SPECIES_PATTERNS = re.compile(r'ALML-MISSING-SPECIES: (\S+)|[Ss]pecies\s+(\S+)\s.*(?:not defined|not found|missing)')

#: Exit status AiiDA's scheduler plugins set for a job killed at the walltime.
SCHEDULER_OUT_OF_WALLTIME = 120
SCHEDULER_OUT_OF_MEMORY = 110


class AimsParser(InterruptionAwareParser):
    """Turn aims.out into ``output_parameters``, ``forces``, ``stress``, ``labelled`` and ``output_structure``.

    The label energy is FHI-aims' "Electronic free energy": with occupation smearing it is the energy the printed
    forces (and stress) are derivatives of, so energy and forces of one configuration are consistent.
    """

    def parse_job(self, **kwargs):
        retrieved = self.retrieved
        names = set(retrieved.base.repository.list_object_names())
        stderr = self._read(retrieved, 'aims.err', names)
        scheduler_stderr = self._read(retrieved, SCHEDULER_STDERR, names)
        scheduler_stdout = self._read(retrieved, SCHEDULER_STDOUT, names)
        diagnostics = '\n'.join((stderr, scheduler_stderr, scheduler_stdout))

        species = _SPECIES_PATTERNS.search(diagnostics)
        if species:
            return self.exit_codes.ERROR_MISSING_SPECIES.format(detail=species.group(1) or species.group(2))
        if 'aims.out' not in names:
            self._attach_restart_structure(retrieved, names)
            return self._failure_from_diagnostics(diagnostics, None) or self.exit_codes.ERROR_OUTPUT_MISSING

        text = retrieved.base.repository.get_object_content('aims.out')
        out = parse_aims_output(text)
        species = _SPECIES_PATTERNS.search(text)
        if species and not out.completed:
            return self.exit_codes.ERROR_MISSING_SPECIES.format(detail=species.group(1) or species.group(2))

        self.out('output_parameters', orm.Dict(self._output_parameters(out)))
        if not out.completed:
            self._attach_restart_structure(retrieved, names)
            failure = self._failure_from_diagnostics(diagnostics + '\n' + text[-4000:], out)
            if failure is not None:
                return failure
            if out.scf_failed:
                return self.exit_codes.ERROR_SCF_NOT_CONVERGED
            return self.exit_codes.ERROR_OUTPUT_INCOMPLETE
        if out.scf_failed or not out.scf_converged:
            return self.exit_codes.ERROR_SCF_NOT_CONVERGED

        last = out.last
        if last is None or last.forces is None or not len(last.forces):
            return self.exit_codes.ERROR_MISSING_FORCES
        structure = self._final_structure(out)
        if len(last.forces) != len(structure.sites):
            return self.exit_codes.ERROR_INCONSISTENT_OUTPUT.format(
                detail=f'{len(last.forces)} force rows for {len(structure.sites)} atoms'
            )
        problem = self._geometry_problem(out)
        if problem:
            return self.exit_codes.ERROR_GEOMETRY_MISMATCH.format(detail=problem)
        forces = orm.ArrayData()
        forces.set_array('forces', last.forces)
        self.out('forces', forces)
        stress_voigt = None
        if last.stress is not None:
            stress = orm.ArrayData()
            stress.set_array('stress', last.stress)
            self.out('stress', stress)
            s = last.stress
            stress_voigt = [s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]]
        if out.is_relaxation and out.final_structure:
            self.out('output_structure', structure)
        species_digests = _species_digests(self._read(retrieved, SPECIES_DIGEST_FILE, names))
        labelled = self._labelled(structure, last.free_energy, last.forces, stress_voigt, out, species_digests)
        self.out('labelled', labelled)
        return None

    # ------------------------------------------------------------------ helpers
    def _attach_restart_structure(self, retrieved, names: set) -> None:
        """A relaxation stopped before its end: the last geometry FHI-aims wrote (``geometry.in.next_step``) as the
        output ``restart_structure``, the geometry to continue from (``alml.aims.base`` restarts from it)."""
        from aiida_alml.formats.aims_input import AimsInputError, read_geometry_in

        if 'relax_geometry' not in self.node.inputs.parameters.get_dict() or 'geometry.in.next_step' not in names:
            return
        try:
            symbols, positions, cell = read_geometry_in(
                retrieved.base.repository.get_object_content('geometry.in.next_step')
            )
        except (AimsInputError, ValueError, IndexError) as exception:
            self.logger.warning(f'geometry.in.next_step is not a readable geometry ({exception}): no restart_structure')
            return
        original = self.node.inputs.structure
        if len(symbols) != len(original.sites):
            self.logger.warning(f'geometry.in.next_step has {len(symbols)} atoms, the input {len(original.sites)}: '
                                'no restart_structure')
            return
        structure = orm.StructureData(cell=cell or original.cell, pbc=original.pbc)
        for symbol, position in zip(symbols, positions):
            structure.append_atom(position=position, symbols=symbol)
        self.out('restart_structure', structure)

    @staticmethod
    def _read(retrieved, name: str, names: set) -> str:
        return retrieved.base.repository.get_object_content(name) if name in names else ''

    def _failure_from_diagnostics(self, diagnostics: str, out: AimsOutput | None):
        """Exit code for a run the machine stopped (walltime, memory), from what it and the scheduler said."""
        status = self.node.exit_status
        if status == SCHEDULER_OUT_OF_WALLTIME or _WALLTIME_PATTERNS.search(diagnostics):
            return self.exit_codes.ERROR_OUT_OF_WALLTIME
        match = _MEMORY_PATTERNS.search(diagnostics)
        if match:
            return self.exit_codes.ERROR_OUT_OF_MEMORY.format(detail=match.group(0))
        if status == SCHEDULER_OUT_OF_MEMORY:
            return self.exit_codes.ERROR_OUT_OF_MEMORY.format(detail='reported by the scheduler')
        return None

    def _geometry_problem(self, out: AimsOutput) -> str | None:
        """Why the labels may not belong to the input geometry, or None.

        FHI-aims prints the geometry it read ("Input geometry") and every geometry it moves to later (relaxation, MD,
        socket-driver steps). The input one must be the input structure; for anything but a relaxation (whose labels
        are those of the relaxed geometry, ``output_structure``) no later geometry may differ from it either.
        """
        atoms = self.node.inputs.structure.get_ase()
        if not out.input_geometry or not out.input_geometry['positions']:
            return 'aims.out shows no "Input geometry" block to check the labelled positions against'
        problem = _geometry_difference(atoms, out.input_geometry, 'the input geometry FHI-aims read')
        if problem or out.is_relaxation:
            return problem
        for step, geometry in enumerate(out.later_geometries, start=1):
            problem = _geometry_difference(
                atoms, geometry, f'geometry {step} FHI-aims moved to (MD, relaxation or socket-driver keywords?)'
            )
            if problem:
                return problem
        return None

    def _final_structure(self, out: AimsOutput) -> orm.StructureData:
        """The geometry the last forces belong to: the relaxed one for a relaxation, else the input."""
        structure = self.node.inputs.structure
        if not (out.is_relaxation and out.final_structure and out.final_structure['positions']):
            return structure
        final = out.final_structure
        cell = final['cell'] if final['cell'] else structure.cell
        relaxed = orm.StructureData(cell=cell, pbc=structure.pbc)
        for symbol, position in zip(final['symbols'], final['positions']):
            relaxed.append_atom(position=position, symbols=symbol)
        return relaxed

    def _output_parameters(self, out: AimsOutput) -> dict:
        last = out.last
        params = {
            'completed': out.completed,
            'fhi_aims_version': out.version,
            'build': out.build,
            'build_features': out.build_features,
            'num_tasks': out.num_tasks,
            'num_atoms': out.num_atoms,
            'num_electrons': out.num_electrons,
            'num_spin_channels': out.num_spin_channels,
            'scf_converged': bool(out.scf_converged and not out.scf_failed),
            'scf_iterations': out.scf_iterations,
            'scf_cycles': out.scf_cycles,
            'num_force_evaluations': len(out.evaluations),
            'is_relaxation': out.is_relaxation,
            'fermi_energy': out.fermi_energy,
            'magnetic_moment': out.magnetic_moment,
            'hirshfeld_charges': out.hirshfeld_charges,
            'hirshfeld_volumes': out.hirshfeld_volumes,
            'hirshfeld_spin_moments': out.hirshfeld_spin_moments or None,
            'timings': out.timings,
            'wall_time_s': out.timings.get('total_time', {}).get('wall_s'),
            'warnings': out.warnings,
            'energy_units': 'eV',
        }
        if last is not None:
            params.update(
                total_energy=last.total_energy,
                corrected_energy=last.corrected_energy,
                free_energy=last.free_energy,
                stress_kind=last.stress_kind,
            )
        return params

    def _labelled(self, structure, energy, forces, stress_voigt, out: AimsOutput, species_digests: dict):
        from ase.calculators.singlepoint import SinglePointCalculator

        from aiida_alml.data.configurations import ConfigurationSet
        from aiida_alml.label_settings import with_label_settings

        atoms = structure.get_ase()
        results = {'energy': energy, 'forces': np.asarray(forces)}
        if stress_voigt is not None and all(atoms.pbc):
            results['stress'] = np.asarray(stress_voigt)
        atoms.calc = SinglePointCalculator(atoms, **results)
        metadata = {'source_calc_uuid': self.node.uuid, 'labeller': 'fhi-aims', 'fhi_aims_version': out.version}
        metadata = with_label_settings(metadata, label_settings(self.node, out.version, species_digests))
        return ConfigurationSet.from_ase([atoms], metadata=[metadata])


#: Largest distance (Å) between an input position and the one FHI-aims printed (8 decimals) for the same atom.
POSITION_TOLERANCE = 1e-4


def label_settings(node, fhi_aims_version: str | None = None, species_digests: dict | None = None) -> dict:
    """Everything that decides the labels of an ``alml.aims`` calculation, from its inputs (see label_settings.py).

    The code (``label@computer``) and calculation plugin, the FHI-aims version, every control.in keyword except those
    that only steer the SCF (:data:`~aiida_alml.formats.aims_input.SCF_PATH_KEYWORDS`): functional, relativity,
    smearing, spin, charge, ``sc_accuracy_*``, dispersion, ...; the k-point mesh (``k_grid``, ``k_offset``) and the
    SHA-256 of each species file used (``species_hashes``: uploaded ``species`` files, or the ``species_dir`` files
    hashed by the job script). Only when the contents are unknown is the ``species_dir`` path recorded instead.
    """
    import hashlib

    from aiida_alml.formats.aims_input import result_keywords, species_filename

    params = node.inputs.parameters.get_dict()
    code = node.inputs.code
    settings = {
        'labeller': 'fhi-aims',
        'code': code.full_label,
        'plugin': node.process_type.rsplit(':', 1)[-1],
        'fhi_aims_version': fhi_aims_version,
        **result_keywords(params),
    }
    if 'kpoints' in node.inputs:
        mesh, offset = node.inputs.kpoints.get_kpoints_mesh()
    else:
        # The mesh given as keywords ('4 4 4' or [4, 4, 4]) is recorded like one from the `kpoints` input.
        mesh, offset = params.get('k_grid'), params.get('k_offset')
    if mesh is not None:
        settings['k_grid'] = [int(n) for n in (mesh.split() if isinstance(mesh, str) else mesh)]
        offset = [float(x) for x in ((offset.split() if isinstance(offset, str) else offset) or [])]
        settings.pop('k_offset', None)
        if any(offset):
            settings['k_offset'] = offset
    used = {species_filename(number) for number in node.inputs.structure.get_ase().numbers}
    if 'species' in node.inputs:
        folder = node.inputs.species
        species_digests = {
            name: hashlib.sha256(folder.base.repository.get_object_content(name, mode='rb')).hexdigest()
            for name in used
        }
    if species_digests and used <= set(species_digests):
        settings['species_hashes'] = {name: species_digests[name] for name in sorted(used)}
    elif 'species_dir' in node.inputs:
        settings['species_dir'] = node.inputs.species_dir.value
    return settings


def _species_digests(text: str) -> dict:
    """File name -> SHA-256 from ``sha256sum`` output lines (``<hex>  <path>``, or ``<hex> *<path>``)."""
    digests = {}
    for line in text.splitlines():
        parts = line.split(maxsplit=1)
        if len(parts) == 2 and re.fullmatch(r'[0-9a-f]{64}', parts[0]):
            digests[parts[1].lstrip('*').rsplit('/', 1)[-1]] = parts[0]
    return digests


def _geometry_difference(atoms, printed: dict, what: str) -> str | None:
    """How ``printed`` (a geometry from aims.out) differs from ``atoms`` beyond :data:`POSITION_TOLERANCE`, or None.

    Positions of a periodic cell are compared modulo its lattice vectors, in case FHI-aims wrapped an atom back
    into the cell.
    """
    symbols = list(atoms.get_chemical_symbols())
    if len(printed['positions']) != len(symbols):
        return f'{what} has {len(printed["positions"])} atoms, the input structure {len(symbols)}'
    if list(printed['symbols']) != symbols:
        index = next(i for i, (a, b) in enumerate(zip(printed['symbols'], symbols)) if a != b)
        return f'atom {index} is {printed["symbols"][index]} in {what} but {symbols[index]} in the input structure'
    periodic = bool(atoms.pbc.all())
    cell = atoms.cell.array
    if printed['cell'] is not None and not periodic:
        return f'{what} has a unit cell but the input structure is not periodic'
    if printed['cell'] is not None:
        deviation = np.abs(np.asarray(printed['cell']) - cell).max()
        if deviation > POSITION_TOLERANCE:
            return f'the cell of {what} differs from the input cell (largest difference {deviation:.3g} Å)'
    elif periodic and what.startswith('the input'):
        return f'{what} has no unit cell but the input structure is periodic'
    shift = np.asarray(printed['positions'], dtype=float) - atoms.positions
    if periodic:
        fractional = np.linalg.solve(cell.T, shift.T).T
        shift = (fractional - np.round(fractional)) @ cell
    distance = np.linalg.norm(shift, axis=1)
    worst = int(np.argmax(distance))
    if distance[worst] > POSITION_TOLERANCE:
        labelled = np.round(printed['positions'][worst], 6).tolist()
        given = np.round(atoms.positions[worst], 6).tolist()
        return (
            f'atom {worst} ({symbols[worst]}) is at {labelled} Å in {what} but at {given} Å in the input structure '
            f'({distance[worst]:.3g} Å apart, tolerance {POSITION_TOLERANCE} Å)'
        )
    return None
