"""Parser of ``alml.score``: the committee's predictions on the frames as an ArrayData."""

from __future__ import annotations

import io

import numpy as np
from aiida import orm
from aiida.engine import ExitCode

from aiida_alml.engines.score import SCORES_FILE
from aiida_alml.parsers.interruption import InterruptionAwareParser
from aiida_alml.parsers.md import read_engine_output

__all__ = ('ScoreParser',)

ARRAYS = ('energy', 'energy_sigma_per_atom', 'forces', 'force_sigma', 'n_atoms')


class ScoreParser(InterruptionAwareParser):
    """``predictions``: the arrays of :mod:`aiida_alml.engines.score`, checked against the frames' sizes."""

    def parse_job(self, **kwargs):
        output, exit_code = read_engine_output(self)
        if exit_code is not None:
            return exit_code
        if SCORES_FILE not in self.retrieved.base.repository.list_object_names():
            tail = '\n'.join(output.strip().splitlines()[-3:])
            return self.exit_codes.ERROR_MISSING_OUTPUT.format(filename=SCORES_FILE, details=f'Output ends: {tail}')
        try:
            content = self.retrieved.base.repository.get_object_content(SCORES_FILE, mode='rb')
            with np.load(io.BytesIO(content), allow_pickle=False) as data:
                arrays = {key: np.asarray(data[key]) for key in ARRAYS}
        except (KeyError, ValueError, OSError) as error:
            return self.exit_codes.ERROR_READING_OUTPUT.format(error=error)

        frames = self.node.inputs.frames
        sizes = [int(n) for n in frames.configurations.n_atoms]
        total = sum(sizes)
        if arrays['n_atoms'].tolist() != sizes:
            return self.exit_codes.ERROR_WRONG_FRAMES.format(
                detail=f'{len(arrays["n_atoms"])} frames of sizes {arrays["n_atoms"].tolist()[:5]}..., expected '
                       f'{len(sizes)} of sizes {sizes[:5]}...')
        shapes = {'energy': (len(sizes),), 'energy_sigma_per_atom': (len(sizes),), 'forces': (total, 3),
                  'force_sigma': (total,)}
        for key, shape in shapes.items():
            if arrays[key].shape != shape or not np.isfinite(arrays[key]).all():
                return self.exit_codes.ERROR_WRONG_FRAMES.format(
                    detail=f'{key}: shape {arrays[key].shape} (expected {shape}) or non-finite values')
        predictions = orm.ArrayData()
        for key, value in arrays.items():
            predictions.set_array(key, value)
        self.out('predictions', predictions)
        return ExitCode(0)
