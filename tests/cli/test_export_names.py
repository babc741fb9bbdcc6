"""``aiida-alml export`` of a campaign imported from an edited archive: names from the database never climb out.

``export`` writes ``DIRECTORY/models/<output key>/<model file name>``; both parts come from the database, and an
archive from elsewhere can hold any link label and any ``filename`` attribute.
"""

from __future__ import annotations

import re
import tempfile

import pytest
from aiida import get_profile, orm
from aiida.common.links import LinkType
from click.testing import CliRunner

from aiida_alml.cli.inspect import export
from aiida_alml.data import ConfigurationSet, MlipModel
from aiida_alml.workflows.links import ACTIVE_LEARNING

pytestmark = pytest.mark.storage


def _campaign(folder, emt_labelled):
    """A finished alml.active_learning node with the outputs export reads: two models, a dataset, a learning curve."""
    from helpers.mace import model_file

    loop = orm.WorkChainNode(process_type=ACTIVE_LEARNING)
    loop.set_process_state('finished')
    loop.set_exit_status(0)
    loop.store()
    outputs = {
        **{f'models__member_{i}': MlipModel(model_file(folder / f'member_{i}.alml', seed=i)) for i in range(2)},
        'dataset': ConfigurationSet.from_ase(emt_labelled),
        'learning_curve': orm.Dict({'iterations': [], 'stop_reason': 'converged'}),
    }
    for label, node in outputs.items():
        node.store()
        node.base.links.add_incoming(loop, LinkType.RETURN, label)
    loop.seal()  # a finished process is sealed; archives take no other
    return loop, outputs


def _rename_member_0(db, ids, outputs):
    from helpers.archive import rename_single_file

    rename_single_file(db, ids[outputs['models__member_0'].uuid], '../../../escaped')


def _relabel_member_1(db, ids, outputs):
    db.execute("UPDATE db_dblink SET label = 'models__../..' WHERE label = 'models__member_1'")


@pytest.mark.parametrize(('edit', 'message'), [
    (_rename_member_0, "models.member_0: model node .* has the file name '../../../escaped', which is not a plain "
                       r'file name \(it contains a path separator'),
    (_relabel_member_1, r"output models.'../..': the link label is not a plain file name \(it contains a path "
                        'separator'),
])
def test_export_refuses_names_that_climb_out(tmp_path, monkeypatch, emt_labelled, edit, message):
    from helpers.archive import import_edited

    source = tmp_path / 'source'
    source.mkdir()
    loop, outputs = _campaign(source, emt_labelled)
    imported = import_edited([loop], source, lambda db, ids: edit(db, ids, outputs))[loop.uuid]
    # Temporary copies (verified_path) are made in here, three levels below tmp_path.
    sandbox = tmp_path / 'tmp' / 'a' / 'b'
    sandbox.mkdir(parents=True)
    monkeypatch.setattr(tempfile, 'tempdir', str(sandbox))

    target = tmp_path / 'export'
    result = CliRunner().invoke(export, ['-p', get_profile().name, str(imported.pk), str(target)])
    assert result.exit_code != 0 and re.search(message, result.output), result.output
    # Refused before anything was written: no export folder, no file anywhere outside the source folder.
    assert not target.exists()
    written = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob('*')
                     if path.is_file() and source not in path.parents)
    assert written == []


def test_export_of_plain_names_still_works(tmp_path, emt_labelled):
    """The unedited campaign exports as before (the check refuses only names that are not plain)."""
    import hashlib

    loop, outputs = _campaign(tmp_path, emt_labelled)
    result = CliRunner().invoke(export, ['-p', get_profile().name, str(loop.pk), str(tmp_path / 'export')])
    assert result.exit_code == 0, result.output
    for i in range(2):
        exported = tmp_path / 'export' / 'models' / f'member_{i}' / f'member_{i}.alml'
        assert hashlib.sha256(exported.read_bytes()).hexdigest() == outputs[f'models__member_{i}'].sha256
