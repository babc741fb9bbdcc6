"""``aiida-alml demo``: a whole campaign through the daemon (copper with EMT, or liquid water with GFN2-xTB), or just
label rattled/strained copper cells with EMT, and show the result."""

from __future__ import annotations

import click
import numpy as np

from aiida_alml.cli.options import PROFILE, load_profile
from aiida_alml.cli.progress import follow


def copper_cells(count: int, seed: int) -> list:
    """Bulk copper cells of 4 to 32 atoms, one with a vacancy, perturbed at random."""
    from ase.build import bulk

    from aiida_alml.atoms.perturb import perturbed_copies

    cubic = bulk('Cu', 'fcc', a=3.61, cubic=True)
    vacancy = cubic.repeat((2, 2, 1))
    del vacancy[5]
    templates = [cubic, cubic.repeat((2, 1, 1)), vacancy, cubic.repeat((2, 2, 2))]
    return perturbed_copies(templates, count, rattle_std=0.08, max_strain=0.04, seed=seed)


def _process_state(node) -> str:
    """``<label><pk>: <state>``, with the scheduler's state of a job while it has one."""
    state = node.process_state.value if node.process_state else 'created'
    job_state = node.get_scheduler_state() if hasattr(node, 'get_scheduler_state') else None
    return f'{node.process_label}<{node.pk}>: {state}' + (f' / scheduler: {job_state.value}' if job_state else '')


def _final_state(node) -> str:
    return f'{node.process_label}<{node.pk}>: {node.process_state.value}'


def _summary_table(labelled, report: dict) -> str:
    conf = labelled.configurations
    rows = {}
    for index in range(len(conf)):
        n = int(conf.n_atoms[index])
        forces = np.linalg.norm(conf.forces[conf.atom_slice(index)], axis=1)
        pressure = -conf.stress[index][:3].mean() * 160.21766  # eV/Å^3 -> GPa
        row = rows.setdefault(n, {'count': 0, 'e': [], 'f': 0.0, 'p': []})
        row['count'] += 1
        row['e'].append(conf.energy[index] / n)
        row['f'] = max(row['f'], float(forces.max()))
        row['p'].append(pressure)
    lines = [
        f'{"atoms":>6} {"cells":>6} {"E/atom min..max (eV)":>24} {"max |F| (eV/Å)":>15} {"P mean (GPa)":>13}',
    ]
    for n in sorted(rows):
        row = rows[n]
        lines.append(
            f'{n:>6} {row["count"]:>6} {min(row["e"]):>11.4f}..{max(row["e"]):<11.4f} {row["f"]:>15.3f} '
            f'{np.mean(row["p"]):>13.2f}'
        )
    times = [record['wall_time'] for record in report['configurations']]
    lines.append(
        f'{len(conf)} of {report["num_configurations"]} labelled, {report["num_failed"]} failed; '
        f'{sum(times) * 1000:.1f} ms of calculator time on the compute node'
    )
    return '\n'.join(lines)


def _check_against_in_process(structures, labelled) -> tuple[float, float]:
    """Largest deviation of the daemon's labels from EMT evaluated here."""
    from ase.calculators.emt import EMT

    d_energy = d_forces = 0.0
    for atoms, reference in zip(structures.to_ase(), labelled.to_ase()):
        atoms.calc = EMT()
        d_energy = max(d_energy, abs(atoms.get_potential_energy() - reference.get_potential_energy()))
        d_forces = max(d_forces, float(np.abs(atoms.get_forces() - reference.get_forces()).max()))
    return d_energy, d_forces


#: The demo campaigns: system -> (campaign file in the package, label of the work chain).
DEMO_CAMPAIGNS = {
    'copper': ('protocols/demo/copper_vacancy.yaml', 'demo: copper with a vacancy'),
    'water': ('protocols/demo/water_xtb.yaml', 'demo: liquid water, GFN2-xTB'),
}


@click.command()
@PROFILE
@click.option('--system', type=click.Choice(sorted(DEMO_CAMPAIGNS)), default='copper', show_default=True,
              help='copper: a vacancy in bulk copper, EMT (about 10 minutes); water: eight molecules of liquid water, '
                   'GFN2-xTB through tblite (a real electronic-structure reference).')
@click.option('--label-only', is_flag=True, help='Only label COUNT perturbed copper cells with EMT (a quick check).')
@click.option('--count', default=50, show_default=True, type=click.IntRange(1), help='With --label-only: cells.')
@click.option('--seed', default=1, show_default=True, help='With --label-only: seed of the perturbations.')
@click.option('--wait/--no-wait', default=True, show_default=True, help='Follow the run until it ends.')
@click.option('--timeout', default=3600, show_default=True, help='Seconds to wait before giving up.')
@click.option('--plot', 'plot_path', default='alml-demo.png', show_default=True, type=click.Path(dir_okay=False),
              help='Where the figures of the campaign go.')
def demo(profile_name, system, label_only, count, seed, wait, timeout, plot_path):
    """Run a demo campaign: active learning with a tiny MACE committee of copper with a vacancy (EMT reference) or
    of liquid water (GFN2-xTB reference).

    The campaign files are aiida_alml/protocols/demo/copper_vacancy.yaml and water_xtb.yaml; `aiida-alml launch`
    runs any such file.
    """
    load_profile(profile_name)
    from aiida.engine.daemon.client import get_daemon_client

    if wait and not get_daemon_client().is_daemon_running:
        raise click.ClickException('the daemon is not running: start it with `verdi daemon start`')
    if label_only:
        _label_demo(count, seed, wait, timeout)
    else:
        _campaign_demo(system, wait, timeout, plot_path)


def _campaign_demo(system, wait, timeout, plot_path):
    import pathlib

    from aiida.common.exceptions import InvalidOperation
    from aiida.engine import submit

    import aiida_alml
    from aiida_alml.campaign import CampaignError, load_campaign
    from aiida_alml.cli.campaign import follow_campaign, show_status
    from aiida_alml.workflows.active_learning import ActiveLearningWorkChain

    campaign, label = DEMO_CAMPAIGNS[system]
    config = pathlib.Path(aiida_alml.__file__).parent / campaign
    try:
        inputs = load_campaign(config)
    except CampaignError as exception:
        raise click.ClickException(f'{exception}\nRun `aiida-alml setup` first: it creates the codes the demo uses.')
    inputs['metadata'] = {'label': label}
    try:
        node = submit(ActiveLearningWorkChain, **inputs)
    except InvalidOperation as exception:  # e.g. the ZeroMQ broker runs inside the daemon: no daemon, no submit
        raise click.ClickException(str(exception))
    except ValueError as exception:
        raise click.ClickException(f'{config}: {exception}')
    click.echo(f'Submitted {node.process_label}<{node.pk}> (campaign file {config}).')
    if not wait:
        click.echo(f'Watch it with: aiida-alml status {node.pk}')
        return
    follow_campaign(node, interval=2.0, timeout=timeout)
    click.echo()
    show_status(node)
    from aiida_alml.plotting import plot_campaign

    click.echo(f'\nFigures: {plot_campaign(node, plot_path)}')
    click.echo(f'Look closer: verdi process report {node.pk}   aiida-alml status {node.pk}   '
               f'verdi node show {node.outputs.dataset.pk if "dataset" in node.outputs else node.pk}')


def _label_demo(count, seed, wait, timeout):
    from aiida import orm
    from aiida.common.exceptions import InvalidOperation, NotExistent
    from aiida.engine import submit

    from aiida_alml.calculations.ase import AseLabelCalculation
    from aiida_alml.data import ConfigurationSet

    try:
        code = orm.load_code('alml-label@localhost')
    except NotExistent:
        raise click.ClickException('code alml-label@localhost does not exist: run `aiida-alml setup` first')

    images = copper_cells(count, seed)
    structures = ConfigurationSet.from_ase(images, metadata=[{'demo_seed': seed, 'index': i} for i in range(count)])
    structures.label = f'demo: {count} perturbed Cu cells'
    structures.store()
    click.echo(f'Stored {count} copper cells ({structures.total_atoms} atoms) as ConfigurationSet<{structures.pk}>.')

    builder = AseLabelCalculation.get_builder()
    builder.code = code
    builder.structures = structures
    builder.calculator = orm.Dict({'name': 'emt'})
    builder.properties = orm.List(['energy', 'forces', 'stress'])
    builder.metadata.label = 'demo: EMT labels of perturbed Cu'
    try:
        node = submit(builder)
    except InvalidOperation as exception:  # e.g. the ZeroMQ broker runs inside the daemon: no daemon, no submit
        raise click.ClickException(str(exception))
    click.echo(f'Submitted {node.process_label}<{node.pk}> to the daemon.')
    if not wait:
        click.echo(f'Follow it with: verdi process show {node.pk}')
        return
    follow(node, _process_state, _final_state, interval=1.0, timeout=timeout, noun='process',
           watch_with='verdi process show')
    if not node.is_finished_ok:
        raise click.ClickException(
            f'{node.process_label}<{node.pk}> ended with exit status {node.exit_status}: {node.exit_message}. '
            f'See `verdi process report {node.pk}`.'
        )
    labelled = node.outputs.labelled
    click.echo('\n' + _summary_table(labelled, node.outputs.output_parameters.get_dict()))
    d_energy, d_forces = _check_against_in_process(structures, labelled)
    click.echo(f'Check against EMT evaluated here: max |dE| = {d_energy:.1e} eV, max |dF| = {d_forces:.1e} eV/Å')
    click.echo(
        f'\nLook closer:\n  verdi process show {node.pk}\n  verdi node show {labelled.pk}   '
        f'# the labelled ConfigurationSet\n  verdi node graph generate {labelled.pk}'
    )
