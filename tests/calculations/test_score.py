"""``alml.score``: the committee evaluated on labelled frames in a job (the daemon's machine loads no model), and the
errors computed from its predictions by ``score_predictions``."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_alml.calculations.score import ScoreCalculation
from aiida_alml.data import ConfigurationSet
from aiida_alml.workflows.functions import score_predictions


@pytest.fixture
def held_out(cu_training_set):
    """Eight labelled copper cells of two sizes (4 and 8 atoms) that the committee never saw."""
    from helpers.mace import make_cu_dataset

    return ConfigurationSet.from_ase(make_cu_dataset(8, seed=7)).store()


def _in_process(models, frames: ConfigurationSet) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """(energy, forces, force σ) of every frame with the committee calculator run here."""
    from aiida_alml.engines.committee import CommitteeCalculator

    with contextlib.ExitStack() as stack:
        paths = [str(stack.enter_context(model.verified_path())) for model in models]
        calculator = CommitteeCalculator(model_paths=paths, default_dtype=models[0].dtype)
        results = []
        for atoms in frames.to_ase():
            atoms.calc = calculator
            results.append((atoms.get_potential_energy(), atoms.get_forces(), calculator.results['force_sigma']))
    return results


def test_scoring_job_predicts_what_the_committee_predicts_here(md_code, trained_committee, held_out):
    _, models = trained_committee
    results, node = run_get_node(ScoreCalculation, code=md_code, frames=held_out,
                                 models={f'member_{i}': model for i, model in enumerate(models)})
    assert node.is_finished_ok, node.exit_message
    predictions = results['predictions']
    assert predictions.get_array('n_atoms').tolist() == held_out.configurations.n_atoms.tolist()
    expected = _in_process(models, held_out)
    np.testing.assert_allclose(predictions.get_array('energy'), [e for e, _, _ in expected], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(predictions.get_array('forces'), np.concatenate([f for _, f, _ in expected]),
                               rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(predictions.get_array('force_sigma'), np.concatenate([s for _, _, s in expected]),
                               rtol=1e-6, atol=1e-9)

    # The errors against the labels, from the predictions, as an independent numpy computation gives them.
    scores = score_predictions(held_out, predictions).get_dict()
    configurations = held_out.configurations
    sizes = np.asarray(configurations.n_atoms)
    errors = (np.array([e for e, _, _ in expected]) - configurations.energy) / sizes
    differences = np.concatenate([f for _, f, _ in expected]) - configurations.forces
    assert scores['num_configurations'] == 8
    assert scores['energy_rmse_per_atom'] == pytest.approx(np.sqrt(np.mean(errors**2)), rel=1e-6)
    assert scores['energy_mean_error_per_atom'] == pytest.approx(errors.mean(), rel=1e-6, abs=1e-12)
    assert scores['force_rmse'] == pytest.approx(np.sqrt(np.mean(differences**2)), rel=1e-6)


def test_scoring_job_refuses_frames_with_an_element_the_committee_lacks(md_code, trained_committee):
    from ase.build import bulk
    from ase.calculators.emt import EMT

    _, models = trained_committee
    gold = bulk('Au', 'fcc', a=4.08, cubic=True)
    gold.calc = EMT()
    gold.get_potential_energy()
    frames = ConfigurationSet.from_ase([gold])
    with pytest.raises(ValueError, match=r"elements \['Au'\] the committee was not trained on"):
        run_get_node(ScoreCalculation, code=md_code, frames=frames,
                     models={f'member_{i}': model for i, model in enumerate(models)})


def test_scoring_device_is_checked(md_code, trained_committee, held_out):
    _, models = trained_committee
    with pytest.raises(ValueError, match=r"device: must be cpu, cuda or cuda:N, got 'gpu; rm'"):
        run_get_node(ScoreCalculation, code=md_code, frames=held_out, device=orm.Str('gpu; rm'),
                     models={f'member_{i}': model for i, model in enumerate(models)})
