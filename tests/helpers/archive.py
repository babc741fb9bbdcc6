"""AiiDA archives edited as an attacker could, then imported: nodes whose attributes and link labels no check saw.

An archive (``verdi archive create``) is a zip of ``metadata.json``, an SQLite database ``db.sqlite3`` and the file
objects under ``repo/``. Importing one writes its rows as they are: nothing re-validates the nodes, so an archive
from elsewhere can hold any ``filename`` attribute or link label.
"""

from __future__ import annotations

import json
import pathlib
import sqlite3
import uuid
import zipfile
from collections.abc import Callable

__all__ = ('import_edited', 'rename_single_file')


def import_edited(nodes: list, folder: pathlib.Path, edit: Callable[[sqlite3.Connection, dict], None]) -> dict:
    """Export ``nodes`` (and what AiiDA's traversal rules add) to an archive, let ``edit`` change its database, import.

    ``edit(db, ids)`` gets the archive's database and {original UUID: row id in it}. Every node gets a fresh UUID
    so that the import does not keep the originals. Returns {original UUID: imported node}.
    """
    from aiida import orm
    from aiida.tools.archive import create_archive, import_archive

    original = folder / 'original.aiida'
    create_archive(nodes, filename=original)
    database = folder / 'db.sqlite3'
    with zipfile.ZipFile(original) as archive:
        archive.extract('db.sqlite3', folder)
        members = {name: archive.read(name) for name in archive.namelist()}  # in order: AiiDA reads the first few
    fresh = {}
    with sqlite3.connect(database) as db:
        rows = db.execute('SELECT id, uuid FROM db_dbnode').fetchall()
        edit(db, {old: row for row, old in rows})
        for row, old in rows:
            fresh[old] = str(uuid.uuid4())
            db.execute('UPDATE db_dbnode SET uuid = ? WHERE id = ?', (fresh[old], row))
    db.close()
    edited = folder / 'edited.aiida'
    with zipfile.ZipFile(edited, 'w') as archive:
        for name, content in members.items():
            archive.writestr(name, database.read_bytes() if name == 'db.sqlite3' else content)
    import_archive(edited)
    return {old: orm.load_node(new) for old, new in fresh.items()}


def rename_single_file(db: sqlite3.Connection, row: int, name: str) -> None:
    """Give the SinglefileData in row ``row`` of an archive's database the file name ``name``, as it is.

    Both the ``filename`` attribute and the repository's object tree change, so that the node still opens its file
    under the new name (a ``..`` part becomes a folder named ``..`` in the tree, which a repository can hold).
    """
    attributes, metadata = db.execute('SELECT attributes, repository_metadata FROM db_dbnode WHERE id = ?',
                                      (row,)).fetchone()
    attributes, metadata = json.loads(attributes), json.loads(metadata)
    ((_, entry),) = metadata['o'].items()
    *folders, last = name.split('/')
    tree = {'o': {last: entry}}
    for folder in reversed(folders):
        tree = {'o': {folder: tree}}
    db.execute('UPDATE db_dbnode SET attributes = ?, repository_metadata = ? WHERE id = ?',
               (json.dumps({**attributes, 'filename': name}), json.dumps(tree), row))
