"""``aiida-alml export --format mace``: MACE's own model files next to ours, which MACE's calculator loads and which
give the energies and forces our loader gives; the safety checks of export hold for them too (issue 23)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from aiida import get_profile, orm
from aiida.common.links import LinkType
from click.testing import CliRunner

from aiida_alml.cli.inspect import export
from aiida_alml.data import ConfigurationSet, MlipModel
from aiida_alml.workflows.links import ACTIVE_LEARNING

pytestmark = pytest.mark.storage


def _campaign(folder, labelled, members=2):
    """A finished alml.active_learning node with the outputs export reads."""
    from helpers.mace import model_file

    loop = orm.WorkChainNode(process_type=ACTIVE_LEARNING)
    loop.set_process_state('finished')
    loop.set_exit_status(0)
    loop.store()
    outputs = {
        **{f'models__member_{i}': MlipModel(model_file(folder / f'member_{i}.alml', seed=i)) for i in range(members)},
        'dataset': ConfigurationSet.from_ase(labelled),
        'learning_curve': orm.Dict({'iterations': [], 'stop_reason': 'converged'}),
    }
    for label, node in outputs.items():
        node.store()
        node.base.links.add_incoming(loop, LinkType.RETURN, label)
    loop.seal()
    return loop, outputs


def _export(loop, target, *options):
    return CliRunner().invoke(export, ['-p', get_profile().name, str(loop.pk), str(target), *options])


def test_mace_files_load_in_maces_calculator_and_agree_with_ours(tmp_path, emt_labelled):
    from mace.calculators import MACECalculator

    from aiida_alml.engines.committee import CommitteeCalculator

    loop, outputs = _campaign(tmp_path, emt_labelled)
    target = tmp_path / 'export'
    result = _export(loop, target, '--format', 'mace')
    assert result.exit_code == 0, result.output
    assert 'pickle' in result.output and 'runs the code' in result.output
    members = [target / 'models' / f'member_{i}' for i in range(2)]
    for i, folder in enumerate(members):
        # Our file is still exported byte for byte; MACE's file sits beside it.
        exported = folder / f'member_{i}.alml'
        assert hashlib.sha256(exported.read_bytes()).hexdigest() == outputs[f'models__member_{i}'].sha256
        assert (folder / f'member_{i}.model').is_file()

    stock = MACECalculator(model_paths=[str(folder / f'{folder.name}.model') for folder in members], device='cpu',
                           default_dtype='float64')
    # Our loader, evaluated as MACE does (no re-formulation), and with the engine's default fast paths.
    exact = CommitteeCalculator(model_paths=[str(folder / f'{folder.name}.alml') for folder in members],
                                radial='mlp', convolution='edges', product_basis='mace')
    fast = CommitteeCalculator(model_paths=[str(folder / f'{folder.name}.alml') for folder in members])
    for atoms in emt_labelled[:3]:
        atoms = atoms.copy()
        atoms.calc = stock
        atoms.get_potential_energy()
        reference = dict(stock.results)
        for ours, tolerance in ((exact, 1e-9), (fast, 1e-6)):
            ours.calculate(atoms, ['energy', 'forces'])
            np.testing.assert_allclose(ours.results['energy_comm'], reference['energy_comm'], atol=tolerance)
            np.testing.assert_allclose(ours.results['forces_comm'], reference['forces_comm'], atol=tolerance)
            np.testing.assert_allclose(ours.results['forces'], reference['forces'], atol=tolerance)
            np.testing.assert_allclose(ours.results['forces_var'], reference['forces_var'], atol=tolerance)


def test_default_format_writes_no_pickle(tmp_path, emt_labelled):
    loop, _ = _campaign(tmp_path, emt_labelled, members=1)
    result = _export(loop, tmp_path / 'export')
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in (tmp_path / 'export' / 'models' / 'member_0').iterdir()) == ['member_0.alml']
    assert 'pickle' not in result.output


def test_mace_file_is_never_overwritten(tmp_path, emt_labelled):
    """An existing MACE file is refused like any other existing file: before anything is written."""
    loop, _ = _campaign(tmp_path, emt_labelled, members=1)
    folder = tmp_path / 'export' / 'models' / 'member_0'
    folder.mkdir(parents=True)
    (folder / 'member_0.model').write_bytes(b'mine')
    result = _export(loop, tmp_path / 'export', '--format', 'mace')
    assert result.exit_code != 0 and 'would overwrite' in result.output and 'member_0.model' in result.output
    assert (folder / 'member_0.model').read_bytes() == b'mine'
    assert sorted(path.name for path in (tmp_path / 'export').rglob('*') if path.is_file()) == ['member_0.model']


def test_help_says_the_files_are_pickles():
    result = CliRunner().invoke(export, ['--help'])
    assert result.exit_code == 0
    assert 'PICKLES' in result.output and 'runs' in result.output
