"""Parser of ``alml.md``: the sampled frames as a TrajectoryData with the committee's uncertainty arrays."""

from __future__ import annotations

import io
import json

import numpy as np
from aiida import orm
from aiida.engine import ExitCode

from aiida_alml.calculations.md import STDOUT_FILE
from aiida_alml.engines.disk import disk_full_line
from aiida_alml.engines.md import SUMMARY_FILE, TRAJECTORY_FILE
from aiida_alml.parsers.interruption import InterruptionAwareParser

__all__ = ('MdParser', 'read_engine_output')

# Stored by set_trajectory itself; every other array of the engine is stored under its own name.
_TRAJECTORY_KEYS = {'step', 'time', 'positions', 'cell', 'numbers', 'pbc'}


def read_engine_output(parser) -> tuple[str, object]:
    """``alml-md``'s retrieved output (``''`` without one), and the exit code it already gives (a model file whose
    hash did not match, a full disk) or None. Shared by the parsers of ``alml.md`` and ``alml.score``."""
    if STDOUT_FILE not in parser.retrieved.base.repository.list_object_names():
        return '', None
    output = parser.retrieved.base.repository.get_object_content(STDOUT_FILE, mode='r')
    if 'ModelHashError' in output:
        return output, parser.exit_codes.ERROR_MODEL_HASH
    if (line := disk_full_line(output)):
        return output, parser.exit_codes.ERROR_DISK_FULL.format(details=line)
    return output, None


class MdParser(InterruptionAwareParser):
    """``trajectory``: positions, cells, steps, times (fs), pbc and per frame ``energy``, ``forces``,
    ``temperature``, ``target_temperature``, ``force_sigma`` (frames, atoms), ``max_force_sigma``,
    ``mean_force_sigma``, ``energy_sigma_per_atom``, ``stress_sigma`` (frames, 6) and, if asked, ``forces_comm``."""

    def parse_job(self, **kwargs):
        names = self.retrieved.base.repository.list_object_names()
        output, exit_code = read_engine_output(self)
        if exit_code is not None:
            return exit_code
        for filename in (SUMMARY_FILE, TRAJECTORY_FILE):
            if filename not in names:
                # The last lines of the engine's output usually name the exception.
                tail = '\n'.join(output.strip().splitlines()[-3:])
                return self.exit_codes.ERROR_MISSING_OUTPUT.format(filename=filename, details=f'Output ends: {tail}')
        try:
            summary = json.loads(self.retrieved.base.repository.get_object_content(SUMMARY_FILE, mode='r'))
            content = self.retrieved.base.repository.get_object_content(TRAJECTORY_FILE, mode='rb')
            with np.load(io.BytesIO(content), allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (ValueError, OSError) as error:
            return self.exit_codes.ERROR_READING_OUTPUT.format(error=error)

        if summary.get('frames', 1) == 0:
            # e.g. the starting structure already had a close contact: nothing to explore from.
            return self.exit_codes.ERROR_NO_FRAMES.format(reason=summary.get('stop_reason'))
        from ase.data import chemical_symbols

        trajectory = orm.TrajectoryData()
        trajectory.set_trajectory(
            symbols=[chemical_symbols[z] for z in arrays['numbers']],
            positions=arrays['positions'],
            stepids=arrays['step'].astype(np.int64),
            cells=arrays['cell'],
            times=arrays['time'],
            pbc=[bool(p) for p in arrays['pbc']],
        )
        for key, value in arrays.items():
            if key not in _TRAJECTORY_KEYS:
                trajectory.set_array(key, value)
        trajectory.base.attributes.set('units', {'time': 'fs', 'energy': 'eV', 'forces': 'eV/Å', 'stress': 'eV/Å^3'})
        self.out('trajectory', trajectory)
        self.out('summary', orm.Dict(summary))
        return ExitCode(0)
