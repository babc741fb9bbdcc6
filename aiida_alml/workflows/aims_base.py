"""``alml.aims.base``: run ``alml.aims`` and recover the failures an FHI-aims expert would recover by hand."""

from __future__ import annotations

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import ProcessHandlerReport, calcfunction, process_handler, while_

from aiida_alml.calculations.aims import AimsCalculation
from aiida_alml.protocols import get_protocol_inputs
from aiida_alml.workflows.base import RestartsInterruptedJobs

__all__ = ('AimsBaseWorkChain', 'kpoints_from_distance', 'kpoints_mesh')

#: FHI-aims' own default linear mixing parameter, used when control.in does not set one.
DEFAULT_CHARGE_MIX_PARAM = 0.05
DEFAULT_SC_ITER_LIMIT = 1000
#: Below this the density barely moves per iteration: mixing smaller no longer helps, it only costs iterations.
MIN_CHARGE_MIX_PARAM = 0.005
#: Gaussian broadening (eV) the last-resort SCF strategy sets; only with ``allow_smearing_change``.
RESCUE_SMEARING = 0.1
WALLTIME_FACTOR = 1.5


class AimsBaseWorkChain(RestartsInterruptedJobs):
    """Run an :class:`AimsCalculation`, restarting it with adjusted settings when it fails in a recoverable way.

    SCF non-convergence: a ladder of FHI-aims mixing strategies (more iterations, smaller ``charge_mix_param``,
    Pulay mixing with a longer history and, only if ``allow_smearing_change`` is True, a larger Gaussian smearing --
    off by default because a smearing that differs between configurations makes their labels inconsistent).
    Walltime: more time, and the ELSI density-matrix restart files or the relaxation's last geometry when the run left
    them. Missing species files and running out of memory twice are not recoverable: the work chain stops with a
    named exit code. A job the scheduler cancelled or lost (node failure) is run again unchanged (the handler all
    base work chains share, :class:`aiida_alml.workflows.base.RestartsInterruptedJobs`). Every change is
    reported (``verdi process report``) and each attempt's parameters are a new ``Dict`` input of that attempt, so the
    recovery is in the provenance graph.
    """

    _process_class = AimsCalculation

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(AimsCalculation, namespace='aims', exclude=('kpoints',))
        spec.input(
            'kpoints', valid_type=orm.KpointsData, required=False, help='k-point mesh; or give `kpoints_distance`.'
        )
        spec.input(
            'kpoints_distance', valid_type=orm.Float, required=False,
            help='Maximum distance between k-points in 1/Å (2π included), used to build a mesh for periodic cells.',
        )
        spec.input(
            'allow_smearing_change', valid_type=orm.Bool, default=lambda: orm.Bool(False),
            help='Let the last SCF strategy raise the occupation smearing (changes the labels; off by default).',
        )
        spec.outline(
            cls.setup,
            cls.setup_kpoints,
            while_(cls.should_run_process)(
                cls.run_process,
                cls.inspect_process,
            ),
            cls.results,
        )
        spec.expose_outputs(AimsCalculation)
        spec.exit_code(201, 'ERROR_INVALID_KPOINTS', message='Periodic structure without `kpoints` or `kpoints_distance`.')
        spec.exit_code(310, 'ERROR_MISSING_SPECIES', message='A species default file is missing: not recoverable.')
        spec.exit_code(320, 'ERROR_OUT_OF_MEMORY', message='Out of memory even with the memory-saving settings.')
        spec.exit_code(340, 'ERROR_SCF_UNRECOVERABLE', message='The SCF did not converge with any mixing strategy.')
        spec.exit_code(352, 'ERROR_GEOMETRY_MISMATCH', message='FHI-aims labelled another geometry than the input.')

    # ------------------------------------------------------------------ protocols
    @classmethod
    def get_protocol_inputs(cls, protocol=None, overrides=None):
        return get_protocol_inputs('aims', protocol, overrides)

    @classmethod
    def get_builder_from_protocol(cls, code, structure, protocol=None, overrides=None, options=None, species_root=None):
        """A builder with the protocol's parameters, k-point density and species defaults for ``structure``.

        Species defaults: ``overrides['species']`` (a ``FolderData``), else the ``species_root`` directory on the
        computer (or the code's extra ``alml_species_root``) plus the protocol's ``light``/``intermediate``/``tight``.
        """
        inputs = cls.get_protocol_inputs(protocol, {k: v for k, v in (overrides or {}).items() if k != 'species'})
        builder = cls.get_builder()
        builder.aims.code = code
        builder.aims.structure = structure
        parameters = dict(inputs['parameters'])
        if not all(structure.pbc):
            parameters.pop('compute_analytical_stress', None)
        builder.aims.parameters = orm.Dict(parameters)
        species = (overrides or {}).get('species')
        if species is not None:
            builder.aims.species = species
        else:
            root = species_root or code.base.extras.get('alml_species_root', None)
            if not root:
                raise ValueError(
                    'species_root: give the species_defaults directory on the computer (or set the code extra '
                    "`alml_species_root`, or pass overrides['species'] as a FolderData)"
                )
            builder.aims.species_dir = orm.Str(f'{str(root).rstrip("/")}/{inputs["species_defaults"]}')
        if all(structure.pbc):
            builder.kpoints_distance = orm.Float(inputs['kpoints_distance'])
        builder.max_iterations = orm.Int(inputs['max_iterations'])
        builder.clean_workdir = orm.Bool(inputs['clean_workdir'])
        if options:
            builder.aims.metadata.options = options
        return builder

    # ------------------------------------------------------------------ outline
    def setup(self):
        super().setup()
        self.ctx.inputs = AttributeDict(self.exposed_inputs(AimsCalculation, 'aims'))
        self.ctx.scf_strategy = 0
        self.ctx.memory_saving = False

    def setup_kpoints(self):
        structure = self.ctx.inputs.structure
        if not all(structure.pbc):
            return None
        if 'kpoints' in self.inputs:
            self.ctx.inputs.kpoints = self.inputs.kpoints
        elif 'kpoints_distance' in self.inputs:
            # A mesh per cell: strained cells may get other meshes. alml.label fixes one per cell shape instead.
            self.ctx.inputs.kpoints = kpoints_from_distance(
                structure, self.inputs.kpoints_distance, metadata={'call_link_label': 'kpoints'}
            )
        elif 'k_grid' not in self.ctx.inputs.parameters.get_dict():
            return self.exit_codes.ERROR_INVALID_KPOINTS
        return None

    def _update_parameters(self, changes: dict, why: str) -> None:
        parameters = self.ctx.inputs.parameters.get_dict()
        parameters.update(changes)
        self.ctx.inputs.parameters = orm.Dict(parameters)
        self.report(f'{why}: restarting with {", ".join(f"{k} = {v}" for k, v in sorted(changes.items()))}')

    # ------------------------------------------------------------------ handlers
    @process_handler(priority=600, exit_codes=[AimsCalculation.exit_codes.ERROR_MISSING_SPECIES])
    def handle_missing_species(self, node):
        """No species default, no calculation: a setup problem a restart cannot fix."""
        self.report(f'{node.process_label}<{node.pk}>: {node.exit_message}; giving up (fix the species input)')
        return ProcessHandlerReport(True, self.exit_codes.ERROR_MISSING_SPECIES)

    @process_handler(priority=595, exit_codes=[AimsCalculation.exit_codes.ERROR_GEOMETRY_MISMATCH])
    def handle_geometry_mismatch(self, node):
        """FHI-aims computed another geometry than the input (MD or relaxation keywords): a rerun would do the same."""
        self.report(f'{node.process_label}<{node.pk}>: {node.exit_message}; giving up')
        return ProcessHandlerReport(True, self.exit_codes.ERROR_GEOMETRY_MISMATCH)

    @process_handler(priority=590, exit_codes=[AimsCalculation.exit_codes.ERROR_OUT_OF_MEMORY])
    def handle_out_of_memory(self, node):
        """Once: distribute the grids and use local indexing (FHI-aims' memory savers); then give up."""
        if self.ctx.memory_saving:
            self.report(f'{node.process_label}<{node.pk}> ran out of memory with the memory-saving settings: giving up')
            return ProcessHandlerReport(True, self.exit_codes.ERROR_OUT_OF_MEMORY)
        self.ctx.memory_saving = True
        self._update_parameters(
            {'use_local_index': True, 'load_balancing': True}, f'{node.process_label}<{node.pk}> ran out of memory'
        )
        return ProcessHandlerReport(True)

    @process_handler(priority=580, exit_codes=[AimsCalculation.exit_codes.ERROR_OUT_OF_WALLTIME])
    def handle_out_of_walltime(self, node):
        """More time; start from what the killed run left (relaxation geometry, ELSI restart files)."""
        options = self.ctx.inputs.metadata.setdefault('options', {})
        walltime = node.get_option('max_wallclock_seconds')
        what = []
        if walltime:
            options['max_wallclock_seconds'] = int(walltime * WALLTIME_FACTOR)
            what.append(f'max_wallclock_seconds {walltime} -> {options["max_wallclock_seconds"]}')
        if 'restart_structure' in node.outputs:
            # The parser made it from geometry.in.next_step: the relaxation continues where it was stopped.
            self.ctx.inputs.structure = node.outputs.restart_structure
            what.append('the last geometry of the relaxation (geometry.in.next_step)')
        restart = str(self.ctx.inputs.parameters.get_dict().get('elsi_restart', ''))
        if 'write' in restart and 'remote_folder' in node.outputs:
            self.ctx.inputs.parent_folder = node.outputs.remote_folder
            interval = restart.split()[-1] if restart.split()[-1].isdigit() else '10'
            self._update_parameters({'elsi_restart': f'read_and_write {interval}'}, 'density-matrix restart')
            what.append(f'the ELSI restart files of {node.process_label}<{node.pk}>')
        self.report(f'{node.process_label}<{node.pk}> hit the walltime; restarting with ' + '; '.join(what or ['as before']))
        return ProcessHandlerReport(True)

    @process_handler(priority=500, exit_codes=[AimsCalculation.exit_codes.ERROR_SCF_NOT_CONVERGED])
    def handle_scf_not_converged(self, node):
        """Climb the mixing ladder: each rung damps the density update more and gives the SCF more iterations."""
        parameters = self.ctx.inputs.parameters.get_dict()
        mix = float(parameters.get('charge_mix_param', DEFAULT_CHARGE_MIX_PARAM))
        limit = int(parameters.get('sc_iter_limit', DEFAULT_SC_ITER_LIMIT))
        self.ctx.scf_strategy += 1
        why = f'{node.process_label}<{node.pk}>: SCF not converged (strategy {self.ctx.scf_strategy})'
        if self.ctx.scf_strategy <= 2 and mix / 2 >= MIN_CHARGE_MIX_PARAM:
            # Halving the linear mixing damps charge sloshing; Pulay with a longer history recovers the speed.
            changes = {
                'charge_mix_param': round(mix / 2, 6),
                'mixer': 'pulay',
                'n_max_pulay': max(int(parameters.get('n_max_pulay', 8)), 8 + 4 * self.ctx.scf_strategy),
                'sc_iter_limit': int(limit * 1.5),
            }
            self._update_parameters(changes, why)
            return ProcessHandlerReport(True)
        if self.inputs.allow_smearing_change.value and _smearing(parameters) < RESCUE_SMEARING:
            self._update_parameters(
                {'occupation_type': f'gaussian {RESCUE_SMEARING}', 'sc_iter_limit': int(limit * 1.5)},
                why + ' -- raising the smearing changes the labels of this configuration',
            )
            return ProcessHandlerReport(True)
        self.report(f'{why}: no mixing strategy left (charge_mix_param {mix}, sc_iter_limit {limit}); giving up')
        return ProcessHandlerReport(True, self.exit_codes.ERROR_SCF_UNRECOVERABLE)


@calcfunction
def kpoints_from_distance(structure: orm.StructureData, distance: orm.Float) -> orm.KpointsData:
    """The k-point mesh of a periodic ``structure`` with k-points at most ``distance`` (1/Å, 2π included) apart
    (:func:`kpoints_mesh`): the mesh of an ``alml.aims.base`` run given ``kpoints_distance``."""
    kpoints = orm.KpointsData()
    kpoints.set_kpoints_mesh(kpoints_mesh(structure.cell, distance.value))
    return kpoints


def kpoints_mesh(cell, distance: float) -> list[int]:
    """The Monkhorst-Pack mesh of a periodic ``cell`` (Å) with k-points at most ``distance`` (1/Å, 2π included) apart.

    AiiDA's rule (:meth:`KpointsData.set_kpoints_mesh_from_density`): ceil(|b_i| / distance) points along each
    reciprocal vector b_i.
    """
    kpoints = orm.KpointsData()
    kpoints.set_cell(cell, pbc=(True, True, True))
    kpoints.set_kpoints_mesh_from_density(distance)
    return [int(n) for n in kpoints.get_kpoints_mesh()[0]]


def _smearing(parameters: dict) -> float:
    """Width (eV) of the occupation smearing in ``occupation_type``; FHI-aims' default 0.01 when not set."""
    tokens = str(parameters.get('occupation_type', 'gaussian 0.01')).split()
    try:
        return float(tokens[1])
    except (IndexError, ValueError):
        return 0.01
