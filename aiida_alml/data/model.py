"""``alml.model``: a trained interatomic potential file whose bytes are pinned by their SHA-256."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import tempfile
from collections.abc import Iterator

from aiida import orm

__all__ = ('MlipModel', 'ModelIntegrityError', 'sha256_of_file')


class ModelIntegrityError(RuntimeError):
    """The stored model file no longer matches the SHA-256 recorded when the node was created."""


def sha256_of_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


class MlipModel(orm.SinglefileData):
    """A trained MLIP file (e.g. a MACE ``.model``) with what is needed to use it safely.

    Attributes: ``architecture`` (e.g. ``'MACE'``), ``elements`` (sorted symbols), ``r_max`` (Å), ``dtype``
    (``float32``/``float64``), ``seed`` and ``sha256``. Model files are pickles, so loading one runs code:
    :meth:`verified_path` and :meth:`load` check the bytes against ``sha256`` first and refuse on mismatch.
    """

    def __init__(
        self,
        file: str | os.PathLike,
        architecture: str,
        elements: list[str],
        r_max: float,
        dtype: str,
        seed: int | None = None,
        **kwargs,
    ):
        if dtype not in ('float32', 'float64'):
            raise ValueError(f'dtype must be float32 or float64, got {dtype!r}')
        if not elements:
            raise ValueError('elements must name at least one element the model was trained on')
        if not float(r_max) > 0:
            raise ValueError(f'r_max must be positive, got {r_max!r}')
        super().__init__(file=file, **kwargs)
        self.base.attributes.set_many(
            {
                'architecture': architecture,
                'elements': sorted(elements),
                'r_max': float(r_max),
                'dtype': dtype,
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
    def seed(self) -> int | None:
        return self.base.attributes.get('seed')

    @property
    def sha256(self) -> str:
        return self.base.attributes.get('sha256')

    def verify(self) -> None:
        """Raise :class:`ModelIntegrityError` unless the stored bytes still hash to ``sha256``."""
        digest = hashlib.sha256()
        with self.open(mode='rb') as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b''):
                digest.update(chunk)
        if digest.hexdigest() != self.sha256:
            raise ModelIntegrityError(
                f'model file of node {self.pk or "(unstored)"} has SHA-256 {digest.hexdigest()} but {self.sha256} '
                'was recorded: refusing to load it (a model file is a pickle and loading it runs code)'
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
                    f'{self.sha256}: refusing to load it (a model file is a pickle and loading it runs code)'
                )
            yield path

    def load(self, device: str = 'cpu'):
        """Load the torch model after checking its hash."""
        import torch

        with self.verified_path() as path:
            return torch.load(path, map_location=device, weights_only=False)
