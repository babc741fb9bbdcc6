"""``alml.aims``: one FHI-aims single point (or relaxation) whose energy, forces and stress become labels."""

from __future__ import annotations

import shlex

from aiida import orm
from aiida.common.datastructures import CalcInfo, CodeInfo
from aiida.engine import CalcJob

from aiida_alml.calculations.base import define_interruption_exit_code
from aiida_alml.data.configurations import ConfigurationSet
from aiida_alml.formats.aims_input import (
    AimsInputError,
    electron_count,
    species_filename,
    validate_parameters,
    write_control_in,
    write_geometry_in,
)

__all__ = ('AimsCalculation', 'unchecked_keywords')

#: ``sha256sum`` of the species files taken from ``species_dir``, written by the job script (read by the parser).
SPECIES_DIGEST_FILE = 'species.sha256'
#: ELSI density-matrix restart files: what a run killed at the walltime leaves for the next one to start from.
RESTART_FILE_PATTERN = 'D_spin_*_kpt_*.csc'


def _structure_problem(structure: orm.StructureData) -> str | None:
    pbc = tuple(structure.pbc)
    if any(pbc) and not all(pbc):
        return f'structure: FHI-aims cells are periodic in all three directions or in none, got pbc={pbc}'
    for kind in structure.kinds:
        if kind.is_alloy or kind.has_vacancies:
            return f'structure: kind {kind.name!r} is an alloy or has vacancies; FHI-aims needs one element per site'
    if not structure.sites:
        return 'structure: has no atoms'
    return None


def _numbers(structure: orm.StructureData) -> list[int]:
    from ase.data import atomic_numbers

    kinds = {kind.name: kind.symbol for kind in structure.kinds}
    return [atomic_numbers[kinds[site.kind_name]] for site in structure.sites]


def unchecked_keywords(value) -> tuple[list[str], str | None]:
    """The names of ``unchecked_keywords`` (a List of keyword names), or why they are not names."""
    if value is None:
        return [], None
    names = value.get_list()
    if not all(isinstance(name, str) for name in names):
        return [], f'unchecked_keywords: give control.in keyword names (strings), got {names!r}'
    return names, None


def validate_inputs(inputs, namespace):
    """Check the whole input namespace before anything is written or submitted; the message names the input.

    When a work chain exposes these inputs without ``kpoints`` (``alml.aims.base`` makes the mesh itself), a periodic
    structure without k-points is that work chain's to refuse.
    """
    structure = inputs.get('structure')
    parameters = inputs.get('parameters')
    if structure is None or parameters is None:
        return None  # a missing required port is reported by the port itself
    problem = _structure_problem(structure)
    if problem:
        return problem
    periodic = all(structure.pbc)
    params = parameters.get_dict()
    unchecked, problem = unchecked_keywords(inputs.get('unchecked_keywords'))
    if problem:
        return problem
    try:
        validate_parameters(params, periodic, unchecked)
    except AimsInputError as exception:
        return str(exception)

    kpoints = inputs.get('kpoints')
    if periodic and kpoints is None and 'k_grid' not in params and 'kpoints' in namespace:
        return 'kpoints: a periodic structure needs k-points (the `kpoints` input or parameters[k_grid])'
    if kpoints is not None:
        if not periodic:
            return 'kpoints: given for a non-periodic structure'
        if 'k_grid' in params:
            return 'kpoints: conflicts with parameters[k_grid]; give only one'
        try:
            kpoints.get_kpoints_mesh()
        except AttributeError:
            return 'kpoints: FHI-aims takes a k-point mesh (k_grid), not an explicit list of k-points'

    numbers = _numbers(structure)
    charge = params.get('charge', 0.0)
    if electron_count(numbers, charge) < 0:
        return (
            f'parameters[charge]: a total charge of {charge} leaves {electron_count(numbers, charge)} electrons for '
            f'{sum(numbers)} protons; the electron count cannot be negative'
        )

    species, species_dir = inputs.get('species'), inputs.get('species_dir')
    if (species is None) == (species_dir is None):
        return 'species, species_dir: give exactly one source of species defaults'
    if species is not None:
        present = set(species.base.repository.list_object_names())
        missing = sorted({species_filename(z) for z in numbers} - present)
        if missing:
            return f'species: no species default file for {", ".join(missing)} in the FolderData <{species.pk}>'
    elif not species_dir.value.startswith('/'):
        return f'species_dir: {species_dir.value!r} must be an absolute path on the remote computer'
    return None


class AimsCalculation(CalcJob):
    """Run FHI-aims on one structure and ask for energy, forces and (periodic cells) the analytical stress.

    control.in and geometry.in are written here, deterministically, from the inputs: no timestamp, keywords sorted,
    species defaults appended in order of atomic number. Species defaults either come from a ``FolderData`` node
    (``species``: files ``<Z:02>_<Symbol>_default``, uploaded, hashed into the provenance) or from a directory on the
    remote computer (``species_dir``), concatenated into control.in by the job script before FHI-aims starts.
    """

    _OUTPUT_FILE = 'aims.out'
    _ERROR_FILE = 'aims.err'

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input('structure', valid_type=orm.StructureData, help='The atoms to label.')
        spec.input('parameters', valid_type=orm.Dict, help='control.in keywords, e.g. {"xc": "pbe"}.')
        spec.input('kpoints', valid_type=orm.KpointsData, required=False, help='k-point mesh for periodic cells.')
        spec.input(
            'species', valid_type=orm.FolderData, required=False,
            help='Species default files <Z:02>_<Symbol>_default to append to control.in.',
        )
        spec.input(
            'species_dir', valid_type=orm.Str, required=False,
            help='Absolute path of a species defaults directory (e.g. .../species_defaults/defaults_2020/light) on '
            'the remote computer.',
        )
        spec.input(
            'unchecked_keywords', valid_type=orm.List, required=False,
            help='control.in keywords of `parameters` to write although the documented-keyword list '
            '(aiida_alml.formats.aims_input.KNOWN_KEYWORDS) lacks them, e.g. those of a newer FHI-aims.',
        )
        spec.input(
            'parent_folder', valid_type=orm.RemoteData, required=False,
            help='Work directory of an earlier run whose ELSI restart files are copied in (walltime restarts).',
        )
        spec.inputs.validator = validate_inputs
        spec.inputs['metadata']['options']['parser_name'].default = 'alml.aims'
        spec.inputs['metadata']['options']['resources'].default = {'num_machines': 1}

        spec.output('output_parameters', valid_type=orm.Dict, help='Energies, SCF, timing and build information.')
        spec.output('forces', valid_type=orm.ArrayData, required=False, help='Array `forces` (n, 3) in eV/Å.')
        spec.output('stress', valid_type=orm.ArrayData, required=False, help='Array `stress` (3, 3) in eV/Å^3.')
        spec.output('labelled', valid_type=ConfigurationSet, required=False, help='ConfigurationSet of one labelled config.')
        spec.output('output_structure', valid_type=orm.StructureData, required=False, help='Relaxed geometry.')
        spec.output('restart_structure', valid_type=orm.StructureData, required=False,
                    help='A relaxation stopped before its end (walltime): the last geometry FHI-aims wrote '
                         '(geometry.in.next_step), to continue from.')
        spec.default_output_node = 'output_parameters'

        define_interruption_exit_code(spec)

        spec.exit_code(300, 'ERROR_OUTPUT_MISSING', message='The FHI-aims output file aims.out was not retrieved.')
        spec.exit_code(301, 'ERROR_OUTPUT_INCOMPLETE', message='aims.out does not end with "Have a nice day.".')
        spec.exit_code(310, 'ERROR_MISSING_SPECIES', message='A species default file was missing: {detail}')
        spec.exit_code(320, 'ERROR_OUT_OF_MEMORY', message='FHI-aims ran out of memory: {detail}')
        spec.exit_code(330, 'ERROR_OUT_OF_WALLTIME', message='The job was stopped at the walltime limit.')
        spec.exit_code(340, 'ERROR_SCF_NOT_CONVERGED', message='The SCF cycle did not converge within sc_iter_limit.')
        spec.exit_code(350, 'ERROR_MISSING_FORCES', message='The run completed but printed no forces.')
        spec.exit_code(351, 'ERROR_INCONSISTENT_OUTPUT', message='The output does not match the input: {detail}')
        spec.exit_code(
            352, 'ERROR_GEOMETRY_MISMATCH', message='FHI-aims labelled another geometry than the input: {detail}'
        )

    def prepare_for_submission(self, folder):
        structure = self.inputs.structure
        params = self.inputs.parameters.get_dict()
        periodic = all(structure.pbc)
        numbers = _numbers(structure)
        symbols = [structure.get_kind(site.kind_name).symbol for site in structure.sites]
        positions = [site.position for site in structure.sites]

        k_grid = k_offset = None
        if 'kpoints' in self.inputs:
            k_grid, k_offset = self.inputs.kpoints.get_kpoints_mesh()

        species_blocks = []
        prepend = []
        elements = sorted(set(numbers))
        if 'species' in self.inputs:
            folder_node = self.inputs.species
            species_blocks = [folder_node.base.repository.get_object_content(species_filename(z)) for z in elements]
        else:
            # Concatenate on the remote side; a missing file stops the job with a marker the parser recognises.
            # The files' SHA-256 go into the recorded label settings: the same path may hold other contents elsewhere.
            directory = self.inputs.species_dir.value
            for z in elements:
                path = shlex.quote(f'{directory.rstrip("/")}/{species_filename(z)}')
                prepend.append(
                    f'if [ -r {path} ]; then cat {path} >> control.in; sha256sum {path} >> {SPECIES_DIGEST_FILE}; '
                    f'else echo "ALML-MISSING-SPECIES: {species_filename(z)}" >> {self._ERROR_FILE}; exit 3; fi'
                )

        unchecked = self.inputs.unchecked_keywords.get_list() if 'unchecked_keywords' in self.inputs else ()
        control = write_control_in(params, periodic, k_grid=k_grid, k_offset=k_offset, species_blocks=species_blocks,
                                   unchecked=unchecked)
        geometry = write_geometry_in(symbols, positions, structure.cell if periodic else None)
        folder.get_subfolder('.', create=True)
        with folder.open('control.in', 'w', encoding='utf8') as handle:
            handle.write(control)
        with folder.open('geometry.in', 'w', encoding='utf8') as handle:
            handle.write(geometry)

        codeinfo = CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.stdout_name = self._OUTPUT_FILE
        codeinfo.stderr_name = self._ERROR_FILE

        calcinfo = CalcInfo()
        calcinfo.codes_info = [codeinfo]
        calcinfo.local_copy_list = []
        calcinfo.remote_copy_list = []
        if 'parent_folder' in self.inputs:
            parent = self.inputs.parent_folder
            calcinfo.remote_copy_list.append(
                (parent.computer.uuid, f'{parent.get_remote_path()}/{RESTART_FILE_PATTERN}', '.')
            )
        calcinfo.prepend_text = '\n'.join(prepend) if prepend else None
        calcinfo.retrieve_list = [self._OUTPUT_FILE, self._ERROR_FILE, 'geometry.in.next_step', SPECIES_DIGEST_FILE]
        return calcinfo
