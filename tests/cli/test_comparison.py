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
