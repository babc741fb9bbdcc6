"""Composed ConfigurationSets: a set made of stored flat sets by reference, read back as their concatenation."""

import pytest
from aiida import orm

from aiida_alml.atoms.configurations import Configurations, ConfigurationError
from aiida_alml.data import ConfigurationSet, PartsError

pytestmark = pytest.mark.storage

ARRAYS = ('numbers', 'positions', 'n_atoms', 'cells', 'pbc', 'energy', 'forces', 'stress')


def _flat(emt_labelled, start, stop, tag):
    return ConfigurationSet.from_ase(emt_labelled[start:stop],
                                     metadata=[{'part': tag, 'index': i} for i in range(stop - start)]).store()


def _assert_same(left: Configurations, right: Configurations):
    for name in ARRAYS:
        first, second = getattr(left, name), getattr(right, name)
        assert (first is None) == (second is None), name
        if first is not None:
            assert first.dtype == second.dtype and first.tobytes() == second.tobytes(), name
    assert left.metadata == right.metadata


def test_composed_set_reads_back_as_the_flat_concatenation(emt_labelled):
    a, b, c = (_flat(emt_labelled, 0, 2, 'a'), _flat(emt_labelled, 2, 3, 'b'), _flat(emt_labelled, 3, 6, 'c'))
    ab = ConfigurationSet.compose([a, b]).store()
    abc = ConfigurationSet.compose([ab, c]).store()
    assert abc.is_composed and not a.is_composed
    assert abc.parts == [a.uuid, b.uuid, c.uuid]  # a composed part contributes its parts: the list never nests
    assert a.parts == [a.uuid]
    assert not abc.base.repository.list_object_names()  # no arrays of its own

    flat = ConfigurationSet(Configurations.concatenate([a.configurations, b.configurations, c.configurations]))
    loaded = orm.load_node(abc.pk)
    _assert_same(loaded.configurations, flat.configurations)
    for name in ('num_configurations', 'elements', 'total_atoms', 'labels', 'label_fingerprints',
                 'unrecorded_label_settings'):
        assert loaded.base.attributes.get(name) == flat.base.attributes.get(name), name
    assert len(loaded) == 6 and loaded.configuration_metadata() == list(flat.configurations.metadata)
    assert orm.load_node(abc.pk).configuration_metadata() == list(flat.configurations.metadata)  # without arrays

    # content_hash of a composed set is a hash of its parts: another kind than a flat set's, compared by same_content
    assert loaded.content_hash != flat.content_hash
    assert loaded.flat_content_hash() == flat.content_hash
    assert loaded.same_content(flat) and flat.same_content(loaded)
    assert ConfigurationSet.compose([a, b, c]).content_hash == abc.content_hash  # same parts, same hash
    assert not loaded.same_content(ab) and not ab.same_content(ConfigurationSet.compose([b, a]))
    assert loaded.get_atoms(5).get_forces().tobytes() == emt_labelled[5].get_forces().tobytes()


def test_compose_refuses_what_it_cannot_refer_to(emt_labelled):
    stored = _flat(emt_labelled, 0, 2, 'a')
    with pytest.raises(ValueError, match='set 1 is not stored'):
        ConfigurationSet.compose([stored, ConfigurationSet.from_ase(emt_labelled[2:3])])
    with pytest.raises(TypeError, match='set 0 is a Int, not a ConfigurationSet'):
        ConfigurationSet.compose([orm.Int(1).store()])
    with pytest.raises(ValueError, match='nothing to compose'):
        ConfigurationSet.compose([])
    unlabelled = ConfigurationSet.from_ase([atoms.copy() for atoms in emt_labelled[:1]]).store()
    with pytest.raises(ConfigurationError, match='different labels'):
        ConfigurationSet.compose([stored, unlabelled])

    # a part that is not a flat ConfigurationSet in the database is refused when storing
    node = ConfigurationSet.compose([stored])
    other = orm.Int(2).store()
    node.base.attributes.set('parts', [other.uuid])
    with pytest.raises(PartsError, match=f'part 0 <{other.uuid}> is a Int'):
        node.store()
    node = ConfigurationSet.compose([stored])
    node.base.attributes.set('parts', ['00000000-0000-4000-8000-000000000000'])
    with pytest.raises(PartsError, match='not in the database: 00000000-0000-4000-8000-000000000000'):
        node.store()


def test_a_deleted_part_is_named_on_load(emt_labelled):
    from aiida.tools import delete_nodes

    a, b = _flat(emt_labelled, 0, 2, 'a'), _flat(emt_labelled, 2, 4, 'b')
    composed = ConfigurationSet.compose([a, b]).store()  # no links: deleting b leaves it in place
    missing = b.uuid
    delete_nodes([b.pk], dry_run=False)
    message = f'<{composed.pk}> is composed of sets that are not in the database: {missing}'
    with pytest.raises(PartsError, match=message):
        _ = orm.load_node(composed.pk).configurations
