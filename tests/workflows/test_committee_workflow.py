"""``alml.committee`` (input checks, bootstrap provenance) and ``alml.explore`` (a structure x condition grid)."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import run_get_node

from aiida_alml.workflows.committee import CommitteeWorkChain, bootstrap_resample
from aiida_alml.workflows.explore import ExploreWorkChain


def _committee_inputs(tiny_mace_inputs, **extra):
    return {'train': tiny_mace_inputs(), **extra}


def test_committee_of_one_is_refused(tiny_mace_inputs):
    with pytest.raises(ValueError, match='num_members: a committee needs at least two members'):
        run_get_node(CommitteeWorkChain, **_committee_inputs(tiny_mace_inputs, num_members=orm.Int(1)))


def test_seeds_must_match_the_members(tiny_mace_inputs):
    with pytest.raises(ValueError, match=r'seeds: 3 seeds given for num_members=2'):
        run_get_node(
            CommitteeWorkChain, **_committee_inputs(tiny_mace_inputs, num_members=orm.Int(2), seeds=orm.List([1, 2, 3]))
        )
    with pytest.raises(ValueError, match='seeds: must be distinct'):
        run_get_node(
            CommitteeWorkChain, **_committee_inputs(tiny_mace_inputs, num_members=orm.Int(2), seeds=orm.List([4, 4]))
        )


def test_training_errors_reach_the_committee(tiny_mace_inputs):
    inputs = _committee_inputs(tiny_mace_inputs, num_members=orm.Int(2))
    inputs['train']['parameters'] = orm.Dict({'num_chanels': 8})
    with pytest.raises(ValueError, match='did you mean num_channels'):
        run_get_node(CommitteeWorkChain, **inputs)


def test_bootstrap_resample_is_recorded(cu_training_set):
    first = bootstrap_resample(cu_training_set, orm.Int(1))
    second = bootstrap_resample(cu_training_set, orm.Int(2))
    assert len(first) == len(cu_training_set)
    # The calcfunction is the creator, with the original set and the seed as its inputs.
    creator = first.creator
    assert creator.process_label == 'bootstrap_resample'
    inputs = {link.link_label: link.node for link in creator.base.links.get_incoming(link_type=LinkType.INPUT_CALC)}
    assert inputs['training_set'].uuid == cu_training_set.uuid and inputs['seed'].value == 1
    # The isolated atom (E0) is always kept once; the rest is drawn with replacement, so repeats occur.
    configurations = first.configurations
    assert sum(meta.get('config_type') == 'IsolatedAtom' for meta in configurations.metadata) == 1
    assert first.content_hash != second.content_hash
    energies = np.round(configurations.energy, 10)
    assert len(np.unique(energies)) < len(energies)


@pytest.mark.slow
def test_explore_grid(md_code, trained_committee):
    from helpers.mace import cu_cell

    _, models = trained_committee
    small = cu_cell((2, 1, 1))
    small.rattle(0.05, seed=1)
    big = cu_cell((2, 2, 1))
    big.rattle(0.05, seed=2)
    conditions = [
        {'ensemble': 'nvt_langevin', 'temperature': 300.0},
        {'ensemble': 'npt_berendsen', 'temperature': 500.0, 'pressure': 1.0},
    ]
    results, node = run_get_node(
        ExploreWorkChain,
        structures={'small': orm.StructureData(ase=small), 'big': orm.StructureData(ase=big)},
        conditions=orm.List(conditions),
        parameters=orm.Dict({'steps': 10, 'sample_interval': 5, 'timestep': 1.0}),
        md={
            'code': md_code,
            'models': {f'member_{i}': model for i, model in enumerate(models)},
            'metadata': {'options': {'resources': {'num_machines': 1}, 'environment_variables': {'OMP_NUM_THREADS': '1'}}},
        },
    )
    assert node.is_finished_ok, node.exit_message
    labels = {'big_c0', 'big_c1', 'small_c0', 'small_c1'}
    assert set(results['trajectories']) == labels and set(results['summaries']) == labels
    overview = results['overview'].get_dict()
    assert overview['small_c1']['parameters']['ensemble'] == 'npt_berendsen'
    for label in labels:
        assert results['summaries'][label]['steps_done'] == 10
        n_atoms = 8 if label.startswith('small') else 16
        assert results['trajectories'][label].get_array('force_sigma').shape == (3, n_atoms)
    # NPT changes the cell, NVT keeps it.
    npt, nvt = results['trajectories']['big_c1'].get_cells(), results['trajectories']['big_c0'].get_cells()
    assert not np.allclose(npt[0], npt[-1]) and np.allclose(nvt[0], nvt[-1])


def test_explore_checks_every_condition(md_code, tmp_path):
    from helpers.mace import cu_cell, model_file

    from aiida_alml.data import MlipModel

    models = {}
    for index in range(2):
        path = model_file(tmp_path / f'm{index}', seed=index)
        models[f'member_{index}'] = MlipModel(file=path)
    with pytest.raises(ValueError, match=r'conditions\[1\]: temperature must be positive'):
        run_get_node(
            ExploreWorkChain,
            structures={'cu': orm.StructureData(ase=cu_cell())},
            conditions=orm.List([{'temperature': 300.0}, {'temperature': 0.0}]),
            parameters=orm.Dict({'steps': 10}),
            md={'code': md_code, 'models': models},
        )
