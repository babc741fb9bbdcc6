"""``alml.stability``: is a committee's MD stable longer and hotter than it was explored? NVT and NVE runs, judged.

A low test error does not make MD stable: a potential can be accurate on every labelled frame and still let atoms
fall through each other in a region it never saw. This workflow runs the committee's own MD (``alml.md``) from each
structure in each ensemble (default NVT Langevin and NVE, both started at ``parameters.temperature``) without the
early σ stop, then :func:`assess_stability` records per run: blow-ups (close contacts, non-finite numbers), the
fraction of frames whose calibrated σ exceeds ``trust_hi`` (σ excursions) and, in NVE, the drift of the total
energy (eV/atom/ps). The report is the ``report`` output; the work chain exits 401 when any run is not stable.
"""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import ToContext, WorkChain, calcfunction

from aiida_alml.calculations.md import MdCalculation, check_md_grid
from aiida_alml.engines.md import MdParameterError, validate_parameters
from aiida_alml.selection.stability import STABILITY_DEFAULTS, assess_run
from aiida_alml.workflows.base import base_inputs, define_relaunch_input, job_failure
from aiida_alml.workflows.md_base import MdBaseWorkChain
from aiida_alml.workflows.submission import EndsInterruptedFunctions, submit_once

__all__ = ('StabilityWorkChain', 'assess_stability')

CRITERIA_KEYS = ('trust_hi', 'calibration', *STABILITY_DEFAULTS)


@calcfunction
def assess_stability(criteria: orm.Dict, overview: orm.Dict, **trajectories: orm.TrajectoryData) -> orm.Dict:
    """Per run the verdict of :func:`aiida_alml.selection.assess_run`; ``stable`` when every run is."""
    criteria = criteria.get_dict()
    thresholds = {key: criteria[key] for key in STABILITY_DEFAULTS if key in criteria}
    runs = {}
    for label, entry in sorted(overview.get_dict().items()):
        if 'summary' not in entry:
            runs[label] = {'stable': False, 'problems': [f'{label}: MD crashed ({entry["failure"]})']}
            continue
        trajectory = trajectories[label]
        arrays = {name: trajectory.get_array(name) for name in ('energy', 'temperature', 'max_force_sigma')}
        arrays['time'] = trajectory.get_times()
        runs[label] = assess_run(entry['summary'], arrays, criteria['trust_hi'], criteria.get('calibration', 1.0),
                                 thresholds)
    problems = [problem for run in runs.values() for problem in run['problems']]
    return orm.Dict({'stable': not problems, 'problems': problems, 'runs': runs,
                     'criteria': {**STABILITY_DEFAULTS, **criteria}})


def _validate_inputs(inputs, ctx):
    try:
        validate_parameters(inputs['parameters'].get_dict())
    except MdParameterError as error:
        return f'parameters: {error}'
    ensembles = inputs['ensembles'].get_list()
    if not ensembles or len(set(ensembles)) != len(ensembles):
        return f'ensembles: give distinct ensembles, got {ensembles}'
    for ensemble in ensembles:
        try:
            validate_parameters({**inputs['parameters'].get_dict(), 'ensemble': ensemble})
        except MdParameterError as error:
            return f'ensembles: {error}'
    criteria = inputs['criteria'].get_dict()
    unknown = sorted(set(criteria) - set(CRITERIA_KEYS))
    if unknown:
        return f'criteria: unknown keys {unknown}; known: {", ".join(CRITERIA_KEYS)}'
    if 'trust_hi' not in criteria:
        return 'criteria: trust_hi (eV/Å) is needed to count σ excursions'
    for key, value in criteria.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
            return f'criteria: {key} must be a non-negative number, got {value!r}'
    if 'structures' not in ctx:
        return None
    return check_md_grid(inputs)


class StabilityWorkChain(EndsInterruptedFunctions, WorkChain):
    """Validate a committee by MD from every structure in every ensemble; see the module docstring.

    Each run is an ``alml.md.base`` called ``<structure>_<ensemble>``, which runs the job again when the scheduler
    cancelled or lost it (at most ``max_relaunches`` times).
    """

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(MdCalculation, namespace='md', exclude=('structure', 'parameters'))
        spec.input_namespace('structures', valid_type=orm.StructureData, dynamic=True, help='Starting structures.')
        spec.input('parameters', valid_type=orm.Dict,
                   help='MD parameters of every run (temperature, steps, timestep, sample_interval, ...); the '
                        'ensemble is set per run and there is no early σ stop.')
        spec.input('ensembles', valid_type=orm.List, default=lambda: orm.List(['nvt_langevin', 'nve']),
                   help='One run per structure and ensemble.')
        spec.input('criteria', valid_type=orm.Dict,
                   help='trust_hi (eV/Å), calibration (σ factor), max_excursion_fraction, max_nve_drift (eV/atom/ps).')
        define_relaunch_input(spec)
        spec.inputs.validator = _validate_inputs
        spec.outline(cls.run_md, cls.inspect_md)
        spec.output('report', valid_type=orm.Dict, help='Verdict per run and overall (`stable`, `problems`).')
        spec.exit_code(401, 'ERROR_UNSTABLE', message='The committee\'s MD is not stable: {problems}')

    def _runs(self):
        for key in sorted(self.inputs.structures):
            for ensemble in self.inputs.ensembles.get_list():
                yield f'{key}_{ensemble}', key, ensemble

    def run_md(self):
        futures = {}
        base = {**self.inputs.parameters.get_dict(), 'stop_max_force_sigma': None}
        for label, key, ensemble in self._runs():
            inputs = self.exposed_inputs(MdCalculation, namespace='md')
            inputs.update(structure=self.inputs.structures[key], parameters=orm.Dict({**base, 'ensemble': ensemble}))
            futures[label] = submit_once(self, MdBaseWorkChain, **base_inputs(
                'md', inputs, self.inputs.max_relaunches, label))
        self.report(f'validation: {len(futures)} MD runs')
        return ToContext(**futures)

    def inspect_md(self):
        overview, trajectories = {}, {}
        for label, _, _ in self._runs():
            node = self.ctx[label]
            if node.is_finished_ok:
                overview[label] = {'summary': node.outputs.summary.get_dict()}
                trajectories[label] = node.outputs.trajectory
            else:  # crashed, or no frame kept (the start already had a close contact)
                failure = job_failure(node)
                overview[label] = {'failure': f'exit status {failure.exit_status}: {failure.exit_message}'}
        report = assess_stability(self.inputs.criteria, orm.Dict(overview), **trajectories,
                                  metadata={'call_link_label': 'assess'})
        self.out('report', report)
        verdict = report.get_dict()
        self.report('validation: stable' if verdict['stable'] else f'validation: {"; ".join(verdict["problems"])}')
        if not verdict['stable']:
            return self.exit_codes.ERROR_UNSTABLE.format(problems='; '.join(verdict['problems']))
        return None
