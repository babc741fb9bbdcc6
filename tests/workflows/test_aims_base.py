"""``alml.aims.base``: restart handlers through real processes (MOCK FHI-aims) and protocols."""

import pytest
from aiida import orm
from aiida.engine import run_get_node
from helpers.aims import aims_inputs, mock_aims_code, silicon_structure, species_folder, water_structure

from aiida_alml.calculations.aims import AimsCalculation
from aiida_alml.workflows.aims_base import AimsBaseWorkChain


def _reports(node):
    from aiida.orm import Log

    return [log.message for log in Log.collection.get_logs_for(node)]


def test_scf_failure_recovered_by_smaller_mixing(aiida_code_installed):
    # The mock fails the SCF of stretched water unless charge_mix_param <= 0.03, as a hard real case would.
    inputs = aims_inputs(mock_aims_code(aiida_code_installed), water_structure(stretch=0.5))
    results, node = run_get_node(AimsBaseWorkChain, aims=inputs)
    assert node.is_finished_ok, node.exit_message
    first, second = sorted(node.called, key=lambda n: n.ctime)
    assert first.exit_status == AimsCalculation.exit_codes.ERROR_SCF_NOT_CONVERGED.status
    assert second.is_finished_ok
    retried = second.inputs.parameters.get_dict()
    assert retried['charge_mix_param'] == 0.025 and retried['mixer'] == 'pulay' and retried['sc_iter_limit'] == 1500
    assert any('SCF not converged' in message and 'charge_mix_param = 0.025' in message for message in _reports(node))
    assert results['labelled'].configurations.metadata[0]['source_calc_uuid'] == second.uuid


def test_missing_species_gives_up_with_named_exit_code(aiida_code_installed, tmp_path):
    inputs = aims_inputs(mock_aims_code(aiida_code_installed), water_structure())
    inputs.pop('species')
    inputs['species_dir'] = orm.Str(str(tmp_path))
    _, node = run_get_node(AimsBaseWorkChain, aims=inputs)
    assert node.exit_status == AimsBaseWorkChain.exit_codes.ERROR_MISSING_SPECIES.status
    assert len(node.called) == 1


class _FakeCalc:
    """Just what the SCF handler reads from a failed calculation."""

    pk = 0
    process_label = 'AimsCalculation'


def _handler_chain(parameters, allow_smearing=False):
    """Run the SCF handler repeatedly on a work chain instance until it gives up; return the parameter history."""
    from aiida.engine.utils import instantiate_process
    from aiida.manage import get_manager

    process = instantiate_process(
        get_manager().get_runner(), AimsBaseWorkChain,
        aims=aims_inputs(
            orm.InstalledCode(computer=orm.load_computer('localhost'), filepath_executable='/bin/true').store(),
            water_structure(), parameters,
        ),
        allow_smearing_change=orm.Bool(allow_smearing),
    )
    process.setup()
    history = []
    for _ in range(6):
        report = AimsBaseWorkChain.handle_scf_not_converged.__wrapped__(process, _FakeCalc())
        if report.exit_code.status:
            return history, report.exit_code
        history.append(process.ctx.inputs.parameters.get_dict())
    raise AssertionError('the SCF handler never gave up')


def test_scf_ladder_gives_up_cleanly(aiida_localhost):
    history, exit_code = _handler_chain({'xc': 'pbe', 'charge_mix_param': 0.05, 'sc_iter_limit': 100})
    assert [h['charge_mix_param'] for h in history] == [0.025, 0.0125]
    assert [h['sc_iter_limit'] for h in history] == [150, 225]
    assert all('occupation_type' not in h for h in history)  # smearing untouched by default: labels stay comparable
    assert exit_code.status == AimsBaseWorkChain.exit_codes.ERROR_SCF_UNRECOVERABLE.status


def test_scf_ladder_raises_smearing_only_when_allowed(aiida_localhost):
    history, _ = _handler_chain({'xc': 'pbe', 'charge_mix_param': 0.05}, allow_smearing=True)
    assert history[-1]['occupation_type'] == 'gaussian 0.1'


@pytest.mark.parametrize('protocol, species, accuracy', [('fast', 'light', 1e-4), ('moderate', 'intermediate', 1e-5),
                                                         ('precise', 'tight', 1e-6)])
def test_builder_from_protocol(aiida_localhost, protocol, species, accuracy):
    code = orm.InstalledCode(computer=aiida_localhost, filepath_executable='/opt/aims/bin/aims.x').store()
    builder = AimsBaseWorkChain.get_builder_from_protocol(
        code, silicon_structure(), protocol=protocol, species_root='/opt/aims/species_defaults/defaults_2020',
        overrides={'parameters': {'xc': 'pw-lda'}}, options={'resources': {'num_machines': 2}},
    )
    parameters = builder.aims.parameters.get_dict()
    assert builder.aims.species_dir.value == f'/opt/aims/species_defaults/defaults_2020/{species}'
    assert parameters['sc_accuracy_rho'] == accuracy and parameters['xc'] == 'pw-lda'
    assert parameters['relativistic'] == 'atomic_zora scalar'
    assert builder.kpoints_distance.value > 0 and builder.aims.metadata.options.resources == {'num_machines': 2}


def test_protocol_needs_a_species_source(aiida_localhost):
    code = orm.InstalledCode(computer=aiida_localhost, filepath_executable='/opt/aims/bin/aims.x').store()
    with pytest.raises(ValueError, match='species_root'):
        AimsBaseWorkChain.get_builder_from_protocol(code, water_structure())
    builder = AimsBaseWorkChain.get_builder_from_protocol(code, water_structure(), overrides={'species': species_folder()})
    assert 'kpoints_distance' not in builder


@pytest.mark.daemon
def test_daemon_runs_protocol_builder(aiida_code_installed, submit_and_await):
    code = mock_aims_code(aiida_code_installed)
    builder = AimsBaseWorkChain.get_builder_from_protocol(
        code, water_structure(), protocol='fast', overrides={'species': species_folder()},
        options={'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1}},
    )
    node = submit_and_await(builder, timeout=120)
    assert node.is_finished_ok, node.exit_message
    assert node.outputs.labelled.configurations.metadata[0]['label_settings']['occupation_type'] == 'gaussian 0.01'


class _FakeKilledCalc:
    """What the walltime handler reads from a calculation killed at its time limit (no real FHI-aims run)."""

    pk = 1
    process_label = 'AimsCalculation'

    def __init__(self, parameters, remote, retrieved):
        from aiida.common import AttributeDict

        self.inputs = AttributeDict({'parameters': orm.Dict(parameters), 'structure': water_structure()})
        self.outputs = AttributeDict({'remote_folder': remote, 'retrieved': retrieved})

    @staticmethod
    def get_option(name):
        return {'max_wallclock_seconds': 3600}[name]


def _walltime_killed(aiida_localhost, parameters):
    """An AimsBaseWorkChain set up for ``parameters`` and a stand-in for its calculation killed at the walltime."""
    from aiida.engine.utils import instantiate_process
    from aiida.manage import get_manager

    process = instantiate_process(
        get_manager().get_runner(), AimsBaseWorkChain,
        aims=aims_inputs(orm.InstalledCode(computer=aiida_localhost, filepath_executable='/bin/true').store(),
                         water_structure(), parameters),
    )
    process.setup()
    remote = orm.RemoteData(computer=aiida_localhost, remote_path='/tmp/killed-run')
    return process, _FakeKilledCalc(parameters, remote, orm.FolderData())


def test_walltime_handler_gives_more_time_and_reads_the_restart(aiida_localhost):
    process, calc = _walltime_killed(aiida_localhost, {'xc': 'pbe', 'elsi_restart': 'write 5'})
    remote = calc.outputs.remote_folder
    report = AimsBaseWorkChain.handle_out_of_walltime.__wrapped__(process, calc)
    assert report.do_break and not report.exit_code.status
    assert process.ctx.inputs.metadata['options']['max_wallclock_seconds'] == 5400
    assert process.ctx.inputs.parent_folder is remote
    assert process.ctx.inputs.parameters.get_dict()['elsi_restart'] == 'read_and_write 5'


def test_walltime_handler_continues_a_relaxation_from_the_restart_structure(aiida_localhost):
    process, calc = _walltime_killed(aiida_localhost, {'xc': 'pbe', 'relax_geometry': 'bfgs 1e-2'})
    restart = water_structure(shift=0.05)
    calc.outputs['restart_structure'] = restart  # what the parser made of geometry.in.next_step
    report = AimsBaseWorkChain.handle_out_of_walltime.__wrapped__(process, calc)
    assert report.do_break and not report.exit_code.status
    assert process.ctx.inputs.structure is restart


def test_geometry_mismatch_is_not_retried(aiida_code_installed):
    # An MD keyword makes FHI-aims (the mock replays a real water MD) label another geometry: a rerun would too.
    inputs = aims_inputs(mock_aims_code(aiida_code_installed), water_structure(),
                         {'xc': 'pbe', 'relativistic': 'atomic_zora scalar', 'md_run': '0.005 NVE'})
    _, node = run_get_node(AimsBaseWorkChain, aims=inputs)
    assert node.exit_status == AimsBaseWorkChain.exit_codes.ERROR_GEOMETRY_MISMATCH.status
    assert len(node.called) == 1


def test_relaxation_still_runs_outside_labelling(aiida_code_installed):
    # Only alml.label refuses run-changing keywords; alml.aims.base relaxes (the mock replays data/aims/relax.out).
    inputs = aims_inputs(mock_aims_code(aiida_code_installed), silicon_structure(a=5.806),
                         {'xc': 'pbe', 'relativistic': 'atomic_zora scalar', 'relax_geometry': 'bfgs 1e-2'})
    results, node = run_get_node(AimsBaseWorkChain, aims=inputs, kpoints_distance=orm.Float(0.3))
    assert node.is_finished_ok, node.exit_message
    assert results['output_structure'].get_ase().positions[1] == pytest.approx([1.35477068] * 3)


def test_kpoints_mesh_is_aiidas_density_rule():
    from aiida_alml.workflows.aims_base import kpoints_mesh

    cell = silicon_structure(a=5.806).cell
    kpoints = orm.KpointsData()
    kpoints.set_cell(cell)
    kpoints.set_kpoints_mesh_from_density(0.2)
    assert kpoints_mesh(cell, 0.2) == list(kpoints.get_kpoints_mesh()[0]) == [10, 10, 10]
