"""Parser of ``alml.mace.train``: the model, final metrics and the per-epoch training curve."""

from __future__ import annotations

import itertools
import json
import math
import pathlib
import re
import tempfile

import numpy as np
from aiida import orm
from aiida.engine import ExitCode

from aiida_alml.calculations.mace_train import MODEL_FILE, MODEL_NAME, STDOUT_FILE
from aiida_alml.data import MlipModel
from aiida_alml.engines.model_format import ModelFormatError
from aiida_alml.engines.disk import disk_full_line
from aiida_alml.engines.train import REFUSED
from aiida_alml.parsers.interruption import SCHEDULER_STDERR, InterruptionAwareParser

__all__ = ('MaceTrainParser', 'alml_train_refusal', 'parse_error_tables', 'parse_results_lines')

#: Arrays of the training curve, from MACE's per-epoch evaluation of the validation set (eV, eV/Å).
CURVE_KEYS = ('loss', 'rmse_e_per_atom', 'mae_e_per_atom', 'rmse_f', 'mae_f')
# Column headers of MACE's error tables → our metric names and the factor to eV or eV/Å.
_COLUMNS = {
    'RMSE E / meV / atom': ('rmse_e_per_atom', 1e-3),
    'MAE E / meV / atom': ('mae_e_per_atom', 1e-3),
    'RMSE E / meV': ('rmse_e', 1e-3),
    'MAE E / meV': ('mae_e', 1e-3),
    'RMSE F / meV / A': ('rmse_f', 1e-3),
    'MAE F / meV / A': ('mae_f', 1e-3),
    'relative F RMSE %': ('rel_rmse_f_percent', 1.0),
    'relative F MAE %': ('rel_mae_f_percent', 1.0),
    'RMSE Stress (Virials) / meV / A (A^3)': ('rmse_stress', 1e-3),
    'RMSE Stress / meV / A^3': ('rmse_stress', 1e-3),
    'MAE Stress / meV / A^3': ('mae_stress', 1e-3),
}
# The scheduler's "out of walltime" exit status that AiiDA sets before the parser runs (CalcJob exit code 120).
_SCHEDULER_OUT_OF_WALLTIME = 120


def parse_results_lines(text: str) -> list[dict]:
    """The JSON records of MACE's ``results/*_train.txt`` (one per line; NaN is written as ``NaN``)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def alml_train_refusal(output: str) -> str | None:
    """What alml-train refused before training (its message and the indented lines under it), or None."""
    lines = output.splitlines()
    for index, line in enumerate(lines):
        if line.startswith(REFUSED):
            details = itertools.takewhile(lambda text: text.startswith('  '), lines[index + 1:])
            return '\n'.join([line.removeprefix(REFUSED).strip(), *details])
    return None


def parse_error_tables(log: str) -> dict[str, dict[str, float]]:
    """Final error tables of the log as ``{'train': {...}, 'valid': {...}, 'test': {...}}`` in eV / eV/Å."""
    metrics: dict[str, dict[str, float]] = {}
    header: list[str] | None = None
    for line in log.splitlines():
        if not line.startswith('|'):
            header = None if not line.startswith('+') else header
            continue
        cells = [cell.strip() for cell in line.strip().strip('|').split('|')]
        if cells[0] == 'config_type':
            header = cells
            continue
        if header is None or len(cells) != len(header):
            continue
        # Rows are named <set>_<head> (train_Default, valid_Default) or after the test file stem.
        name = cells[0].split('_')[0] if cells[0].split('_')[0] in ('train', 'valid', 'test') else cells[0]
        row = metrics.setdefault(name, {})
        for column, value in zip(header[1:], cells[1:]):
            if column in _COLUMNS:
                key, factor = _COLUMNS[column]
                try:
                    row[key] = float(value) * factor
                except ValueError:
                    continue  # an empty or non-numeric cell is no metric
    return metrics


class MaceTrainParser(InterruptionAwareParser):
    """Store the model as an :class:`MlipModel`, the final metrics and the validation curve per epoch."""

    def parse_job(self, **kwargs):
        retrieved = self.retrieved
        names = retrieved.base.repository.list_object_names()
        seed = self.node.inputs.seed.value
        log_name = f'logs/{MODEL_NAME}_run-{seed}.log'
        results_name = f'results/{MODEL_NAME}_run-{seed}_train.txt'
        walltime = self.node.exit_status == _SCHEDULER_OUT_OF_WALLTIME or self._stdout_says_walltime(names)

        records = []
        if 'results' in names and results_name in _list(retrieved, 'results'):
            records = parse_results_lines(retrieved.base.repository.get_object_content(results_name, mode='r'))
        evals = [record for record in records if record.get('mode') == 'eval']
        last_epoch = max((r['epoch'] for r in records if r.get('epoch') is not None), default=None)
        if walltime:
            return self.exit_codes.ERROR_OUT_OF_WALLTIME.format(epoch=last_epoch)
        # mace_run_train is not ours: a full disk shows as an OS error or torch.save's short write in its output.
        stdout = retrieved.base.repository.get_object_content(STDOUT_FILE, mode='r') if STDOUT_FILE in names else ''
        if MODEL_FILE not in names and (line := disk_full_line(stdout)):
            return self.exit_codes.ERROR_DISK_FULL.format(details=line)
        if MODEL_FILE not in names and (refusal := alml_train_refusal(stdout)):
            return self.exit_codes.ERROR_REFUSED_BY_ALML_TRAIN.format(details=refusal)
        if 'logs' not in names or log_name not in _list(retrieved, 'logs'):
            return self.exit_codes.ERROR_MISSING_OUTPUT
        log = retrieved.base.repository.get_object_content(log_name, mode='r')

        nan = [r for r in records if not math.isfinite(float(r.get('loss', 0.0)))]
        if nan:
            epoch = nan[0].get('epoch')
            return self.exit_codes.ERROR_NAN_LOSS.format(epoch='initial' if epoch is None else epoch)
        if evals:
            self.out('training_curve', self._curve(evals))

        if MODEL_FILE not in names:
            if 'alml-train: wrote' not in stdout and 'Saving model to' in log:
                return self.exit_codes.ERROR_NO_MODEL.format(
                    details=f'the code {self.node.inputs.code.full_label} ran mace_run_train directly: it must run '
                            'alml-train, which writes the model as config + weights instead of a pickle')
            tail = '\n'.join((stdout or log).splitlines()[-5:])
            return self.exit_codes.ERROR_NO_MODEL.format(details=f'last lines of the output:\n{tail}')
        try:
            model = self._model(MODEL_FILE)
        except ModelFormatError as exception:
            return self.exit_codes.ERROR_NO_MODEL.format(details=str(exception))
        self.out('model', model)
        metrics = self._metrics(log, evals)
        # The E0s the weights hold (MACE's log names the ones it was given, which a warm start used to ignore).
        metrics['e0s'] = model.e0s
        self.out('metrics', orm.Dict(metrics))
        return ExitCode(0)

    # ------------------------------------------------------------------ pieces
    def _stdout_says_walltime(self, names) -> bool:
        # SLURM writes this line into the job's stderr when it kills a job at its time limit; AiiDA's SLURM plugin
        # also reports it as exit status 120, but other schedulers (and a lost accounting record) do not.
        for name in (STDOUT_FILE, SCHEDULER_STDERR):
            if name in names and 'DUE TO TIME LIMIT' in self.retrieved.base.repository.get_object_content(name, mode='r'):
                return True
        return False

    def _curve(self, evals: list[dict]) -> orm.ArrayData:
        curve = orm.ArrayData()
        # Epoch -1 is MACE's "Initial" evaluation, before the first update: it shows where a warm start begins.
        curve.set_array('epoch', np.array([-1 if r['epoch'] is None else r['epoch'] for r in evals], dtype=np.int64))
        for key in CURVE_KEYS:
            curve.set_array(key, np.array([r.get(key, np.nan) for r in evals], dtype=np.float64))
        return curve

    def _model(self, model_name: str) -> MlipModel:
        # Elements, cutoff and dtype are read from the file itself (MlipModel does that), not from the log.
        with tempfile.TemporaryDirectory() as folder:
            path = pathlib.Path(folder) / model_name
            with self.retrieved.base.repository.open(model_name, mode='rb') as source:
                path.write_bytes(source.read())
            return MlipModel(file=path, seed=self.node.inputs.seed.value)

    def _metrics(self, log: str, evals: list[dict]) -> dict:
        metrics: dict = parse_error_tables(log)
        # The log names the epoch whose checkpoint became the model (the best on the validation set); with stage two
        # (higher energy weight at the end) it names stage one's, then stage two's, which is the model.
        loaded = re.findall(r'Loaded Stage (\w+) model from epoch (\d+)', log)
        best = loaded[-1][1] if loaded else None
        metrics['stage_two'] = bool(loaded) and loaded[-1][0] == 'two'
        if best is not None:
            metrics['best_epoch'] = int(best)
            chosen = [r for r in evals if r.get('epoch') == int(best)]
            if chosen:
                # Per-epoch evaluation has RMSE and MAE on the validation set, whatever error_table says.
                valid = metrics.setdefault('valid', {})
                for key in ('rmse_e_per_atom', 'mae_e_per_atom', 'rmse_f', 'mae_f'):
                    valid.setdefault(key, float(chosen[-1][key]))
        metrics['epochs'] = sum(1 for r in evals if r.get('epoch') is not None)
        metrics['units'] = {'energy': 'eV/atom', 'forces': 'eV/Å'}
        return metrics


def _list(retrieved, folder: str) -> list[str]:
    return [f'{folder}/{name}' for name in retrieved.base.repository.list_object_names(folder)]
