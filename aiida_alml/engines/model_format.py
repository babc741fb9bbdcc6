"""The model file format of aiida-alml: a MACE model as plain data (constructor config + weights), never a pickle.

MACE writes its models as pickled ``nn.Module`` objects; loading one runs whatever code the file names (a model from
an imported archive or another user could run anything). Our files instead hold

- ``format``: :data:`FORMAT`;
- ``config``: the constructor arguments of the model (JSON text; classes by name from an allow-list);
- ``state_dict``: the weights and buffers (tensors only);

and are read with ``torch.load(weights_only=True)``, whose unpickler builds nothing but tensors and plain containers.
The model is then rebuilt from its config with MACE's own classes and its weights loaded strictly. Elements, cutoff
and dtype are read from the file, not taken on trust.

Runs on the compute node (``alml-train`` writes the file after ``mace_run_train``, ``alml-md`` reads it) and in the
daemon (the parser reads the header). No AiiDA import.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any, BinaryIO

__all__ = (
    'FORMAT', 'ModelFormatError', 'load_model', 'read_header', 'save_model', 'set_atomic_energies', 'sha256_of_file',
    'sha256_of_stream', 'write_mace_pickle',
)

FORMAT = 'alml.mace.v1'

#: Classes a config may name: MACE's model and building blocks, looked up by name in these modules only.
_MODEL_CLASSES = ('ScaleShiftMACE',)
_BLOCK_MODULE = 'mace.modules.blocks'
_CLASS_KEYS = ('interaction_cls', 'interaction_cls_first', 'readout_cls')
#: Activation functions a config may name (``torch.nn.functional`` members).
_GATES = ('silu', 'tanh', 'abs', 'sigmoid', 'relu')
_IRREPS_KEYS = ('hidden_irreps', 'MLP_irreps', 'edge_irreps')
_ARRAY_KEYS = ('atomic_energies', 'atomic_inter_scale', 'atomic_inter_shift')


class ModelFormatError(ValueError):
    """The file is not a model in our format, or names something the format does not allow."""


def sha256_of_stream(handle: BinaryIO) -> str:
    """Hex SHA-256 digest of what is left to read in a binary file object, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(1 << 20), b''):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_of_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 digest of a file: the hash that pins a model file (``MlipModel.sha256``, checked by ``alml-md``)."""
    with open(path, 'rb') as handle:
        return sha256_of_stream(handle)


# ----------------------------------------------------------------------------------------------------------- write
def _plain_config(model) -> dict[str, Any]:
    """MACE's constructor config of ``model`` as JSON-able data."""
    import numpy as np
    import torch

    from aiida_alml.engines.mace_import import quiet_mace_import

    with quiet_mace_import():
        from mace.tools.scripts_utils import extract_config_mace_model

    name = type(model).__name__
    if name not in _MODEL_CLASSES:
        raise ModelFormatError(f'cannot write a {name}: the format holds {", ".join(_MODEL_CLASSES)} models')
    config = extract_config_mace_model(model)
    plain: dict[str, Any] = {}
    for key, value in config.items():
        if key in _CLASS_KEYS:
            plain[key] = value.__name__
        elif key == 'gate':
            plain[key] = None if value is None else value.__name__
        elif key in _IRREPS_KEYS:
            plain[key] = None if value is None else str(value)
        elif isinstance(value, (np.ndarray, torch.Tensor)):
            plain[key] = np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value).tolist()
        else:
            plain[key] = value
    if plain.get('cueq_config') is not None:
        raise ModelFormatError('cannot write a model converted for cuEquivariance: write the e3nn model')
    json.dumps(plain)  # raises TypeError if MACE added a key we do not know how to write
    return plain


def save_model(model, path: str | os.PathLike) -> None:
    """Write ``model`` (a MACE ``ScaleShiftMACE``) in our format."""
    import torch

    payload = {
        'format': FORMAT,
        'model_class': type(model).__name__,
        'config': json.dumps(_plain_config(model), sort_keys=True),
        'state_dict': {key: tensor.detach().cpu() for key, tensor in model.state_dict().items()},
    }
    torch.save(payload, path)


# ------------------------------------------------------------------------------------------------------------ read
def _read(path: str | os.PathLike, device: str = 'cpu') -> dict:
    import pickle

    import torch

    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exception:
        # Raised for any global the restricted unpickler does not allow, e.g. a pickled nn.Module or a payload.
        raise ModelFormatError(
            f'{path} is not an aiida-alml model file: it asks to rebuild Python objects that a model file may not '
            f'contain (a pickled model or a payload), so it was not loaded. ({str(exception).splitlines()[0]})'
        ) from exception
    except (RuntimeError, EOFError, OSError) as exception:
        raise ModelFormatError(f'{path} cannot be read as a model file: {exception}') from exception
    if not isinstance(payload, dict) or payload.get('format') != FORMAT:
        found = payload.get('format') if isinstance(payload, dict) else type(payload).__name__
        raise ModelFormatError(f'{path} is not an aiida-alml model file ({FORMAT}): found {found!r}')
    missing = {'model_class', 'config', 'state_dict'} - set(payload)
    if missing:
        raise ModelFormatError(f'{path}: model file lacks {sorted(missing)}')
    if payload['model_class'] not in _MODEL_CLASSES:
        raise ModelFormatError(f'{path}: model class {payload["model_class"]!r} is not one of {_MODEL_CLASSES}')
    try:
        payload['config'] = json.loads(payload['config'])
    except (TypeError, json.JSONDecodeError) as exception:
        raise ModelFormatError(f'{path}: the model config is not JSON ({exception})') from exception
    if not isinstance(payload['config'], dict):
        raise ModelFormatError(f'{path}: the model config is not a mapping')
    weights = payload['state_dict']
    if not isinstance(weights, dict) or not all(
            isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in weights.items()):
        raise ModelFormatError(f'{path}: the weights (state_dict) are not a mapping of names to tensors')
    return payload


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """What the file says about the model: ``elements``, ``r_max``, ``dtype``, ``model_class``, ``config`` and ``e0s``
    ({symbol: eV}, the isolated-atom energies its weights hold, first head: what the model really adds per atom)."""
    from ase.data import chemical_symbols

    payload = _read(path)
    config = payload['config']
    try:
        numbers = [int(z) for z in config['atomic_numbers']]
        r_max = float(config['r_max'])
    except (KeyError, TypeError, ValueError, OverflowError) as exception:
        raise ModelFormatError(f'{path}: the model config has no valid atomic_numbers and r_max ({exception})')
    # A negative number would index chemical_symbols from the end (-1 is Og) instead of failing.
    if not numbers or any(not 0 < z < len(chemical_symbols) for z in numbers) or len(set(numbers)) != len(numbers):
        raise ModelFormatError(f'{path}: atomic_numbers {numbers} are not distinct elements (1 to '
                               f'{len(chemical_symbols) - 1})')
    if not math.isfinite(r_max) or r_max <= 0:
        raise ModelFormatError(f'{path}: r_max {r_max} is not a positive cutoff')
    elements = sorted(chemical_symbols[z] for z in numbers)
    weights = payload['state_dict'].get('atomic_energies_fn.atomic_energies')
    if weights is None:
        raise ModelFormatError(f'{path}: the weights lack atomic_energies_fn.atomic_energies')
    if weights.numel() % len(numbers):
        raise ModelFormatError(f'{path}: {weights.numel()} atomic energies for {len(numbers)} elements')
    first_head = weights.reshape(-1, len(numbers))[0].tolist()
    e0s = {chemical_symbols[z]: float(energy) for z, energy in zip(numbers, first_head)}
    return {'model_class': payload['model_class'], 'elements': elements, 'atomic_numbers': numbers,
            'r_max': r_max, 'dtype': str(weights.dtype).removeprefix('torch.'), 'config': config, 'e0s': e0s}


def _constructor_arguments(config: dict, path) -> dict[str, Any]:
    import importlib

    import numpy as np
    import torch

    from aiida_alml.engines.mace_import import quiet_mace_import

    with quiet_mace_import():
        from e3nn import o3

    blocks = importlib.import_module(_BLOCK_MODULE)
    arguments = dict(config)
    for key in _CLASS_KEYS:
        name = config.get(key)
        cls = getattr(blocks, name, None) if isinstance(name, str) else None
        # Only classes defined in mace.modules.blocks: a name cannot reach anything else.
        if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module) and cls.__module__ == _BLOCK_MODULE):
            raise ModelFormatError(f'{path}: `{key}` {name!r} is not a building block of {_BLOCK_MODULE}')
        arguments[key] = cls
    gate = config.get('gate')
    if gate is not None and gate not in _GATES:
        raise ModelFormatError(f'{path}: `gate` {gate!r} is not one of {_GATES}')
    arguments['gate'] = None if gate is None else getattr(torch.nn.functional, gate)
    for key in _IRREPS_KEYS:
        if config.get(key) is not None:
            arguments[key] = o3.Irreps(config[key])
    for key in _ARRAY_KEYS:
        arguments[key] = np.asarray(config[key], dtype=np.float64)
    arguments['atomic_numbers'] = [int(z) for z in config['atomic_numbers']]
    if config.get('cueq_config') is not None or config.get('embedding_specs') is not None:
        raise ModelFormatError(f'{path}: cueq_config and embedding_specs are not supported')
    return arguments


def load_model(path: str | os.PathLike, device: str = 'cpu'):
    """Rebuild the model from its config with MACE's classes and load its weights (strictly)."""
    import torch

    from aiida_alml.engines.mace_import import quiet_mace_build, quiet_mace_import

    with quiet_mace_import():  # without the notices MACE and e3nn print on import
        from mace import modules

    payload = _read(path, device='cpu')
    arguments = _constructor_arguments(payload['config'], path)
    with quiet_mace_build():
        model = getattr(modules, payload['model_class'])(**arguments)
    dtype = payload['state_dict']['atomic_energies_fn.atomic_energies'].dtype
    model = model.to(dtype=dtype)
    try:
        model.load_state_dict(payload['state_dict'], strict=True)
    except RuntimeError as exception:
        raise ModelFormatError(f'{path}: the weights do not fit the model config ({exception})') from exception
    return model.to(device)


def write_mace_pickle(path: str | os.PathLike, handle: BinaryIO) -> None:
    """Write the model of our file ``path`` to ``handle`` as MACE's own model file: the pickled ``nn.Module`` that
    ``mace_run_train`` writes and ``MACECalculator(model_paths=...)``, ``mace_run_train --foundation_model`` and
    ``mace_create_lammps_model`` read.

    Only for tools that read nothing else: the result is a pickle, and loading a pickle runs the code it names. The
    model is rebuilt from ``path`` by :func:`load_model` (no pickle read), so nothing but MACE's classes and the
    weights go into it.
    """
    import torch

    model = load_model(path, device='cpu')
    model.eval()
    torch.save(model, handle)


def set_atomic_energies(model, atomic_energies: dict[int, float]) -> None:
    """Set the E0s of ``model`` (every head) for the elements in ``atomic_energies`` ({Z: eV}); others stay.

    A warm start needs it: MACE copies every buffer of the foundation model into the new one, E0s included, so the
    E0s given to ``mace_run_train --E0s`` are logged ("Atomic Energies used") but never used."""
    import torch

    numbers = [int(z) for z in model.atomic_numbers]
    unknown = sorted(set(atomic_energies) - set(numbers))
    if unknown:
        raise ModelFormatError(f'E0s for elements {unknown} that the model does not have (it has {numbers})')
    buffer = model.atomic_energies_fn.atomic_energies
    with torch.no_grad():
        for z, energy in atomic_energies.items():
            buffer[..., numbers.index(int(z))] = float(energy)
