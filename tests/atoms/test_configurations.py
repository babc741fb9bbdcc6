"""The plain Configurations container: round trips, hashing, validation (no AiiDA storage involved)."""

import numpy as np
import pytest
from ase.build import bulk, molecule

from aiida_alml.atoms.configurations import Configurations, ConfigurationError, read_extxyz, write_extxyz


def _assert_identical(a: Configurations, b: Configurations):
    for name in ('numbers', 'positions', 'n_atoms', 'cells', 'pbc', 'energy', 'forces', 'stress'):
        x, y = getattr(a, name), getattr(b, name)
        if x is None or y is None:
            assert x is None and y is None, name
        else:
            assert x.dtype == y.dtype and x.shape == y.shape, name
            assert x.tobytes() == y.tobytes(), f'{name} differs in its bits'
    assert a.metadata == b.metadata
    assert a.content_hash() == b.content_hash()


def test_from_ase_takes_calculator_results_bit_exact(emt_labelled):
    conf = Configurations.from_ase(emt_labelled)
    assert len(conf) == 6 and conf.labels == ['energy', 'forces', 'stress'] and conf.elements == ['Cu']
    for index, atoms in enumerate(emt_labelled):
        assert conf.energy[index] == atoms.calc.results['energy']
        assert conf.forces[conf.atom_slice(index)].tobytes() == atoms.calc.results['forces'].tobytes()
        assert conf.stress[index].tobytes() == atoms.calc.results['stress'].tobytes()
    assert conf.metadata[0] == {'tag': 'cu-0'}


def test_ase_round_trip_is_bit_exact(emt_labelled):
    conf = Configurations.from_ase(emt_labelled)
    back = conf.to_ase()
    for original, atoms in zip(emt_labelled, back):
        assert atoms.positions.tobytes() == original.positions.tobytes()
        assert atoms.cell.array.tobytes() == original.cell.array.tobytes()
        assert (atoms.pbc == original.pbc).all() and (atoms.numbers == original.numbers).all()
        assert atoms.get_potential_energy() == original.get_potential_energy()
        assert atoms.get_forces().tobytes() == original.get_forces().tobytes()
        assert atoms.get_stress().tobytes() == original.get_stress().tobytes()
        assert atoms.info == original.info
    _assert_identical(conf, Configurations.from_ase(back))


def test_extxyz_round_trip_is_bit_exact(emt_labelled, tmp_path):
    emt_labelled[1].info['nested'] = {'iteration': 3, 'tags': ['a', 'b c'], 'ratio': 0.1}
    emt_labelled[2].info['number_like_string'] = '42'
    conf = Configurations.from_ase(emt_labelled)
    path = tmp_path / 'set.extxyz'
    write_extxyz(conf, path)
    _assert_identical(conf, read_extxyz(path))
    text = path.read_text()
    assert 'REF_energy=' in text and 'REF_forces:R:3' in text and 'REF_stress=' in text


def test_extxyz_mixed_periodicity_and_unlabelled(tmp_path):
    water = molecule('H2O')
    slab = bulk('Cu', 'fcc', a=3.6, cubic=True)
    slab.pbc = (True, True, False)
    slab.cell[2] = 0.0
    boxed = molecule('CH4')
    boxed.cell = [8.0, 8.0, 8.0]
    conf = Configurations.from_ase([water, slab, boxed])
    assert conf.labels == []
    path = tmp_path / 'mixed.extxyz'
    write_extxyz(conf, path)
    _assert_identical(conf, read_extxyz(path))


def test_mace_can_read_our_extxyz(emt_labelled, tmp_path):
    from mace.data.utils import KeySpecification, load_from_xyz

    conf = Configurations.from_ase(emt_labelled)
    path = tmp_path / 'train.xyz'
    write_extxyz(conf, path)
    key_specification = KeySpecification(
        info_keys={'energy': 'REF_energy', 'stress': 'REF_stress', 'head': 'head'},
        arrays_keys={'forces': 'REF_forces'},
    )
    _, configs = load_from_xyz(str(path), key_specification=key_specification)
    assert len(configs) == 6
    assert configs[0].properties['energy'] == conf.energy[0]
    np.testing.assert_array_equal(configs[0].properties['forces'], conf.forces[conf.atom_slice(0)])
    np.testing.assert_array_equal(np.ravel(configs[0].properties['stress']), conf.stress[0])


def test_hash_is_stable_and_content_sensitive(emt_labelled):
    first = Configurations.from_ase(emt_labelled)
    again = Configurations.from_ase(first.to_ase())
    assert first.content_hash() == again.content_hash()
    # Stored nodes carry this hash: it must not depend on the machine, the session or the input dtypes.
    tiny = Configurations([29], [[0, 0, 0]], np.array([1], np.int32), [np.eye(3) * 3.0], [[True] * 3], energy=[-1])
    assert tiny.content_hash() == '0088c0c5134296b288114be56b79b7d0181010a1659f9738419cf0eaf4debf58'
    from ase.calculators.singlepoint import SinglePointCalculator

    moved = emt_labelled[0].copy()
    moved.calc = SinglePointCalculator(moved, **emt_labelled[0].calc.results)
    moved.positions[0, 0] = np.nextafter(moved.positions[0, 0], np.inf)
    changed = Configurations.from_ase([moved, *emt_labelled[1:]])
    assert changed.content_hash() != first.content_hash()
    relabelled = Configurations.from_ase(emt_labelled, metadata=[{'iteration': 1}] * 6)
    assert relabelled.content_hash() != first.content_hash()


def test_select_and_replace(emt_labelled):
    conf = Configurations.from_ase(emt_labelled)
    picked = conf.select([3, 0])
    assert len(picked) == 2 and picked.metadata == (conf.metadata[3], conf.metadata[0])
    assert picked.forces[picked.atom_slice(0)].tobytes() == conf.forces[conf.atom_slice(3)].tobytes()
    bare = conf.replace(energy=None, forces=None, stress=None)
    assert bare.labels == [] and bare.positions.tobytes() == conf.positions.tobytes()
    with pytest.raises(ConfigurationError, match='selection is empty'):
        conf.select([])


def test_arrays_are_read_only(emt_labelled):
    conf = Configurations.from_ase(emt_labelled)
    with pytest.raises(ValueError):
        conf.positions[0, 0] = 1.0


# ----------------------------------------------------------------------------- bad input
def _cu(n=1):
    return dict(numbers=[29] * n, positions=np.zeros((n, 3)) + np.arange(n)[:, None], n_atoms=[n],
                cells=[np.eye(3) * 4.0], pbc=[[True] * 3])


def test_empty_set_is_refused():
    with pytest.raises(ConfigurationError, match='empty'):
        Configurations.from_ase([])
    with pytest.raises(ConfigurationError, match='empty'):
        Configurations(numbers=np.zeros(0, int), positions=np.zeros((0, 3)), n_atoms=np.zeros(0, int),
                       cells=np.zeros((0, 3, 3)), pbc=np.zeros((0, 3), bool))


def test_forces_shape_mismatch_names_the_configuration(emt_labelled):
    emt_labelled[1].arrays['REF_forces'] = np.zeros((3, 3))
    with pytest.raises(ConfigurationError, match=r'configuration 1: forces have shape \(3, 3\), positions \(8, 3\)'):
        Configurations.from_ase(emt_labelled)
    with pytest.raises(ConfigurationError, match='forces must have shape'):
        Configurations(**_cu(2), forces=np.zeros((3, 3)))


@pytest.mark.parametrize('field', ['positions', 'cells', 'energy', 'forces', 'stress'])
@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_non_finite_values_are_refused(field, bad):
    arrays = {**_cu(2), 'energy': [1.0], 'forces': np.zeros((2, 3)), 'stress': np.zeros((1, 6))}
    value = np.array(arrays[field], dtype=float)
    value.reshape(-1)[-1] = bad
    arrays[field] = value
    with pytest.raises(ConfigurationError, match=f'configuration 0: {field} contains NaN or inf'):
        Configurations(**arrays)


def test_unknown_atomic_number_is_refused():
    arrays = _cu(2)
    arrays['numbers'] = [29, 130]
    with pytest.raises(ConfigurationError, match='unknown atomic number 130'):
        Configurations(**arrays)
    arrays['numbers'] = [0, 29]
    with pytest.raises(ConfigurationError, match='unknown atomic number 0'):
        Configurations(**arrays)


def test_singular_periodic_cell_is_refused():
    atoms = bulk('Cu', 'fcc', a=3.6, cubic=True)
    atoms.cell[2] = atoms.cell[0] + atoms.cell[1]
    with pytest.raises(ConfigurationError, match='configuration 0: the cell is singular'):
        Configurations.from_ase([atoms])
    # A zero cell is fine where nothing is periodic.
    Configurations.from_ase([molecule('H2O')])


def test_partial_labels_and_stress_without_periodicity_are_refused(emt_labelled):
    from ase.calculators.singlepoint import SinglePointCalculator

    unlabelled = emt_labelled[0].copy()
    with pytest.raises(ConfigurationError, match='configuration 6 has no energy label while others do'):
        Configurations.from_ase([*emt_labelled, unlabelled])
    water = molecule('H2O')
    water.calc = SinglePointCalculator(water, energy=1.0, stress=np.zeros(6))
    with pytest.raises(ConfigurationError, match='configuration 0: a stress label needs a cell periodic'):
        Configurations.from_ase([water])


def test_metadata_must_be_json(emt_labelled):
    with pytest.raises(ConfigurationError, match='cannot be stored as JSON'):
        Configurations.from_ase(emt_labelled[:1], metadata=[{'bad': object()}])
    with pytest.raises(ConfigurationError, match='metadata has 2 entries for 1 configurations'):
        Configurations.from_ase(emt_labelled[:1], metadata=[{}, {}])


def test_read_extxyz_missing_file(tmp_path):
    with pytest.raises(ConfigurationError, match='does not exist'):
        read_extxyz(tmp_path / 'nope.xyz')


@pytest.mark.parametrize('info, message', [
    ('REF_energy=abc', r"configuration 0: the energy label 'abc' is not a number"),
    ('REF_energy=T', r'configuration 0: the energy label True is not a number'),
    ('REF_energy="1 2"', r'configuration 0: the energy label must be one number, got shape \(2,\)'),
    ('REF_energy=1.0 REF_stress="a b c d e f"', r"configuration 0: the stress label 'a b c d e f' is not a number"),
])
def test_labels_that_are_not_numbers_are_refused_naming_them(tmp_path, info, message):
    """A file's label that ASE reads as text or true/false (a ValueError traceback before, or True taken as 1 eV)."""
    path = tmp_path / 'labels.xyz'
    path.write_text(f'1\nLattice="3.6 0 0 0 3.6 0 0 0 3.6" {info} pbc="T T T"\nCu 0.0 0.0 0.0\n')
    with pytest.raises(ConfigurationError, match=message):
        read_extxyz(path)


def test_far_coordinate_finds_positions_and_cells_beyond_the_bound():
    from aiida_alml.atoms.configurations import MAX_COORDINATE, far_coordinate

    cubic = bulk('Cu', 'fcc', a=3.6, cubic=True)
    assert far_coordinate(Configurations.from_ase([cubic, cubic * (2, 2, 2)])) is None
    flown = cubic * (2, 1, 1)
    flown.positions[5, 1] = -2 * MAX_COORDINATE
    assert far_coordinate(Configurations.from_ase([cubic, flown])) == (1, 'positions', -2 * MAX_COORDINATE)
    long = cubic.copy()
    long.cell[2, 2] = 1e5
    assert far_coordinate(Configurations.from_ase([cubic, cubic, long])) == (2, 'cell', 1e5)
    edge = cubic.copy()
    edge.positions[0, 0] = MAX_COORDINATE  # at the bound: accepted
    assert far_coordinate(Configurations.from_ase([edge])) is None
