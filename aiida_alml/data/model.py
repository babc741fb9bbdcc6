"""``alml.model``: a trained interatomic potential file whose bytes are pinned by their SHA-256."""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from collections.abc import Iterator

from aiida import orm

from aiida_alml.engines.model_format import sha256_of_file, sha256_of_stream

__all__ = ('MlipModel', 'ModelIntegrityError', 'sha256_of_file')


class ModelIntegrityError(RuntimeError):
    """The stored model file no longer matches the SHA-256 recorded when the node was created."""


class MlipModel(orm.SinglefileData):
    """A trained MLIP file in aiida-alml's format (:mod:`aiida_alml.engines.model_format`): config + weights.

    Attributes: ``architecture`` (``'MACE'``), ``elements`` (sorted symbols), ``r_max`` (Å), ``dtype``
    (``float32``/``float64``), ``e0s`` ({symbol: eV}), ``seed`` and ``sha256``. All but ``seed`` are read from the file when the node is
    made, never taken from the caller. The file is read without unpickling objects (``weights_only=True``), so a
    pickled model or a payload posing as one is refused instead of run; the hash guards the stored bytes against
    change: :meth:`verified_path` and :meth:`load` check it first.
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
        """Raise :class:`ModelIntegrityError` unless the stored bytes still hash to ``sha256``."""
        with self.open(mode='rb') as handle:
            digest = sha256_of_stream(handle)
        if digest != self.sha256:
            raise ModelIntegrityError(
                f'model file of node {self.pk or "(unstored)"} has SHA-256 {digest} but {self.sha256} '
                'was recorded: refusing to use it (it is not the file that was stored)'
            )

    @contextlib.contextmanager
    def verified_path(self) -> Iterator[pathlib.Path]:
        """Copy the file to a temporary path, check its hash there (what is checked is what is used), yield it."""
        with tempfile.TemporaryDirectory() as folder:
            path = pathlib.Path(folder) / (self.filename or 'model')
            with self.open(mode='rb') as source, open(path, 'wb') as target:
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
