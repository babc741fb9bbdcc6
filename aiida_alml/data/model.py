"""``alml.model``: a trained interatomic potential file whose bytes are pinned by their SHA-256."""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
import unicodedata
from collections.abc import Iterator

from aiida import orm
from aiida.common.exceptions import ValidationError

from aiida_alml.engines.model_format import sha256_of_file, sha256_of_stream

__all__ = ('MAX_FILE_NAME_BYTES', 'MlipModel', 'ModelIntegrityError', 'file_name_problem', 'sha256_of_file')

#: Longest file name most file systems take (Linux ``NAME_MAX``), in UTF-8 bytes.
MAX_FILE_NAME_BYTES = 255


class ModelIntegrityError(RuntimeError):
    """The model node is not what aiida-alml stored: its bytes do not match the recorded SHA-256 or its name is bad.

    aiida-alml never stores a model under a name that is not a plain file name, but a node imported from an archive
    can carry any attributes.
    """


def file_name_problem(name) -> str | None:
    """What makes ``name`` unfit to be joined to a folder as one file of it, or None for a plain file name.

    The name is joined to a folder when the file is written out (:meth:`MlipModel.verified_path`, ``aiida-alml
    export``): a separator or ``..`` would climb out of it, a control character could end a line in a terminal or a
    script.
    """
    if not isinstance(name, str):
        return f'it is a {type(name).__name__}, not text'
    if not name:
        return 'it is empty'
    if name in ('.', '..'):
        return 'it names a folder'
    if '/' in name or '\\' in name:
        return 'it contains a path separator (/ or \\)'
    if any(unicodedata.category(char) in ('Cc', 'Cs') for char in name):
        return 'it contains a control character'
    if len(name.encode('utf-8')) > MAX_FILE_NAME_BYTES:
        return f'it is longer than {MAX_FILE_NAME_BYTES} bytes'
    return None


class MlipModel(orm.SinglefileData):
    """A trained MLIP file in aiida-alml's format (:mod:`aiida_alml.engines.model_format`): config + weights.

    Attributes: ``architecture`` (``'MACE'``), ``elements`` (sorted symbols), ``r_max`` (Å), ``dtype``
    (``float32``/``float64``), ``e0s`` ({symbol: eV}), ``seed`` and ``sha256``. All but ``seed`` are read from the file when the node is
    made, never taken from the caller. The file is read without unpickling objects (``weights_only=True``), so a
    pickled model or a payload posing as one is refused instead of run; the hash guards the stored bytes against
    change: :meth:`verified_path` and :meth:`load` check it first. The file name (``filename``) is a plain name,
    refused otherwise when the node is made or stored and again before the file is written anywhere under it.
    """

    def __init__(self, file: str | os.PathLike, seed: int | None = None, **kwargs):
        from aiida_alml.engines.model_format import read_header

        header = read_header(file)  # raises ModelFormatError for anything but our format
        super().__init__(file=file, **kwargs)
        self.base.attributes.set_many(
            {
                'architecture': 'MACE',
                'model_class': header['model_class'],
                'elements': header['elements'],
                'r_max': header['r_max'],
                'dtype': header['dtype'],
                'e0s': header['e0s'],
                'seed': seed,
                'sha256': sha256_of_file(file),
            }
        )

    def set_file(self, file, filename=None) -> None:
        """Put the file in the node; a name that is not a plain file name (:func:`file_name_problem`) is refused."""
        name = filename
        if name is None:  # AiiDA's default: the base name of the path, or of a file object's ``name``
            source = file if isinstance(file, (str, os.PathLike)) else getattr(file, 'name', None)
            name = os.path.basename(source) if isinstance(source, (str, os.PathLike)) else self.DEFAULT_FILENAME
        if isinstance(name, os.PathLike):
            name = os.fspath(name)
        if (problem := file_name_problem(name)):
            raise ValueError(f'MlipModel: file name {name!r} is not a plain file name ({problem}): a model is stored '
                             'as one file under a name of its own; give `filename` such a name')
        super().set_file(file, filename=filename)

    def _validate(self):
        super()._validate()  # sets ``filename`` to the name of the one file in the repository
        if (problem := file_name_problem(self.filename)):
            raise ValidationError(f'MlipModel: file name {self.filename!r} is not a plain file name ({problem})')

    def plain_filename(self) -> str:
        """The stored file name, checked to be a plain name before anything is written under it.

        Raises :class:`ModelIntegrityError` for any other: this package never stores one, but a node imported from
        an archive can carry any ``filename`` attribute (``../../.bashrc``).
        """
        name = self.filename
        if (problem := file_name_problem(name)):
            raise ModelIntegrityError(
                f'model node {self.pk or "(unstored)"} has the file name {name!r}, which is not a plain file name '
                f'({problem}): refusing to use it (aiida-alml never stores such a name; was the node imported from '
                'an archive?)'
            )
        return name

    @property
    def architecture(self) -> str:
        return self.base.attributes.get('architecture')

    @property
    def elements(self) -> list[str]:
        return self.base.attributes.get('elements')

    @property
    def r_max(self) -> float:
        return self.base.attributes.get('r_max')

    @property
    def dtype(self) -> str:
        return self.base.attributes.get('dtype')

    @property
    def e0s(self) -> dict[str, float]:
        """The isolated-atom energies the weights hold, {symbol: eV} (read from the file)."""
        return self.base.attributes.get('e0s')

    @property
    def seed(self) -> int | None:
        return self.base.attributes.get('seed')

    @property
    def sha256(self) -> str:
        return self.base.attributes.get('sha256')

    def verify(self) -> None:
        """Raise :class:`ModelIntegrityError` unless the file name is plain and the bytes still hash to ``sha256``.

        The launch-time checks of the calculations that take models call this, so a model imported with a bad name is
        refused before anything is submitted.
        """
        self.plain_filename()
        with self.open(mode='rb') as handle:
            digest = sha256_of_stream(handle)
        if digest != self.sha256:
            raise ModelIntegrityError(
                f'model file of node {self.pk or "(unstored)"} has SHA-256 {digest} but {self.sha256} '
                'was recorded: refusing to use it (it is not the file that was stored)'
            )

    @contextlib.contextmanager
    def verified_path(self) -> Iterator[pathlib.Path]:
        """Copy the file to a temporary path, check its hash there (what is checked is what is used), yield it.

        The path is the folder joined with :meth:`plain_filename`, so it never leaves the folder.
        """
        name = self.plain_filename()
        with tempfile.TemporaryDirectory() as folder:
            path = pathlib.Path(folder) / name
            with self.open(mode='rb') as source, open(path, 'xb') as target:
                for chunk in iter(lambda: source.read(1 << 20), b''):
                    target.write(chunk)
            if sha256_of_file(path) != self.sha256:
                raise ModelIntegrityError(
                    f'model file of node {self.pk or "(unstored)"} does not match its recorded SHA-256 '
                    f'{self.sha256}: refusing to use it (it is not the file that was stored)'
                )
            yield path

    def load(self, device: str = 'cpu'):
        """The torch model, rebuilt from the file's config and weights after checking its hash."""
        from aiida_alml.engines.model_format import load_model

        with self.verified_path() as path:
            return load_model(path, device=device)
