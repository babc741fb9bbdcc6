"""ConfigurationSet and MlipModel as stored AiiDA nodes (run on SQLite and again on PostgreSQL)."""

import io
import tempfile

import numpy as np
import pytest
from aiida import orm
from aiida.common.exceptions import ValidationError

from aiida_alml.data import ConfigurationSet, MlipModel, ModelIntegrityError

pytestmark = pytest.mark.storage


def test_store_reload_is_bit_exact(emt_labelled):
    node = ConfigurationSet.from_ase(emt_labelled, metadata=[{'iteration': 0, 'source': 'emt'}] * 6).store()
    loaded = orm.load_node(node.pk)
    assert loaded is not node and isinstance(loaded, ConfigurationSet)
    original, reloaded = node.configurations, loaded.configurations
    for name in ('numbers', 'positions', 'cells', 'pbc', 'energy', 'forces', 'stress'):
        assert getattr(original, name).tobytes() == getattr(reloaded, name).tobytes()
    assert reloaded.metadata[5] == {'iteration': 0, 'source': 'emt'}
    assert loaded.content_hash == original.content_hash()
    assert len(loaded) == 6 and loaded.total_atoms == 36
    assert loaded.elements == ['Cu'] and loaded.labels == ['energy', 'forces', 'stress']
    atoms = loaded.to_ase()[3]
    assert atoms.get_forces().tobytes() == emt_labelled[3].get_forces().tobytes()


def test_attributes_are_queryable_without_loading(emt_labelled):
    from ase.build import molecule

    cu = ConfigurationSet.from_ase(emt_labelled).store()
    water = ConfigurationSet.from_ase([molecule('H2O')]).store()
    query = orm.QueryBuilder().append(
        ConfigurationSet, filters={'attributes.elements': {'contains': ['Cu']}, 'id': {'in': [cu.pk, water.pk]}}
    )
    assert [node.pk for node in query.all(flat=True)] == [cu.pk]
    query = orm.QueryBuilder().append(
        ConfigurationSet, filters={'attributes.labels': {'contains': ['forces']}, 'id': {'in': [cu.pk, water.pk]}},
        project='attributes.num_configurations',
    )
    assert query.all(flat=True) == [6]
    assert water.base.attributes.get('elements') == ['H', 'O'] and water.labels == []


def test_node_is_immutable_once_stored(emt_labelled):
    from aiida.common.exceptions import ModificationNotAllowed

    node = ConfigurationSet.from_ase(emt_labelled).store()
    with pytest.raises(ModificationNotAllowed):
        node.base.attributes.set('num_configurations', 1)
    with pytest.raises(ModificationNotAllowed):
        node.base.repository.put_object_from_filelike(io.BytesIO(b'x'), 'configurations.npz')


def test_equal_content_equal_hash_across_nodes(emt_labelled):
    a = ConfigurationSet.from_ase(emt_labelled).store()
    b = ConfigurationSet.from_ase(ConfigurationSet.from_ase(emt_labelled).to_ase()).store()
    assert a.uuid != b.uuid and a.content_hash == b.content_hash
    assert a.base.caching.get_hash() == b.base.caching.get_hash()


def test_get_structure_and_extxyz(emt_labelled, tmp_path):
    node = ConfigurationSet.from_ase(emt_labelled).store()
    structure = node.get_structure(1)
    assert isinstance(structure, orm.StructureData) and len(structure.sites) == 8
    np.testing.assert_array_equal(structure.cell, emt_labelled[1].cell.array)
    path = tmp_path / 'out.extxyz'
    node.write_extxyz(path)
    again = ConfigurationSet.from_extxyz(path)
    assert again.content_hash == node.content_hash


def test_constructor_needs_configurations():
    with pytest.raises(TypeError, match='needs its configurations'):
        ConfigurationSet()
    with pytest.raises(TypeError, match='expected aiida_alml.atoms.configurations.Configurations'):
        ConfigurationSet([1, 2])


def _model_file(tmp_path, **kwargs):
    from helpers.mace import model_file

    return model_file(tmp_path / 'cu.alml', **kwargs)


def test_model_attributes_are_read_from_the_file(tmp_path):
    import hashlib

    path = _model_file(tmp_path, elements=('Cu', 'Ag'), r_max=4.5, dtype='float32')
    model = MlipModel(file=path, seed=3)
    model.store()
    loaded = orm.load_node(model.pk)
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.elements == ['Ag', 'Cu'] and loaded.r_max == 4.5 and loaded.dtype == 'float32' and loaded.seed == 3
    assert loaded.architecture == 'MACE'
    loaded.verify()
    with loaded.verified_path() as checked:
        assert checked.read_bytes() == path.read_bytes()
    assert float(loaded.load().r_max) == 4.5


def test_model_does_not_believe_the_caller(tmp_path):
    """Elements, cutoff and dtype cannot be claimed: they come from the file."""
    with pytest.raises(TypeError):
        MlipModel(file=_model_file(tmp_path), elements=['Ag'])


def test_model_refuses_tampered_bytes(tmp_path):
    model = MlipModel(file=_model_file(tmp_path))
    # Swap the bytes behind the recorded hash (possible only before storing; a corrupted repository looks the same).
    model.base.repository.put_object_from_filelike(io.BytesIO(b'malicious pickle'), model.filename)
    with pytest.raises(ModelIntegrityError, match='refusing to use it'):
        model.verify()
    with pytest.raises(ModelIntegrityError, match='does not match its recorded SHA-256'):
        with model.verified_path():
            pass
    with pytest.raises(ModelIntegrityError):
        model.load()


@pytest.mark.parametrize(('name', 'problem'), [
    ('../../escaped', 'path separator'),
    ('models/cu.alml', 'path separator'),
    ('..\\cu.alml', 'path separator'),
    ('..', 'names a folder'),
    ('', 'empty'),
    ('cu\n.alml', 'control character'),
    ('cu\x00.alml', 'control character'),
    ('cu\x1b[2J.alml', 'control character'),
    ('m' * 256, 'longer than 255 bytes'),
])
def test_model_file_name_must_be_plain(tmp_path, name, problem):
    """A model is written out under its file name (verified_path, export): one that could climb out is refused."""
    with pytest.raises(ValueError, match=f'file name .* is not a plain file name \\(it .*{problem}'):
        MlipModel(file=_model_file(tmp_path), filename=name)
    model = MlipModel(file=_model_file(tmp_path), filename='cu.alml')
    with pytest.raises(ValueError, match='is not a plain file name'):
        model.set_file(_model_file(tmp_path), filename=name)
    assert model.filename == 'cu.alml' and model.base.repository.list_object_names() == ['cu.alml']


def test_model_with_a_bad_file_object_is_not_stored(tmp_path):
    """The name of the one file in the repository becomes ``filename`` on store: it is checked there too."""
    model = MlipModel(file=_model_file(tmp_path))
    model.base.repository.put_object_from_filelike(io.BytesIO(model.get_content(mode='rb')), 'cu\\x.alml')
    model.base.repository.delete_object('cu.alml')
    with pytest.raises(ValidationError, match="file name 'cu\\\\\\\\x.alml' is not a plain file name"):
        model.store()
    assert not model.is_stored


def test_imported_model_with_a_climbing_file_name_is_never_written(tmp_path, monkeypatch):
    """An archive can hold any ``filename``: a model imported with ``../../escaped`` is refused, nothing written."""
    from helpers.archive import import_edited, rename_single_file

    path = _model_file(tmp_path)
    model = MlipModel(file=path).store()
    imported = import_edited([model], tmp_path, lambda db, ids: rename_single_file(db, ids[model.uuid],
                                                                                  '../../escaped'))[model.uuid]
    assert imported.filename == '../../escaped' and imported.get_content(mode='rb') == path.read_bytes()
    # verified_path's temporary folder is made in here: two levels up from it is still inside tmp_path.
    sandbox = tmp_path / 'sandbox' / 'inner'
    sandbox.mkdir(parents=True)
    monkeypatch.setattr(tempfile, 'tempdir', str(sandbox))
    with pytest.raises(ModelIntegrityError, match=r"file name '../../escaped', which is not a plain file name "
                                                  r'\(it contains a path separator'):
        with imported.verified_path():
            pass
    for use in (imported.load, imported.verify):
        with pytest.raises(ModelIntegrityError, match='not a plain file name'):
            use()
    # The launch-time check of MD (and of the workflows that run it) refuses it before anything is submitted.
    from aiida_alml.calculations.md import check_committee

    assert "models: member 1: model node" in check_committee([model, imported])
    assert "'../../escaped', which is not a plain file name" in check_committee([model, imported])
    assert not list(tmp_path.rglob('escaped')) and list((tmp_path / 'sandbox').iterdir()) == [sandbox]
    assert not list(sandbox.iterdir())


class _Payload:
    """Unpickling this runs ``os.system``: what a hostile "model file" would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f'touch {self.marker}',))


def test_pickled_payload_posing_as_a_model_does_not_run(tmp_path):
    import torch

    from aiida_alml.engines.committee import load_committee
    from aiida_alml.engines.model_format import ModelFormatError, load_model

    marker = tmp_path / 'payload_ran'
    path = tmp_path / 'evil.alml'
    torch.save({'format': 'alml.mace.v1', 'model_class': 'ScaleShiftMACE', 'config': '{}',
                'state_dict': _Payload(marker)}, path)
    import mace  # noqa: F401  (sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD; our reads must not depend on it)

    for read in (lambda: MlipModel(file=path), lambda: load_model(path), lambda: load_committee([path])):
        with pytest.raises(ModelFormatError, match='not an aiida-alml model file: it asks to rebuild Python objects'):
            read()
    assert not marker.exists(), 'the payload ran'


def test_a_mace_pickle_is_refused_with_a_pointer(tmp_path):
    import torch
    from helpers.mace import random_mace

    from aiida_alml.engines.model_format import ModelFormatError

    path = tmp_path / 'mace.model'
    torch.save(random_mace(max_L=0, channels=4), path)
    with pytest.raises(ModelFormatError, match='pickled model or a payload'):
        MlipModel(file=path)


@pytest.mark.parametrize(('config', 'message'), [
    ({'interaction_cls': 'os.system'}, r"`interaction_cls` 'os.system' is not a building block of mace.modules.blocks"),
    ({'interaction_cls': 'torch'}, r"`interaction_cls` 'torch' is not a building block"),
    ({'gate': 'eval'}, r"`gate` 'eval' is not one of"),
])
def test_model_config_names_only_allowed_classes(tmp_path, config, message):
    import json

    import torch

    from aiida_alml.engines.model_format import ModelFormatError, load_model

    payload = torch.load(_model_file(tmp_path), weights_only=True)
    payload['config'] = json.dumps({**json.loads(payload['config']), **config})
    torch.save(payload, tmp_path / 'edited.alml')
    with pytest.raises(ModelFormatError, match=message):
        load_model(tmp_path / 'edited.alml')


def test_profile_uses_the_requested_storage(aiida_profile):
    """Guards the PostgreSQL run: the storage tests must really run on the backend the test script asked for."""
    import os

    assert aiida_profile.storage_backend == os.environ.get('ALML_TEST_STORAGE', 'core.sqlite_dos')
