"""``aiida-alml launch | status | plot | compare``: run, watch and compare active-learning campaigns."""

from __future__ import annotations

import time

import click

from aiida_alml.cli.options import PROFILE, load_profile
from aiida_alml.cli.progress import follow
from aiida_alml.workflows.links import ACTIVE_LEARNING


def _load_campaign_node(pk):
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    try:
        node = orm.load_node(pk)
    except NotExistent:
        raise click.ClickException(f'no node with PK/UUID {pk}')
    if node.process_type != ACTIVE_LEARNING:
        raise click.ClickException(f'node {pk} is a {type(node).__name__} ({node.process_type}), not an '
                                   'alml.active_learning run')
    return node


def show_status(node) -> None:
    from aiida_alml.progress import current_stage, format_table, iteration_table, worst_validation_energy_rmse
    from aiida_alml.workflows.active_learning_inputs import budget_line, initial_label_count

    state = node.process_state.value if node.process_state else 'created'
    click.echo(f'{node.process_label}<{node.pk}>  state: {state}  stage: {current_stage(node)}')
    click.echo(budget_line(node.inputs.max_labels.value, initial_label_count(node.inputs)))
    if 'e0s' in node.outputs:
        e0s = ', '.join(f'{element} {energy:.4f}' for element, energy in node.outputs.e0s.get_dict().items())
        click.echo(f'E0s (isolated atoms, labelled with the reference): {e0s} eV')
    click.echo(format_table(iteration_table(node)))
    if node.is_terminated:
        if 'learning_curve' in node.outputs:
            curve = node.outputs.learning_curve.get_dict()
            failed = f' ({curve["labels_failed"]} failed)' if curve.get('labels_failed') else ''
            click.echo(f'stopped: {curve["stop_reason"]}; {curve["labels_used"]} reference calculations{failed}; '
                       f'calibration factor {curve["final_calibration_factor"]:.2f}')
            last = curve['iterations'][-1] if curve['iterations'] else {}
            if last.get('not_converged_because'):
                click.echo(f'last iteration did not count towards convergence: '
                           f'{"; ".join(last["not_converged_because"])}')
            final = curve.get('final_training')
            if final:
                test = (f', held-out force RMSE {final["test_force_rmse"]:.3f} eV/Å (per component)'
                        if 'test_force_rmse' in final else '')
                if final.get('test_energy_rmse_per_atom') is not None:
                    test += f', energy RMSE {final["test_energy_rmse_per_atom"] * 1000:.1f} meV/atom'
                valid = worst_validation_energy_rmse(final.get('train_metrics'))
                if valid is not None:
                    test += f' (validation energy RMSE {valid * 1000:.1f} meV/atom, worst member)'
                state = 'FAILED' if final.get('failed') else f'{final["labels_total"]} configurations{test}'
                click.echo(f'final training on the whole dataset: {state}')
            validation = curve.get('validation')
            if validation:
                verdict = 'stable' if validation['stable'] else f'NOT stable: {"; ".join(validation["problems"])}'
                drifts = [run.get('nve_drift_per_ps') for run in validation.get('runs', {}).values()]
                drift = [value for value in drifts if value is not None]
                detail = f' (NVE drift {max(drift, key=abs):+.2g} eV/atom/ps)' if drift else ''
                click.echo(f'validation MD of the final committee: {verdict}{detail}')
        if node.exit_status:
            click.echo(f'exit status {node.exit_status}: {node.exit_message}')


def follow_campaign(node, interval: float = 5.0, timeout: float | None = None) -> None:
    """Print a progress line whenever the stage changes, until the campaign ends."""
    from aiida_alml.progress import current_stage

    follow(node, current_stage, lambda _: 'finished', interval=interval, timeout=timeout, noun='campaign',
           watch_with='aiida-alml status')


@click.command()
@PROFILE
@click.argument('config', type=click.Path(exists=True, dir_okay=False))
@click.option('--wait/--no-wait', default=False, show_default=True, help='Follow the campaign until it ends.')
@click.option('--plot', 'plot_path', type=click.Path(dir_okay=False), default=None,
              help='With --wait: write the figures here at the end.')
def launch(profile_name, config, wait, plot_path):
    """Submit the campaign described in CONFIG (YAML; see docs/campaign.md) to the daemon.

    With `protocol: fast|moderate|precise` the file's keys are laid over that protocol's inputs, the same inputs
    ActiveLearningWorkChain.get_builder_from_protocol gives (docs/python.md).
    """
    load_profile(profile_name)
    from aiida.engine import submit
    from aiida.engine.daemon.client import get_daemon_client

    from aiida_alml.campaign import CampaignError, load_campaign
    from aiida_alml.workflows.active_learning import ActiveLearningWorkChain
    from aiida_alml.workflows.active_learning_inputs import budget_line, initial_label_count

    # The file is converted and validated completely first: a bad input is the answer even when no daemon runs.
    try:
        inputs = load_campaign(config)
    except CampaignError as exception:
        raise click.ClickException(f'{config}: {exception}')
    budget = inputs['max_labels'].value if 'max_labels' in inputs else ActiveLearningWorkChain.spec().inputs[
        'max_labels'].default().value
    click.echo(budget_line(budget, initial_label_count(inputs)))
    if not get_daemon_client().is_daemon_running:
        raise click.ClickException('the daemon is not running: start it with `verdi daemon start`')
    try:
        node = submit(ActiveLearningWorkChain, **inputs)
    except ValueError as exception:
        raise click.ClickException(f'{config}: {exception}')
    click.echo(f'Submitted {node.process_label}<{node.pk}>. Watch it with: aiida-alml status {node.pk}')
    if wait:
        follow_campaign(node)
        show_status(node)
        if plot_path:
            from aiida_alml.plotting import plot_campaign

            click.echo(f'Figures: {plot_campaign(node, plot_path)}')


@click.command()
@PROFILE
@click.argument('pk')
@click.option('--watch', is_flag=True, help='Refresh every few seconds until the campaign ends.')
def status(profile_name, pk, watch):
    """Per-iteration table and current stage of the campaign PK."""
    load_profile(profile_name)
    node = _load_campaign_node(pk)
    show_status(node)
    while watch and not node.is_terminated:
        time.sleep(5)
        click.echo()
        show_status(node)


@click.command()
@PROFILE
@click.argument('pk')
@click.option('-o', '--output', type=click.Path(dir_okay=False), default='campaign.png', show_default=True)
def plot(profile_name, pk, output):
    """Learning curve, σ against the true error and uncertainty histograms of the campaign PK (PNG)."""
    load_profile(profile_name)
    from aiida_alml.plotting import plot_campaign

    click.echo(f'Wrote {plot_campaign(_load_campaign_node(pk), output)}')


@click.command()
@PROFILE
@click.argument('pks', nargs=-1, required=True)
@click.option('--target', type=float, default=None,
              help='Held-out force RMSE (eV/Å) to reach; default: the largest of the campaigns\' best errors.')
@click.option('-o', '--output', type=click.Path(dir_okay=False), default='compare.png', show_default=True)
def compare(profile_name, pks, target, output):
    """Paired learning curves of campaigns PKS on their common held-out test set (table and PNG)."""
    load_profile(profile_name)
    from aiida_alml.comparison import compare_curves, format_comparison, plot_comparison, same_test_set, selection_mode

    if len(pks) < 2:
        raise click.ClickException('give at least two campaigns to compare')
    nodes = {}
    for pk in pks:
        node = _load_campaign_node(pk)
        if 'learning_curve' not in node.outputs:
            raise click.ClickException(f'campaign {pk} has no learning curve yet (state: {node.process_state.value})')
        nodes[f'{node.pk} ({selection_mode(node)})'] = node
    problem = same_test_set(nodes)
    if problem:
        raise click.ClickException(f'cannot compare: {problem}')
    try:
        comparison = compare_curves({name: node.outputs.learning_curve.get_dict() for name, node in nodes.items()},
                                    target)
    except ValueError as error:
        raise click.ClickException(str(error))
    click.echo(format_comparison(comparison))
    click.echo(f'Figure: {plot_comparison(comparison, output)}')
