"""``alml.explore``: committee MD on a grid of starting structures x conditions, all runs concurrent."""

from __future__ import annotations

import re

from aiida import orm
from aiida.engine import ToContext, WorkChain, calcfunction

from aiida_alml.calculations.md import MdCalculation, check_md_grid
from aiida_alml.engines.md import MdParameterError, validate_parameters
from aiida_alml.workflows.base import base_inputs, define_relaunch_input, job_failure, last_job
from aiida_alml.workflows.md_base import MdBaseWorkChain
from aiida_alml.workflows.protocols import ProtocolMixin
from aiida_alml.workflows.submission import EndsInterruptedFunctions, submit_once

__all__ = ('ExploreWorkChain', 'md_device_problem', 'requested_gpus', 'tabulate_md_runs')



@calcfunction
def tabulate_md_runs(runs: orm.Dict, **summaries: orm.Dict) -> orm.Dict:
    """The ``overview`` of an exploration: per run its structure, condition, MD parameters and pk, and either its
    stop reason, frames, steps done and largest force σ (from ``summaries.<run>``, the run's own summary) or, for a run
    that did not finish (no summary), its exit status and message as given in ``runs``."""
    overview = {}
    for label, entry in runs.get_dict().items():
        if label not in summaries:
            overview[label] = {**entry, 'failed': True}
            continue
        summary = summaries[label].get_dict()
        overview[label] = {
            **entry,
            'failed': False,
            'stop_reason': summary['stop_reason'],
            'stop_kind': summary.get('stop_kind'),
            'frames': summary['frames'],
            'steps_done': summary['steps_done'],
            'max_force_sigma': summary['max_force_sigma'],
        }
    return orm.Dict(overview)


def requested_gpus(options: dict) -> int | None:
    """How many GPUs an MD job's ``metadata.options`` give it: the entries of ``CUDA_VISIBLE_DEVICES`` in
    ``environment_variables`` if set, else the count of a GPU request in ``custom_scheduler_commands`` (what a campaign
    file's ``gpus: N`` becomes, ``#SBATCH --gres=gpu:N``, also ``--gres=gpu:TYPE:N``, ``--gpus[-per-node|-per-task]=N``
    and ``-G N``); 0 when they ask for none; None when they mention GPUs in a way not read here."""
    variables = options.get('environment_variables') or {}
    if 'CUDA_VISIBLE_DEVICES' in variables:
        return len([entry for entry in str(variables['CUDA_VISIBLE_DEVICES']).split(',')
                    if entry.strip() and not entry.strip().startswith('-')])
    commands = str(options.get('custom_scheduler_commands') or '')
    counts = [int(count) for count in re.findall(
        r'--gres[= ](?:\S*,)?gpu(?::[^:,\s]+)?:(\d+)|--gpus(?:-per-node|-per-task)?[= ](?:[^:\s]+:)?(\d+)|-G ?(\d+)',
        commands) for count in count if count]
    if counts:
        return max(counts)
    if re.search(r'--gres[= ](?:\S*,)?gpu\b', commands):
        return 1  # `--gres=gpu`: one GPU
    return None if re.search('gpu', commands, re.IGNORECASE) else 0


def md_device_problem(device: str, options: dict) -> str | None:
    """Why MD on ``device`` cannot run in a job with these ``metadata.options``, or None.

    ``cuda:N`` (``cuda`` is ``cuda:0``) needs the job to see at least N + 1 GPUs: a scheduler numbers the GPUs it grants
    a job from 0 (SLURM sets CUDA_VISIBLE_DEVICES), and a job that asks for none gets none, so the MD would fail on the
    compute node after it waited in the queue. The job must say so in its options (:func:`requested_gpus`).
    """
    if not isinstance(device, str) or not device.startswith('cuda'):
        return None
    needed = int(device.partition(':')[2] or 0) + 1
    granted = requested_gpus(options)
    if granted is None or granted >= needed:
        return None
    asked = 'ask for no GPU' if granted == 0 else f'ask for {granted} GPU{"s" if granted > 1 else ""} (cuda:0 to ' \
        f'cuda:{granted - 1})'
    return (f'device {device!r} needs each MD job to see at least {needed} GPU{"s" if needed > 1 else ""}, but the '
            f'job options (explore.md.metadata.options) {asked}: give `gpus: {needed}` there (it asks SLURM for '
            'them), or list the GPUs in environment_variables.CUDA_VISIBLE_DEVICES on a computer without a scheduler; '
            "or use device 'cpu'")


def _conditions(inputs) -> list[dict]:
    base = inputs['parameters'].get_dict() if 'parameters' in inputs else {}
    return [{**base, **condition} for condition in inputs['conditions'].get_list()]


def _validate_inputs(inputs, ctx):
    conditions = inputs['conditions'].get_list()
    if not conditions:
        return 'conditions: give at least one set of MD conditions'
    if not all(isinstance(condition, dict) for condition in conditions):
        return 'conditions: every entry must be a dict of MD parameters (ensemble, temperature, pressure, steps, ...)'
    options = inputs.get('md', {}).get('metadata', {}).get('options', {})
    for index, condition in enumerate(_conditions(inputs)):
        try:
            parameters = validate_parameters(condition)
        except MdParameterError as error:
            return f'conditions[{index}]: {error}'
        if (problem := md_device_problem(parameters['device'], options)):  # the bounds: in validate_parameters
            return f'conditions[{index}]: {problem}'
    if 'structures' not in ctx:
        return None  # exposed by a workflow that supplies structures and models itself, and checks them
    return check_md_grid(inputs)


class ExploreWorkChain(EndsInterruptedFunctions, ProtocolMixin, WorkChain):
    """Run ``alml.md`` for every structure in ``structures`` under every entry of ``conditions``.

    Each condition is a dict of MD parameters laid over ``parameters`` (e.g. ``{'ensemble': 'npt_berendsen',
    'temperature': 600, 'pressure': 1.0, 'steps': 2000}``). Run ``<structure>_c<i>`` gives
    ``trajectories.<structure>_c<i>`` and ``summaries.<structure>_c<i>``; ``overview`` lists them all (``pk``: the MD
    job that ran last). Each run is an ``alml.md.base`` called ``<structure>_c<i>``, which runs the job again when the
    scheduler cancelled or lost it (at most ``max_relaunches`` times).
    """

    _protocol_name = 'explore'

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(MdCalculation, namespace='md', exclude=('structure', 'parameters'))
        spec.input_namespace('structures', valid_type=orm.StructureData, dynamic=True, help='Starting structures.')
        spec.input('conditions', valid_type=orm.List,
                   help='List of MD parameter dicts, one per condition; at most 10^8 steps, 10^4 K, a 10 fs timestep, '
                        '10^7 bar and 10^5 frames (steps / sample_interval) per run; device cuda:N needs the jobs to '
                        'ask for N + 1 GPUs (md.metadata.options: gpus, or CUDA_VISIBLE_DEVICES).')
        spec.input('parameters', valid_type=orm.Dict, required=False, help='MD parameters shared by all conditions.')
        define_relaunch_input(spec)
        spec.inputs.validator = _validate_inputs
        spec.outline(
            cls.launch_runs,
            cls.gather,
        )
        spec.output_namespace('trajectories', valid_type=orm.TrajectoryData, dynamic=True)
        spec.output_namespace('summaries', valid_type=orm.Dict, dynamic=True)
        spec.output('overview', valid_type=orm.Dict, help='Per run: structure, condition, stop reason, max sigma.')
        spec.exit_code(420, 'ERROR_ALL_RUNS_FAILED', message='Not one MD run finished: {runs}')

    def _grid(self):
        conditions = _conditions(self.inputs)
        for key in sorted(self.inputs.structures):
            for index, condition in enumerate(conditions):
                yield f'{key}_c{index}', key, index, condition

    def launch_runs(self):
        futures = {}
        for label, key, _, condition in self._grid():
            inputs = self.exposed_inputs(MdCalculation, namespace='md')
            inputs.update(structure=self.inputs.structures[key], parameters=orm.Dict(condition))
            futures[label] = submit_once(self, MdBaseWorkChain, **base_inputs(
                'md', inputs, self.inputs.max_relaunches, label))
        self.report(f'launched {len(futures)} MD runs')
        return ToContext(**futures)

    def gather(self):
        runs, summaries, failed = {}, {}, []
        for label, key, index, condition in self._grid():
            node = self.ctx[label]
            job = last_job(node) or node
            runs[label] = {'structure': key, 'condition': index, 'parameters': condition, 'pk': job.pk}
            if not node.is_finished_ok:
                # A crashed run is kept in the overview: the loop counts its unsampled frames as failed exploration.
                failure = job_failure(node)
                failed.append(f'{label} <{failure.pk}> (exit status {failure.exit_status})')
                runs[label].update(exit_status=failure.exit_status, exit_message=failure.exit_message)
                continue
            summaries[label] = node.outputs.summary
            self.out(f'trajectories.{label}', node.outputs.trajectory)
            self.out(f'summaries.{label}', node.outputs.summary)
        if failed:
            self.report(f'failed MD runs: {", ".join(failed)}')
        overview = tabulate_md_runs(orm.Dict(runs), metadata={'call_link_label': 'overview'}, **summaries)
        self.out('overview', overview)
        if len(failed) == len(runs):
            return self.exit_codes.ERROR_ALL_RUNS_FAILED.format(runs=', '.join(failed))
        return None

    # ------------------------------------------------------------------ protocols
    @classmethod
    def get_builder_from_protocol(cls, code, structures, models, protocol=None, overrides=None, options=None):
        """A builder for committee MD with ``code`` (``alml.md``) from ``structures`` (a mapping of names to
        StructureData or ASE Atoms, a ConfigurationSet or a list) with ``models`` (MlipModels as a mapping or list, or
        a finished ``alml.committee``). ``options``: ``metadata.options`` of every MD job. See docs/python.md.
        """
        from aiida_alml.workflows.protocols import explore_builder

        return explore_builder(cls, code, structures, models, protocol=protocol, overrides=overrides, options=options)
