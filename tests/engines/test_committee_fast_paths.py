"""Tabulated radial weights and the fused convolution of ``CommitteeCalculator`` (no AiiDA needed).

Untrained MACE models with random weights stand in for trained ones: the code
paths depend on the architecture only, and these models have vector features
(``max_L=1``) and two elements, which the tiny trained test models lack.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.stress import full_3x3_to_voigt_6_stress

pytest.importorskip('mace')
pytestmark = [
    pytest.mark.filterwarnings('ignore:`torch.jit.:DeprecationWarning'),
    pytest.mark.filterwarnings('ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD:UserWarning'),
    pytest.mark.filterwarnings('ignore::SyntaxWarning'),
    pytest.mark.filterwarnings('ignore:Sparse CSR tensor support is in beta:UserWarning'),
]

from helpers.mace import cu_cell, random_mace  # noqa: E402

from aiida_alml.engines import radial_table  # noqa: E402
from aiida_alml.engines.committee import CommitteeCalculator  # noqa: E402
from aiida_alml.engines.model_format import save_model  # noqa: E402
from aiida_alml.engines.message_passing import FusedInteraction, FusionError, neighbour_layout  # noqa: E402
from aiida_alml.engines.product_basis import PrecomputedContraction, ProductBasisError  # noqa: E402
from aiida_alml.engines.radial_table import RadialTable, TabulationError, radial_weight_functions  # noqa: E402

RTOL = 1e-6


@pytest.fixture(scope='module')
def vector_models():
    """Two random members with scalar and vector (1o) hidden features."""
    return [random_mace(seed=0), random_mace(seed=1)]


@pytest.fixture(scope='module')
def vector_model_paths(vector_models, tmp_path_factory):
    root = tmp_path_factory.mktemp('random_mace')
    paths = []
    for i, model in enumerate(vector_models):
        paths.append(root / f'member_{i}.alml')
        save_model(model, paths[-1])
    return paths


def _alloy(repeat=(2, 2, 2), pbc=True):
    atoms = cu_cell(repeat)
    atoms.numbers[::3] = 13  # Al on every third site: two elements
    atoms.rattle(stdev=0.08, seed=3)
    atoms.pbc = pbc
    return atoms


def _close(actual, expected, rtol=RTOL):
    expected = np.asarray(expected)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * 1e-3 * max(np.abs(expected).max(), 1e-12))


def _stock(paths, atoms, dtype='float64'):
    from mace.calculators import MACECalculator

    from aiida_alml.engines.model_format import load_model

    stock = MACECalculator(models=[load_model(p) for p in [str(p) for p in paths]], device='cpu', default_dtype=dtype)
    stock.calculate(atoms)
    return stock.results


# --------------------------------------------------------------------------- radial table


def test_radial_table_reproduces_the_network_and_its_derivative(vector_models):
    model = vector_models[0]
    table = RadialTable.build(model)
    assert table.max_error <= 1e-9
    r = torch.linspace(0.5, float(model.r_max) * 0.999, 997, dtype=torch.float64).requires_grad_(True)
    exact = torch.cat([f(r) for f in radial_weight_functions(model)], dim=-1)
    tabulated = table.lookup(r)
    assert tabulated.shape == exact.shape
    assert [w.shape[1] for w in table.split(tabulated)] == [i.conv_tp.weight_numel for i in model.interactions]
    scale = float(exact.detach().abs().max())
    assert float((tabulated - exact).detach().abs().max()) <= 1e-9 * scale
    # The backward (forces) uses the interpolant's derivative: compare with autograd through the network.
    cotangent = torch.randn(exact.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (exact_grad,) = torch.autograd.grad((exact * cotangent).sum(), r)
    (table_grad,) = torch.autograd.grad((tabulated * cotangent).sum(), r)
    assert float((table_grad - exact_grad).abs().max()) <= 1e-7 * float(exact_grad.abs().max())


def test_radial_table_refuses_what_it_cannot_tabulate():
    with pytest.raises(TabulationError, match='RealAgnosticDensityResidualInteractionBlock'):
        RadialTable.build(random_mace(interaction='RealAgnosticDensityResidualInteractionBlock'))
    with pytest.raises(TabulationError, match='distance transform'):
        RadialTable.build(random_mace(distance_transform='Agnesi'))


def test_radial_table_gives_up_beyond_its_size_limit(vector_models, monkeypatch):
    monkeypatch.setattr(RadialTable, 'MAX_INTERVALS', 512)
    with pytest.raises(TabulationError, match='grid intervals leave a relative error'):
        RadialTable.build(vector_models[0], tolerance=1e-30)
    with pytest.raises(TabulationError, match='would exceed'):
        RadialTable.build(vector_models[0], max_bytes=1000)


# --------------------------------------------------------------------------- fused convolution


def test_neighbour_layout_groups_edges_by_receiver():
    # edges: 0->1, 2->1, 1->0 ; atom 2 receives nothing, atom 3 is isolated
    edge_index = torch.tensor([[0, 2, 1], [1, 1, 0]])
    edges, senders = neighbour_layout(edge_index, num_atoms=4)
    assert edges.tolist() == [[2, 3], [0, 1], [3, 3], [3, 3]]  # 3 = padding (one past the last edge)
    assert senders.tolist() == [[1, 4], [0, 2], [4, 4], [4, 4]]  # 4 = padding (one past the last atom)
    empty_edges, empty_senders = neighbour_layout(torch.zeros((2, 0), dtype=torch.long), num_atoms=2)
    assert empty_edges.tolist() == [[0], [0]] and empty_senders.tolist() == [[2], [2]]


@pytest.mark.parametrize('layer', [0, 1])
def test_fused_interaction_equals_the_mace_block(vector_models, layer):
    """Same outputs as the block itself on a real periodic graph (layer 1 has vector inputs)."""
    from mace.data.neighborhood import get_neighborhood

    model = vector_models[0]
    atoms = _alloy()
    cell = np.array(atoms.cell)
    edge_index, shifts, _, _ = get_neighborhood(atoms.positions, cutoff=4.0, pbc=(True,) * 3, cell=cell)
    edge_index = torch.as_tensor(edge_index, dtype=torch.long)
    positions = torch.as_tensor(atoms.positions)
    vectors = positions[edge_index[1]] - positions[edge_index[0]] + torch.as_tensor(shifts)
    block = model.interactions[layer]
    generator = torch.Generator().manual_seed(layer)
    node_attrs = torch.nn.functional.one_hot(torch.as_tensor((atoms.numbers == 29).astype(int)), 2).double()
    node_feats = torch.randn(len(atoms), block.node_feats_irreps.dim, generator=generator, dtype=torch.float64)
    edge_feats, cutoff = model.radial_embedding(vectors.norm(dim=-1, keepdim=True), node_attrs, edge_index, None)
    inputs = dict(
        node_attrs=node_attrs, node_feats=node_feats, edge_attrs=model.spherical_harmonics(vectors),
        edge_feats=edge_feats, edge_index=edge_index, cutoff=cutoff,
    )  # fmt: skip
    expected, expected_sc = block(**inputs)
    fused = FusedInteraction(block)
    if layer == 1:
        assert any(path[2] == 3 for path in fused.paths)  # vector input paths are exercised
    actual, sc = fused(**inputs, neighbours=neighbour_layout(edge_index, len(atoms)))
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    if expected_sc is None:
        assert sc is None
    else:
        torch.testing.assert_close(sc, expected_sc, rtol=1e-12, atol=1e-12)


def test_fused_interaction_refuses_other_blocks():
    model = random_mace(interaction='RealAgnosticDensityResidualInteractionBlock')
    with pytest.raises(FusionError, match='RealAgnosticDensityResidualInteractionBlock'):
        FusedInteraction(model.interactions[1])


# --------------------------------------------------------------------------- product basis


@pytest.mark.parametrize('correlation', [2, 3])
def test_precomputed_contraction_equals_mace(correlation):
    """Every output irrep (0e and 1o) of both layers, two elements, on random features."""
    model = random_mace(correlation=correlation)
    generator = torch.Generator().manual_seed(correlation)
    checked = 0
    for product in model.products:
        for contraction in product.symmetric_contractions.contractions:
            channels, ell = contraction.weights_max.shape[-1], contraction.U_tensors(1).shape[-2]
            x = torch.randn(11, channels, ell, generator=generator, dtype=torch.float64)
            y = torch.nn.functional.one_hot(torch.arange(11) % 2, 2).double()
            expected = contraction(x, y)
            actual = PrecomputedContraction(contraction, check=False)(x, y)
            torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
            checked += 1
    assert checked == 3  # 0e and 1o after the first layer, 0e only after the last


def test_precomputed_contraction_refuses_other_modules():
    with pytest.raises(ProductBasisError, match='Linear is not a MACE symmetric Contraction'):
        PrecomputedContraction(torch.nn.Linear(2, 2))


# --------------------------------------------------------------------------- calculator


@pytest.mark.parametrize('strategy', ['sequential', 'vmap'])
@pytest.mark.parametrize('pbc', [True, False], ids=['bulk', 'cluster'])
def test_calculator_matches_stock_for_vector_features(vector_model_paths, strategy, pbc):
    atoms = _alloy(pbc=pbc)
    if not pbc:
        atoms.positions[0] += [0.0, 0.0, -30.0]  # an atom without neighbours
    reference = _stock(vector_model_paths, atoms)
    calc = CommitteeCalculator(model_paths=vector_model_paths, strategy=strategy)
    assert (calc.radial, calc.convolution, calc.product_basis) == ('table', 'fused', 'precomputed')
    calc.calculate(atoms)
    _close(calc.results['energy_comm'], reference['energy_comm'])
    _close(calc.results['forces_comm'], reference['forces_comm'])
    _close(calc.results['forces_var'], reference['forces_var'])
    if pbc:
        _close(calc.results['stress_comm'], [full_3x3_to_voigt_6_stress(s) for s in reference['stress_comm']])


def test_mace_own_evaluation_gives_the_same_committee(vector_models):
    atoms = _alloy()
    fast = CommitteeCalculator(models=vector_models, strategy='sequential')
    plain = CommitteeCalculator(
        models=vector_models, strategy='sequential', radial='mlp', convolution='edges', product_basis='mace'
    )
    assert (plain.radial, plain.convolution, plain.product_basis) == ('mlp', 'edges', 'mace')
    assert plain._members[0].model is vector_models[0]  # nothing re-formulated: the models themselves
    fast.calculate(atoms)
    plain.calculate(atoms)
    for key in ('energy_comm', 'forces_comm', 'stress_comm', 'force_sigma'):
        _close(fast.results[key], plain.results[key])


def test_calculator_falls_back_to_mace_evaluation(tmp_path, caplog):
    model = random_mace(interaction='RealAgnosticDensityResidualInteractionBlock')
    path = tmp_path / 'density.alml'
    save_model(model, path)
    with caplog.at_level(logging.INFO, logger='aiida_alml.engines.committee'):
        calc = CommitteeCalculator(model_paths=[path], strategy='sequential')
    # The density block's interactions are evaluated as MACE does; its product basis is standard.
    assert (calc.radial, calc.convolution, calc.product_basis) == ('mlp', 'edges', 'precomputed')
    assert 'RealAgnosticDensityResidualInteractionBlock' in caplog.text
    atoms = _alloy()
    calc.calculate(atoms)
    reference = _stock([path], atoms)  # one model: the stock calculator reports no member arrays
    _close(calc.results['energy'], reference['energy'])
    _close(calc.results['forces'], reference['forces'])


def test_float32_committee_is_as_accurate_as_stock_float32(vector_model_paths):
    """float32 round-off differs with the order of operations: compare both with float64."""
    atoms = _alloy()
    exact = _stock(vector_model_paths, atoms)
    stock = _stock(vector_model_paths, atoms, dtype='float32')
    calc = CommitteeCalculator(model_paths=vector_model_paths, default_dtype='float32')
    assert calc.radial_tables[0].table.dtype == torch.float32
    calc.calculate(atoms)
    for key in ('energy_comm', 'forces_comm'):
        ours_error = np.abs(calc.results[key] - exact[key]).max()
        stock_error = np.abs(stock[key] - exact[key]).max()
        assert ours_error <= 4 * stock_error, key  # measured: 1.3x (energies), 2.4x (forces)


@pytest.mark.parametrize(('option', 'value'), [('radial', 'spline'), ('convolution', 'cuda'), ('product_basis', 'x')])
def test_unknown_evaluation_options_are_refused(vector_models, option, value):
    with pytest.raises(ValueError, match=f"{option} must be"):
        CommitteeCalculator(models=vector_models, **{option: value})


def test_radial_module_has_no_aiida_import():
    assert 'aiida' not in Path(radial_table.__file__).read_text().replace('aiida_alml', '')
