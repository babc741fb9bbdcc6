"""``aiida-alml compare``: paired learning curves on one held-out test set."""

import math

import pytest
from aiida import orm
from aiida.common.links import LinkType

from aiida_alml.comparison import compare_curves, labels_to_reach, plot_comparison, same_test_set
from aiida_alml.data import ConfigurationSet


def _curve(points, final=None):
    rows = [{'iteration': i, 'labels_total': n, 'test_force_rmse': f, 'test_energy_rmse_per_atom': f / 10}
            for i, (n, f) in enumerate(points)]
    curve = {'iterations': rows}
    if final:
        curve['final_training'] = {'labels_total': final[0], 'test_force_rmse': final[1]}
    return curve


def test_labels_to_reach_interpolates_and_says_never():
    points = [(10, 0.30), (20, 0.20), (30, 0.10)]
    assert labels_to_reach(points, 0.30) == 10
    assert labels_to_reach(points, 0.15) == pytest.approx(25.0)
    assert math.isinf(labels_to_reach(points, 0.05))


def test_compare_curves_counts_the_final_committee(tmp_path):
    active = _curve([(16, 0.30), (22, 0.18)], final=(28, 0.09))
    random = _curve([(16, 0.30), (22, 0.25), (28, 0.16)])
    comparison = compare_curves({'active': active, 'random': random})
    # default target: the largest of the best errors, which every campaign reaches
    assert comparison['target_force_rmse'] == 0.16
    assert comparison['labels_needed']['random'] == 28
    assert comparison['labels_needed']['active'] == pytest.approx(22 + 6 * (0.18 - 0.16) / (0.18 - 0.09))
    assert [row['stage'] for row in comparison['points']['active']] == ['iteration 0', 'iteration 1', 'final']
    assert math.isinf(compare_curves({'a': active, 'r': random}, target=0.05)['labels_needed']['r'])
    assert plot_comparison(comparison, tmp_path / 'c.png').stat().st_size > 1000
    with pytest.raises(ValueError, match='no held-out errors recorded for r'):
        compare_curves({'a': active, 'r': {'iterations': [{'iteration': 0, 'labels_total': 3}]}})


def _campaign(test_set):
    node = orm.WorkflowNode()
    if test_set is not None:
        node.base.links.add_incoming(test_set.store(), LinkType.INPUT_WORK, 'test_set')
    return node.store()


def test_campaigns_on_different_test_sets_are_refused(emt_labelled):
    first = ConfigurationSet.from_ase(emt_labelled[:3])
    again = ConfigurationSet.from_ase(emt_labelled[:3])  # another node, same content: the same test set
    other = ConfigurationSet.from_ase(emt_labelled[3:])
    assert same_test_set({'a': _campaign(first), 'b': _campaign(again)}) is None
    message = same_test_set({'a': _campaign(first), 'b': _campaign(other)})
    assert message.startswith('b was scored on test set') and '3 configurations' in message
    assert same_test_set({'a': _campaign(first), 'c': _campaign(None)}) == \
        'c has no test_set: it was never scored on held-out data'


def _return_selection_record(campaign, settings):
    """The campaign's first selection record, holding the selection settings in force."""
    record = orm.ArrayData()
    record.base.attributes.set('settings', settings)
    record.store().base.links.add_incoming(campaign, LinkType.RETURN, 'selection_records__iteration_0')


def test_selection_mode_is_read_from_the_settings_in_force():
    """A campaign that left ``mode`` out ran the default of its day: the record's settings tell, not the input."""
    from aiida_alml.comparison import selection_mode

    def campaign(given, recorded=None):
        node = orm.WorkflowNode()
        node.base.links.add_incoming(orm.Dict(given).store(), LinkType.INPUT_WORK, 'selection')
        node.store()
        if recorded is not None:
            _return_selection_record(node, recorded)
        return node

    assert selection_mode(campaign({'trust_lo': 0.1}, {'trust_lo': 0.1, 'mode': 'fps'})) == 'fps'
    assert selection_mode(campaign({'mode': 'random'}, {'mode': 'random'})) == 'random'
    assert selection_mode(campaign({'mode': 'weighted'})) == 'weighted'  # stopped before it selected anything
    assert selection_mode(campaign({'trust_lo': 0.1})) == 'default'


def _finished_campaign(test_set, curve, mode=None):
    """A stored alml.active_learning node with its test set, learning curve and (optionally) a selection record."""
    from aiida_alml.workflows.links import ACTIVE_LEARNING

    node = orm.WorkflowNode(process_type=ACTIVE_LEARNING)
    node.base.links.add_incoming(test_set if test_set.is_stored else test_set.store(), LinkType.INPUT_WORK,
                                 'test_set')
    node.base.links.add_incoming(orm.Dict({'trust_lo': 0.1}).store(), LinkType.INPUT_WORK, 'selection')
    node.set_process_state('finished')
    node.set_exit_status(0)
    node.store()
    orm.Dict(curve).store().base.links.add_incoming(node, LinkType.RETURN, 'learning_curve')
    if mode is not None:
        _return_selection_record(node, {'mode': mode})
    return node


def test_compare_command_names_each_campaign_by_its_mode_and_refuses_other_test_sets(emt_labelled, aiida_profile,
                                                                                      tmp_path):
    from click.testing import CliRunner

    from aiida_alml.cli.campaign import compare

    test_set = ConfigurationSet.from_ase(emt_labelled[:3]).store()
    active = _finished_campaign(test_set, _curve([(16, 0.30), (22, 0.18)], final=(28, 0.09)), mode='weighted')
    random = _finished_campaign(test_set, _curve([(16, 0.30), (22, 0.25), (28, 0.16)]), mode='random')
    figure = tmp_path / 'c.png'

    def run(*args):
        return CliRunner().invoke(compare, ['-p', aiida_profile.name, *map(str, args)], catch_exceptions=False)

    result = run(active.pk, random.pk, '-o', figure)
    assert result.exit_code == 0, result.output
    assert f'{active.pk} (weighted)' in result.output and f'{random.pk} (random)' in result.output
    assert figure.stat().st_size > 1000
    other = _finished_campaign(ConfigurationSet.from_ase(emt_labelled[3:]), _curve([(16, 0.2)]), mode='fps')
    refused = run(active.pk, other.pk, '-o', tmp_path / 'd.png')
    assert refused.exit_code != 0 and 'cannot compare:' in refused.output and 'was scored on test set' in refused.output
    assert not (tmp_path / 'd.png').exists()
    assert 'give at least two campaigns' in run(active.pk).output
