"""``alml-train``: ``mace_run_train`` followed by writing the model in aiida-alml's format (no pickle leaves the job).

Takes exactly ``mace_run_train``'s command line. Before training, a ``--foundation_model`` in our format is rebuilt
into the pickle MACE expects (inside this job, from plain data), carrying the E0s of ``--E0s`` (MACE would otherwise
keep the foundation's: it copies every buffer of it); after training, ``<name>_stagetwo.model`` (with stage two) or
``<name>.model`` (MACE's pickle, written by this job) is converted to ``<name>.alml``
(:mod:`aiida_alml.engines.model_format`), the only model file the calculation retrieves. Runs on
the compute node; no AiiDA import.
"""

from __future__ import annotations

import sys
from pathlib import Path

EXIT_NO_MODEL = 3
EXIT_BAD_FOUNDATION = 4


def _option(argv: list[str], name: str, default: str | None = None) -> str | None:
    for index, token in enumerate(argv):
        if token == name and index + 1 < len(argv):
            return argv[index + 1]
        if token.startswith(name + '='):
            return token.split('=', 1)[1]
    return default


def _replace_option(argv: list[str], name: str, value: str) -> list[str]:
    out = list(argv)
    for index, token in enumerate(out):
        if token == name:
            out[index + 1] = value
        elif token.startswith(name + '='):
            out[index] = f'{name}={value}'
    return out


def _explicit_e0s(value: str | None) -> dict[int, float] | None:
    """The E0s of ``--E0s`` when it is a literal {Z: eV} (the calculation always passes one), else None."""
    import ast

    if value is None or not value.strip().startswith('{'):
        return None
    e0s = ast.literal_eval(value)
    return {int(z): float(energy) for z, energy in e0s.items()}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from aiida_alml.engines.model_format import ModelFormatError, read_header, save_model, to_mace_pickle

    foundation = _option(argv, '--foundation_model')
    if foundation is not None and Path(foundation).is_file():
        try:
            read_header(foundation)
        except ModelFormatError as exception:
            print(f'alml-train: --foundation_model {foundation}: {exception}', file=sys.stderr)
            return EXIT_BAD_FOUNDATION
        rebuilt = f'{Path(foundation).stem}.mace-pickle.model'
        try:
            to_mace_pickle(foundation, rebuilt, atomic_energies=_explicit_e0s(_option(argv, '--E0s')))
        except ModelFormatError as exception:
            print(f'alml-train: --foundation_model {foundation}: {exception}', file=sys.stderr)
            return EXIT_BAD_FOUNDATION
        argv = _replace_option(argv, '--foundation_model', rebuilt)

    import torch
    from mace import tools
    from mace.cli.run_train import run

    run(tools.build_default_arg_parser().parse_args(argv))

    name = _option(argv, '--name', 'MACE_model')
    model_dir = Path(_option(argv, '--model_dir') or _option(argv, '--work_dir', '.'))
    # With stage two (``--swa``: the energy weight raised for the last epochs) MACE writes both models; the stage-two
    # one is the trained result.
    pickled = model_dir / f'{name}_stagetwo.model'
    if not pickled.is_file():
        pickled = model_dir / f'{name}.model'
    if not pickled.is_file():
        print(f'alml-train: mace_run_train wrote no {pickled}', file=sys.stderr)
        return EXIT_NO_MODEL
    # This pickle was written a moment ago by this job's own training: loading it here is loading our own output.
    model = torch.load(pickled, map_location='cpu', weights_only=False)
    save_model(model, model_dir / f'{name}.alml')
    print(f'alml-train: wrote {model_dir / f"{name}.alml"} (model config + weights, no pickle)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
