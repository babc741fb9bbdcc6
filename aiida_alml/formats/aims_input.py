"""Writing FHI-aims inputs (``control.in``, ``geometry.in``) and checking control.in keywords.

Pure Python (numpy and the periodic table from ASE only, no AiiDA): the CalcJob, the mock executable used in the
tests and anyone else can share it. Everything written here is deterministic -- no timestamps, keywords in sorted
order, fixed float formatting -- so that the same inputs give byte-identical files and AiiDA caching can hit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from aiida_alml.atoms.suggest import did_you_mean

__all__ = (
    'AimsInputError',
    'format_value',
    'validate_keywords',
    'validate_parameters',
    'KNOWN_KEYWORDS',
    'write_control_in',
    'write_geometry_in',
    'species_filename',
    'electron_count',
    'run_changing_keywords',
    'result_keywords',
)

# A control.in keyword: lower-case word (FHI-aims keywords are case sensitive and all lower case).
_KEYWORD = re.compile(r'^[a-z][a-z0-9_]*$')
# One token of a value: anything printable except whitespace and the comment character.
_TOKEN = re.compile(r'^[^\s#]+$')

#: Keywords this plugin writes itself from other inputs; giving them in ``parameters`` would be ambiguous.
RESERVED_KEYWORDS = {
    'species': 'species blocks come from the `species` or `species_dir` input',
    'compute_forces': 'forces are always computed: they are the labels this plugin exists for',
}

#: Keywords whose value must be a positive integer.
POSITIVE_INTEGER_KEYWORDS = ('sc_iter_limit', 'n_max_pulay', 'walltime', 'sc_init_iter')

#: Keywords whose value must be a positive number.
POSITIVE_NUMBER_KEYWORDS = ('charge_mix_param', 'sc_accuracy_rho', 'sc_accuracy_eev', 'sc_accuracy_etot',
                            'sc_accuracy_forces', 'sc_accuracy_stress')


#: Keywords that make FHI-aims move the atoms (relaxation, molecular dynamics, the i-PI socket driver): the forces
#: printed last then belong to another geometry than the one given. Labelling refuses them; matched case-insensitively
#: (the FHI-aims manual spells the MD keywords ``MD_run``, ``MD_schedule``, ...; this plugin writes them lower case).
RUN_CHANGING_PREFIXES = ('relax_', 'md_')
RUN_CHANGING_KEYWORDS = ('use_pimd_wrapper',)

#: Keywords that change how the SCF reaches its solution, what is printed or which resources are used, but not the
#: converged energy, forces and stress (within the ``sc_accuracy_*`` thresholds). They are left out of the recorded
#: label settings so that a restart with other mixing (``alml.aims.base``) keeps labels comparable. Anything not
#: listed here is recorded: an unknown keyword is assumed to change the result.
SCF_PATH_KEYWORDS = frozenset({
    'mixer', 'charge_mix_param', 'n_max_pulay', 'spin_mix_param', 'prec_mix_param', 'preconditioner',
    'ini_linear_mixing', 'ini_linear_mix_param', 'sc_iter_limit', 'sc_init_iter', 'sc_init_factor',
    'elsi_restart', 'restart', 'restart_read_only', 'restart_write_only', 'use_local_index', 'load_balancing',
    'walltime', 'output', 'output_level', 'collect_eigenvectors', 'compute_forces', 'compute_analytical_stress',
})


#: control.in keywords documented in the FHI-aims manual (lower case, as this plugin writes them; species-block
#: keywords such as ``nucleus`` or ``hydro`` are not here: species blocks come from the species defaults). A keyword
#: outside this list is refused with the closest names, because FHI-aims stops at an unknown keyword only once the job
#: has queued and started. A keyword that a newer FHI-aims documents and this list lacks can be let through, by name,
#: with the ``unchecked_keywords`` input of ``alml.aims`` (recorded in the provenance like every other input).
KNOWN_KEYWORDS = frozenset({
    # physical model
    'xc', 'xc_pre', 'charge', 'spin', 'default_initial_moment', 'fixed_spin_moment', 'relativistic',
    'override_relativity', 'include_spin_orbit', 'hybrid_xc_coeff', 'hse_unit', 'hf_version', 'ri_method',
    'use_hf_kspace', 'exx_band_structure_version', 'screening_threshold', 'total_energy_method', 'frozen_core_scf',
    'frozen_core_scf_cutoff', 'frozen_core_postscf', 'plus_u', 'plus_u_petukhov_mixing', 'plus_u_use_hydros',
    'plus_u_matrix_control', 'plus_u_out_eigenvalues', 'plus_u_ramping_accuracy',
    # dispersion
    'vdw_correction_hirshfeld', 'vdw_correction_hirshfeld_sc', 'vdw_ts', 'vdw_pair_ignore', 'hirshfeld_param',
    'vdw_convergence_threshold', 'many_body_dispersion', 'many_body_dispersion_nl', 'many_body_dispersion_dev',
    'mbd_eigensolver', 'mbd_cfdm_dip_cutoff', 'mbd_scs_dip_cutoff', 'mbd_supercell_cutoff', 'mbd_scs_vacuum_axis',
    'nlcorr_nrad', 'xdm', 'd3',
    # basis, auxiliary basis, numerics
    'basis_threshold', 'override_illconditioning', 'prodbas_threshold', 'auxil_basis', 'max_l_prodbas',
    'default_prodbas_acc', 'use_logsbt', 'partition_type', 'hartree_partition_type', 'multipole_threshold',
    'hartree_radius_threshold', 'ewald_radius', 'grid_partitioning_method', 'points_in_batch', 'batch_size_limit',
    'normalize_initial_density', 'compensate_multipole_errors', 'override_initial_charge_check',
    'use_dipole_correction', 'evaluate_work_function', 'set_vacuum_level', 'analytic_potential_average',
    'distributed_spline_storage', 'use_local_index', 'load_balancing', 'use_alltoall', 'packed_matrix_format',
    'packed_matrix_threshold', 'prune_basis_once', 'empty_states', 'calculate_all_eigenstates',
    'check_cpu_consistency', 'cpu_consistency_threshold', 'check_stacksize',
    # eigensolver and SCF
    'ks_method', 'elsi_method', 'elsi_solver', 'elsi_restart', 'elsi_output', 'elsi_elpa_solver', 'elpa_settings',
    'occupation_type', 'occupation_acc', 'occupation_thr', 'max_zeroin', 'fermi_acc', 'mu_determination_method',
    'mixer', 'mixer_threshold', 'charge_mix_param', 'spin_mix_param', 'prec_mix_param', 'n_max_pulay',
    'preconditioner', 'ini_linear_mixing', 'ini_linear_mix_param', 'sc_iter_limit', 'sc_init_iter',
    'sc_init_factor', 'sc_accuracy_rho', 'sc_accuracy_eev', 'sc_accuracy_etot', 'sc_accuracy_forces',
    'sc_accuracy_stress', 'sc_accuracy_potjump', 'adjust_scf', 'postscf_eigenvalues', 'use_density_matrix',
    'density_update_method', 'collect_eigenvectors', 'force_potential',
    # k-points, forces, stress
    'k_grid', 'k_offset', 'k_points_external', 'symmetry_reduced_k_grid', 'use_symmetry_reduced_spg',
    'compute_forces', 'compute_analytical_stress', 'compute_numerical_stress', 'compute_heat_flux',
    'final_forces_cleaned', 'force_correction', 'external_pressure',
    # restarts, time, output
    'restart', 'restart_read_only', 'restart_write_only', 'restart_save_iterations', 'walltime', 'output',
    'output_level', 'dos_kgrid_factors', 'exx_band_structure_version',
    # many-body perturbation theory and response
    'qpe_calc', 'frequency_points', 'anacon_type', 'n_anacon_par', 'dfpt', 'magnetic_response',
    # geometry relaxation and molecular dynamics (alml.aims runs them; alml.label refuses them, see below)
    'relax_geometry', 'relax_unit_cell', 'max_relaxation_steps', 'energy_tolerance', 'aggregated_energy_tolerance',
    'harmonic_length_scale', 'init_hess', 'hessian_to_restart_geometry', 'write_restart_geometry',
    'distributed_hessian', 'md_run', 'md_schedule', 'md_segment', 'md_time_step', 'md_maxsteps', 'md_restart',
    'md_mb_init', 'md_clean_rotations', 'md_random_seed', 'md_thermostat_mass', 'use_pimd_wrapper',
})


class AimsInputError(ValueError):
    """Raised for control.in parameters or structures FHI-aims inputs cannot be written for."""


def format_value(keyword: str, value) -> str:
    """The text after ``keyword`` on its control.in line; refuses values that could break the file's line structure.

    Booleans become Fortran logicals; lists are space-joined tokens. Each token is checked separately: a newline or a
    ``#`` in a value would let a parameter inject extra keywords or comment out the rest of the line.
    """
    if isinstance(value, bool):
        return '.true.' if value else '.false.'
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AimsInputError(f'parameters[{keyword!r}]: {value!r} is not a finite number')
        return repr(value)
    if isinstance(value, str):
        tokens = value.split(' ')
        if value != value.strip() or not value or any(not _TOKEN.match(token) for token in tokens if token):
            raise AimsInputError(
                f'parameters[{keyword!r}]: value {value!r} contains a newline, a tab, a `#` or leading/trailing '
                'blanks; each value must be plain tokens on one line'
            )
        return ' '.join(token for token in tokens if token)
    if isinstance(value, (list, tuple)):
        if not value:
            raise AimsInputError(f'parameters[{keyword!r}]: an empty list is not a value')
        if any(isinstance(item, (list, tuple, dict)) for item in value):
            raise AimsInputError(f'parameters[{keyword!r}]: nested lists are only allowed for repeated keywords')
        return ' '.join(format_value(keyword, item) for item in value)
    raise AimsInputError(f'parameters[{keyword!r}]: values of type {type(value).__name__} cannot be written')


def _lines_for(keyword: str, value) -> list[str]:
    # A list of lists is a keyword repeated on several lines, e.g. ``output: [[hirshfeld], [mulliken]]``.
    if isinstance(value, (list, tuple)) and value and all(isinstance(item, (list, tuple)) for item in value):
        return [f'{keyword} {format_value(keyword, item)}' for item in value]
    return [f'{keyword} {format_value(keyword, value)}']


def validate_keywords(parameters: Mapping, unchecked: Sequence[str] = ()) -> None:
    """The checks that need no structure: keyword names (allow-list), reserved keywords, values and their ranges.

    ``unchecked``: keyword names let through although :data:`KNOWN_KEYWORDS` lacks them (the documented escape hatch
    for keywords of a newer FHI-aims). Raises :class:`AimsInputError` naming the first bad keyword.
    """
    if not isinstance(parameters, Mapping):
        raise AimsInputError(f'parameters: expected a mapping of control.in keywords to values, got {parameters!r}')
    for keyword, value in parameters.items():
        if not isinstance(keyword, str) or not _KEYWORD.fullmatch(keyword):
            raise AimsInputError(
                f'parameters: {keyword!r} is not a control.in keyword (lower-case letters, digits and `_` only)'
            )
        if keyword in RESERVED_KEYWORDS:
            raise AimsInputError(f'parameters[{keyword!r}] may not be set: {RESERVED_KEYWORDS[keyword]}')
        if keyword not in KNOWN_KEYWORDS and keyword not in unchecked:
            raise AimsInputError(
                f'parameters[{keyword!r}] is not a documented FHI-aims control.in keyword'
                f'{did_you_mean(keyword, KNOWN_KEYWORDS, n=3, joiner=", ")}; if your FHI-aims version documents it, '
                'name it in the `unchecked_keywords` input (docs/fhi-aims.md)'
            )
        _lines_for(keyword, value)  # raises on malformed values
    for keyword in POSITIVE_INTEGER_KEYWORDS:
        if keyword in parameters:
            value = parameters[keyword]
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise AimsInputError(f'parameters[{keyword!r}] must be a positive integer, got {value!r}')
    for keyword in POSITIVE_NUMBER_KEYWORDS:
        if keyword in parameters:
            value = parameters[keyword]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise AimsInputError(f'parameters[{keyword!r}] must be a positive number, got {value!r}')
    if 'charge' in parameters:
        charge = parameters['charge']
        if isinstance(charge, bool) or not isinstance(charge, (int, float)):
            raise AimsInputError(f'parameters[charge] must be a number, got {charge!r}')
    spin = parameters.get('spin', 'none')
    if spin not in ('none', 'collinear'):
        raise AimsInputError(f"parameters[spin] must be 'none' or 'collinear', got {spin!r}")
    if 'default_initial_moment' in parameters and spin != 'collinear':
        raise AimsInputError('parameters[default_initial_moment] needs spin collinear')


def validate_parameters(parameters: Mapping, periodic: bool, unchecked: Sequence[str] = ()) -> None:
    """Raise :class:`AimsInputError` naming the first keyword that is malformed or conflicts with this plugin."""
    validate_keywords(parameters, unchecked)
    if not periodic and 'compute_analytical_stress' in parameters:
        raise AimsInputError('parameters[compute_analytical_stress]: stress is only defined for a periodic cell')
    if periodic and parameters.get('compute_analytical_stress', True) is not True:
        raise AimsInputError(
            'parameters[compute_analytical_stress] must stay .true. for a periodic cell: the stress is a label'
        )
    if not periodic and 'k_grid' in parameters:
        raise AimsInputError('parameters[k_grid]: k-points make no sense for a non-periodic structure')


def run_changing_keywords(parameters: Mapping) -> list[str]:
    """The keywords of ``parameters`` that would make FHI-aims label another geometry than the one given."""
    return sorted(
        keyword for keyword in parameters
        if str(keyword).lower().startswith(RUN_CHANGING_PREFIXES) or str(keyword).lower() in RUN_CHANGING_KEYWORDS
    )


def result_keywords(parameters: Mapping) -> dict:
    """The control.in keywords that decide the converged labels (all but :data:`SCF_PATH_KEYWORDS`), normalised.

    String values are compared token by token (runs of blanks collapse, as in the written control.in); ``spin`` is
    recorded with FHI-aims' default ``none`` when not set.
    """
    recorded = {'spin': 'none'}
    for keyword, value in parameters.items():
        if keyword in SCF_PATH_KEYWORDS:
            continue
        recorded[keyword] = ' '.join(value.split()) if isinstance(value, str) else value
    return recorded


def electron_count(numbers: Sequence[int], charge: float = 0.0) -> float:
    """Number of electrons of the neutral atoms minus the total ``charge``."""
    return float(sum(int(z) for z in numbers)) - float(charge)


def species_filename(number: int) -> str:
    """File name of a species default, e.g. ``29_Cu_default``."""
    from ase.data import chemical_symbols

    return f'{int(number):02d}_{chemical_symbols[int(number)]}_default'


def write_control_in(
    parameters: Mapping,
    periodic: bool,
    k_grid: Sequence[int] | None = None,
    k_offset: Sequence[float] | None = None,
    species_blocks: Sequence[str] = (),
    unchecked: Sequence[str] = (),
) -> str:
    """The full control.in text: keywords sorted by name, then forces/stress requests, k-points, species blocks.

    ``species_blocks`` are the species default files' texts, already in the order wanted (the caller sorts by Z).
    When the species are concatenated on the remote computer instead, leave it empty.
    """
    validate_parameters(parameters, periodic, unchecked)
    lines = ['# control.in written by aiida-alml (alml.aims); species defaults follow the keywords']
    for keyword in sorted(parameters):
        if keyword == 'compute_analytical_stress':
            continue  # written below with the other label requests
        lines.extend(_lines_for(keyword, parameters[keyword]))
    lines.append('compute_forces .true.')
    if periodic:
        lines.append('compute_analytical_stress .true.')
        if k_grid is not None:
            if 'k_grid' in parameters:
                raise AimsInputError('parameters[k_grid] conflicts with the `kpoints` input: give only one')
            lines.append('k_grid ' + ' '.join(str(int(n)) for n in k_grid))
            if k_offset is not None and any(float(x) != 0.0 for x in k_offset):
                lines.append('k_offset ' + ' '.join(f'{float(x):.6f}' for x in k_offset))
        elif 'k_grid' not in parameters:
            raise AimsInputError('a periodic structure needs k-points: give the `kpoints` input or parameters[k_grid]')
    text = '\n'.join(lines) + '\n'
    for block in species_blocks:
        text += block if block.endswith('\n') else block + '\n'
    return text


def write_geometry_in(
    symbols: Sequence[str],
    positions: Sequence[Sequence[float]],
    cell: Sequence[Sequence[float]] | None,
    initial_moments: Sequence[float] | None = None,
) -> str:
    """geometry.in text, Cartesian coordinates in Å; ``cell`` None for a molecule (FHI-aims is all-or-nothing periodic).

    Twelve decimals keep positions to 1e-12 Å, far below any physical difference, with a fixed width so the same
    structure always gives the same bytes.
    """
    lines = ['# geometry.in written by aiida-alml (alml.aims)']
    if cell is not None:
        for vector in cell:
            lines.append('lattice_vector ' + ' '.join(f'{float(x):.12f}' for x in vector))
    for index, (symbol, position) in enumerate(zip(symbols, positions)):
        lines.append('atom ' + ' '.join(f'{float(x):.12f}' for x in position) + f' {symbol}')
        if initial_moments is not None and initial_moments[index]:
            lines.append(f'    initial_moment {float(initial_moments[index]):.6f}')
    return '\n'.join(lines) + '\n'


def read_geometry_in(text: str) -> tuple[list[str], list[list[float]], list[list[float]] | None]:
    """Symbols, Cartesian positions (Å) and lattice vectors (None for a molecule) of a geometry.in text.

    Fractional ``atom_frac`` lines are converted with the lattice vectors; per-atom modifiers are ignored.
    """
    import numpy as np

    symbols, positions, fractional, lattice = [], [], [], []
    for line in text.splitlines():
        parts = line.split('#', 1)[0].split()
        if not parts:
            continue
        if parts[0] == 'lattice_vector':
            lattice.append([float(x) for x in parts[1:4]])
        elif parts[0] in ('atom', 'atom_frac'):
            symbols.append(parts[4])
            positions.append([float(x) for x in parts[1:4]])
            fractional.append(parts[0] == 'atom_frac')
    if any(fractional):
        if len(lattice) != 3:
            raise AimsInputError('geometry.in: atom_frac needs three lattice_vector lines')
        cell = np.array(lattice)
        positions = [list(np.dot(p, cell)) if frac else p for p, frac in zip(positions, fractional)]
    return symbols, positions, lattice or None
