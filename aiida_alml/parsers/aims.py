"""Parser of ``alml.aims``: aims.out (+ stderr, scheduler output) into labels, parameters and exit codes."""

from __future__ import annotations

import re

import numpy as np
from aiida import orm
from aiida.parsers import Parser

from aiida_alml.engines.aims_output import AimsOutput, parse_aims_output

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


class AimsParser(Parser):
    """Turn aims.out into ``output_parameters``, ``forces``, ``stress``, ``labelled`` and ``output_structure``.

    The label energy is FHI-aims' "Electronic free energy": with occupation smearing it is the energy the printed
    forces (and stress) are derivatives of, so energy and forces of one configuration are consistent.
    """

    def parse(self, **kwargs):
        retrieved = self.retrieved
        names = set(retrieved.base.repository.list_object_names())
        stderr = self._read(retrieved, 'aims.err', names)
        scheduler_stderr = self._read(retrieved, '_scheduler-stderr.txt', names)
        scheduler_stdout = self._read(retrieved, '_scheduler-stdout.txt', names)
        diagnostics = '\n'.join((stderr, scheduler_stderr, scheduler_stdout))

        species = _SPECIES_PATTERNS.search(diagnostics)
        if species:
            return self.exit_codes.ERROR_MISSING_SPECIES.format(detail=species.group(1) or species.group(2))
        if 'aims.out' not in names:
            return self._failure_from_diagnostics(diagnostics, None) or self.exit_codes.ERROR_OUTPUT_MISSING

        text = retrieved.base.repository.get_object_content('aims.out')
        out = parse_aims_output(text)
        species = _SPECIES_PATTERNS.search(text)
        if species and not out.completed:
            return self.exit_codes.ERROR_MISSING_SPECIES.format(detail=species.group(1) or species.group(2))

        self.out('output_parameters', orm.Dict(self._output_parameters(out)))
        if not out.completed:
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
        self.out('labelled', self._labelled(structure, last.free_energy, last.forces, stress_voigt, out))
        return None

    # ------------------------------------------------------------------ helpers
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

    def _labelled(self, structure, energy, forces, stress_voigt, out: AimsOutput):
        from ase.calculators.singlepoint import SinglePointCalculator

        from aiida_alml.data.configurations import ConfigurationSet

        atoms = structure.get_ase()
        results = {'energy': energy, 'forces': np.asarray(forces)}
        if stress_voigt is not None and all(atoms.pbc):
            results['stress'] = np.asarray(stress_voigt)
        atoms.calc = SinglePointCalculator(atoms, **results)
        metadata = {
            'source_calc_uuid': self.node.uuid,
            'labeller': 'fhi-aims',
            'fhi_aims_version': out.version,
            'label_settings': label_settings(self.node),
        }
        return ConfigurationSet.from_ase([atoms], metadata=[metadata])


def label_settings(node) -> dict:
    """The settings that make labels of different calculations comparable (or not), from a calculation's inputs.

    Two labels may only be merged into one training set when these agree: exchange-correlation functional, treatment
    of relativity, occupation smearing, spin, and the species defaults (directory, or per-element file hashes).
    """
    import hashlib

    params = node.inputs.parameters.get_dict()
    settings = {
        'xc': params.get('xc'),
        'relativistic': params.get('relativistic'),
        'occupation_type': params.get('occupation_type'),
        'spin': params.get('spin', 'none'),
        'many_body_dispersion': params.get('many_body_dispersion'),
        'vdw_correction_hirshfeld': params.get('vdw_correction_hirshfeld'),
    }
    if 'species_dir' in node.inputs:
        settings['species_dir'] = node.inputs.species_dir.value
    if 'species' in node.inputs:
        folder = node.inputs.species
        settings['species_hashes'] = {
            name: hashlib.sha256(folder.base.repository.get_object_content(name, mode='rb')).hexdigest()[:16]
            for name in sorted(folder.base.repository.list_object_names())
        }
    return settings
